"""What happens around each epoch, as small Keras callbacks sharing one `TrainingState`.

Each epoch end: the history row, the best weights (by validation loss), the last checkpoint, early
stopping, and last of all the state file. Checkpoint files carry their epoch in their name and the
state names the ones it belongs to, so a kill at any instant leaves a state that names a complete
epoch and files that exist and match it; files the state no longer names are deleted after it is
written. Every file is written to a temp sibling and renamed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from braintumor.core import rundir
from braintumor.core.atomic import atomic_output, write_json
from braintumor.core.errors import UserError
from braintumor.core.logs import get_logger
from braintumor.core.run import STATE
from braintumor.models.build import computing_layers, unmixed
from braintumor.results.reports import write_csv

log = get_logger(__name__)

@dataclass
class TrainingState:
    """How far a run got: everything `--resume` needs besides the checkpoint files themselves."""

    epoch: int = 0  # epochs completed
    best_val_loss: float | None = None
    best_epoch: int | None = None
    wait: int = 0  # epochs since the best validation loss (early stopping)
    history: list[dict] = field(default_factory=list)  # one row per completed epoch, as in history.csv
    last_checkpoint: str | None = None  # checkpoint file: the whole model after `epoch`, optimizer included
    best_weights: str | None = None  # checkpoint file: the weights of `best_epoch`
    train_seconds: float = 0.0  # wall time of the completed epochs (validation included), over every session

    @classmethod
    def load(cls, path: Path) -> TrainingState:
        raw = rundir.read_json(path)
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(raw, dict) or set(raw) - names:
            raise UserError(f"{path} is not a training state of this version; start a new run")
        return cls(**raw)

    def save(self, path: Path) -> None:
        write_json(path, dataclasses.asdict(self))

    def stopped_early(self, patience: int) -> bool:
        return bool(patience) and self.wait >= patience


def write_history(path: Path, rows: list[dict]) -> None:
    """history.csv from the state's rows, replaced whole (so it always matches a complete epoch)."""
    columns = list(rows[0]) if rows else ["epoch"]
    with atomic_output(path) as tmp:
        write_csv(tmp, columns, ([row[c] for c in columns] for row in rows))


class EpochEndStep(keras.callbacks.Callback):
    """One job of the epoch end, on the shared state; skipped for an epoch that a signal cut short."""

    def __init__(self, state: TrainingState, stopper: StopOnSignal):
        super().__init__()
        self.state, self.stopper = state, stopper

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if not self.stopper.cut_short:
            self.epoch_end(epoch, logs or {})

    def epoch_end(self, epoch: int, logs: dict) -> None:
        raise NotImplementedError


class History(EpochEndStep):
    """The history row, and the epoch's wall time added to the state's training time."""

    def __init__(self, state: TrainingState, stopper: StopOnSignal, path: Path):
        super().__init__(state, stopper)
        self.path = path
        self.epoch_started = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_started = time.perf_counter()

    def epoch_end(self, epoch: int, logs: dict) -> None:
        row = {"epoch": epoch + 1, **{key: float(value) for key, value in sorted(logs.items())}}
        self.state.history = [*self.state.history[:epoch], row]
        self.state.train_seconds += time.perf_counter() - self.epoch_started
        write_history(self.path, self.state.history)


class CheckpointStep(EpochEndStep):
    """An epoch-end job that writes into the checkpoints folder."""

    def __init__(self, state: TrainingState, stopper: StopOnSignal, folder: Path):
        super().__init__(state, stopper)
        self.folder = folder


class BestWeights(CheckpointStep):
    """Keeps the weights of the epoch with the lowest validation loss (training loss without validation)."""

    def epoch_end(self, epoch: int, logs: dict) -> None:
        row = self.state.history[-1]
        val_loss = row.get("val_loss", row["loss"])
        if self.state.best_val_loss is None or val_loss < self.state.best_val_loss:
            name = f"best-epoch{epoch + 1}.weights.h5"
            save_atomically(self.folder / name, self.model.save_weights)
            self.state.best_val_loss, self.state.best_epoch, self.state.best_weights = val_loss, epoch + 1, name
            self.state.wait = 0
        else:
            self.state.wait += 1


class LastCheckpoint(CheckpointStep):
    """The whole model after each epoch, optimizer state included, for `--resume`."""

    def epoch_end(self, epoch: int, logs: dict) -> None:
        name = f"last-epoch{epoch + 1}.keras"
        save_atomically(self.folder / name, self.model.save)
        self.state.last_checkpoint = name


class EarlyStopping(EpochEndStep):
    """Stops when validation loss has not improved for `patience` epochs (its count lives in the state)."""

    def __init__(self, state: TrainingState, stopper: StopOnSignal, patience: int):
        super().__init__(state, stopper)
        self.patience = patience

    def epoch_end(self, epoch: int, logs: dict) -> None:
        if self.state.stopped_early(self.patience):
            log.info(f"early stopping: validation loss has not improved for {self.patience} epochs")
            self.model.stop_training = True


class SaveState(CheckpointStep):
    """Writes the state file, last of all epoch-end work, then deletes the checkpoint files it no longer names."""

    def epoch_end(self, epoch: int, logs: dict) -> None:
        self.state.epoch = epoch + 1
        self.state.save(self.folder / STATE)
        remove_unnamed_checkpoints(self.folder, self.state)


def remove_unnamed_checkpoints(folder: Path, state: TrainingState) -> None:
    """Delete files of `folder` that the state does not name: older epochs' and a killed writer's temp files."""
    keep = {STATE, state.last_checkpoint, state.best_weights}
    for path in folder.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)


def save_atomically(path: Path, save: Callable[[Path], object]) -> None:
    """`save(file)` (model.save, save_weights) into a temp sibling of `path`, then renamed to `path`.

    Keras chooses the format by the file name's suffix, so the temp name ends like `path`.
    """
    suffix = ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix
    with atomic_output(path) as tmp:
        keras_tmp = tmp.with_name(tmp.name + suffix)
        try:
            save(keras_tmp)
            keras_tmp.rename(tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer of `model`, nested models' included."""
    return [layer for layer in computing_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]


def shuffled_batches(images: np.ndarray, batch_size: int, seed: int, count: int) -> list[np.ndarray]:
    """Up to `count` of `images`, drawn in a seeded order, in batches of `batch_size`: batches mix the images (a
    folder sorted by class would otherwise give batches of one class, whose variances are too small)."""
    pick = np.random.default_rng(seed).permutation(len(images))[:count]
    return [images[np.sort(pick[start:start + batch_size])] for start in range(0, len(pick), batch_size)]


def recompute_batchnorm(model: keras.Model, layers: list[keras.layers.BatchNormalization],
                        batches: Iterable[np.ndarray]) -> int:
    """Set the moving mean and variance of each of `layers` to the average of its batch statistics over `batches`
    ("precise BN", Wu & Johnson 2021; AdaBN, Li et al. 2016, on another site's images); returns the batch count.

    Keras' BatchNormalization uses and records batch statistics only when called with training=True *and*
    trainable, so a frozen layer (a feature-extraction backbone's) is marked trainable while this runs; its
    trainability and every layer's momentum are restored after; MixStyle layers do not mix meanwhile. Nothing
    else of the model changes: no optimizer step runs, and gamma and beta are only read.
    """
    saved = [(layer.momentum, layer.trainable) for layer in layers]
    count = 0
    try:
        for layer in layers:
            layer.trainable = True
        with unmixed(model):  # the statistics of the features inference sees
            for count, batch in enumerate(batches, start=1):
                for layer in layers:  # a running mean of the batch statistics: batch k gets weight 1 / k
                    layer.momentum = (count - 1) / count
                model(batch.astype(np.float32), training=True)
    finally:
        for layer, (momentum, trainable) in zip(layers, saved, strict=True):
            layer.momentum, layer.trainable = momentum, trainable
    return count


class PreciseBatchNorm(keras.callbacks.Callback):
    """Before each validation, every learning BatchNorm layer's moving mean and variance become the average
    of its batch statistics over un-augmented training images (`recompute_batchnorm`).

    The moving averages otherwise mix statistics of weights from earlier steps (momentum 0.99: about the last
    100 batches) and of augmented images, which validation and Testing never see; with augmentation as strong
    as the from-scratch recipe's, validation accuracy then jumped between 0.45 and 0.92 from epoch to epoch
    (README). Training is unchanged: in training mode BatchNorm normalises with each batch's own statistics.
    Frozen BatchNorm layers keep their statistics (ImageNet's, in a fine-tuned backbone).
    """

    def __init__(self, images: np.ndarray, batch_size: int, seed: int, count: int = 512):
        super().__init__()
        self.batches = shuffled_batches(images, batch_size, seed, count)

    def on_test_begin(self, logs: dict | None = None) -> None:
        recompute_batchnorm(self.model, [layer for layer in batchnorm_layers(self.model) if layer.trainable],
                            self.batches)


class EpochSeeds(keras.callbacks.Callback):
    """Seeds the model's own random layers (dropout) from (seed, epoch) at each epoch start.

    Keras does not save these generators' state in a checkpoint; reseeding per epoch makes epoch k
    draw the same masks whether the run got there uninterrupted or by `--resume`.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = seed

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        generators = [value for layer in computing_layers(self.model) for value in vars(layer).values()
                      if isinstance(value, keras.random.SeedGenerator)]
        for index, generator in enumerate(generators):
            digest = hashlib.sha256(f"{self.seed}/{epoch}/{index}".encode()).digest()
            generator.state.assign([int.from_bytes(digest[:4], "little"), 0])


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM; the CLI exits with 128 + the signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class StopOnSignal(keras.callbacks.Callback):
    """SIGINT and SIGTERM stop training at the next batch end, never inside TensorFlow.

    Before `defer` (while data loads and no run directory exists) a signal interrupts at once, as
    usual; after it, a signal only sets a flag, seen at batch and epoch ends and by `check`, called
    between the steps after training. A second signal always interrupts at once.
    """

    def __init__(self, run_dir: Path | None = None):
        super().__init__()
        self.run_dir, self.deferring = run_dir, False
        self.signum: int | None = None
        self.cut_short = False  # stopped inside an epoch: its end is not recorded

    def defer(self, run_dir: Path) -> None:
        self.run_dir, self.deferring = run_dir, True

    def _handle(self, signum: int, frame: object) -> None:
        again = self.signum is not None
        self.signum = signum
        if again or not self.deferring:
            raise self._interrupted("interrupted")
        log.info(f"{signal.Signals(signum).name} received: stopping at the next batch end (again to abort at once)")

    def _interrupted(self, what: str) -> Interrupted:
        assert self.signum is not None
        reason = "KeyboardInterrupt (SIGINT)" if self.signum == signal.SIGINT else signal.Signals(self.signum).name
        resume = f"; continue with braintumor train --resume {self.run_dir}" if self.run_dir else ""
        return Interrupted(self.signum, f"{reason}: {what}{resume}")

    @contextmanager
    def installed(self) -> Iterator[StopOnSignal]:
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.signum is not None and not self.model.stop_training:
            self.cut_short = batch + 1 < self.params.get("steps", batch + 1)
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if self.signum is not None:
            self.model.stop_training = True

    def check(self, epoch: int) -> None:
        """Raise `Interrupted` if a signal came; called between the steps after training."""
        if self.signum is not None:
            raise self._interrupted(f"stopped after epoch {epoch}")
