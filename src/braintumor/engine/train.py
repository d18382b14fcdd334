"""Training: one config → one run directory (see README, "The run directory (contract)").

Everything that can fail on bad input (config, data, weights) runs before the run directory is
created. Each epoch end writes history.csv, the best weights, a resumable last checkpoint and, last
of all, the training state; `resume` continues from there after a crash or a kill at any instant.
One process trains a run at a time (the run's lock). SIGINT and SIGTERM stop at the next batch end
and leave a resumable run marked failed.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from braintumor.core import logs, rundir
from braintumor.core.atomic import atomic_output
from braintumor.core.config import Config, TrainConfig
from braintumor.core.errors import UserError, describe
from braintumor.core.run import Run
from braintumor.data import augment
from braintumor.data.dataset import Dataset, find_classes, load_dataset
from braintumor.engine import evaluate, optim, prefix_cache
from braintumor.engine.callbacks import (
    BestWeights,
    EarlyStopping,
    EpochSeeds,
    History,
    LastCheckpoint,
    PreciseBatchNorm,
    SaveState,
    StopOnSignal,
    TrainingState,
    remove_unnamed_checkpoints,
    save_atomically,
    write_history,
)
from braintumor.engine.runtime import distribution, environment, resolve_precision, resolve_xla, strategy_devices
from braintumor.models.build import build_model, inference_model
from braintumor.models.saved import load_saved

log = logs.get_logger(__name__)


def _class_weight(cfg: TrainConfig, labels: np.ndarray, num_classes: int) -> dict[int, float] | None:
    if cfg.class_weight == "none":
        return None
    counts = np.bincount(labels, minlength=num_classes)
    return {i: float(len(labels) / (num_classes * max(n, 1))) for i, n in enumerate(counts)}


def _training_arrays(cfg: Config, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    images, labels = data.train.images, data.train.labels
    aug = cfg.augmentation
    if aug.enabled and aug.mode == "offline":
        extra, extra_labels = augment.offline_copies(images, labels, data.train.files, aug, data.classes, cfg.seed)
        images, labels = np.concatenate([images, extra]), np.concatenate([labels, extra_labels])
        log.info(f"offline augmentation: {len(data.train.files)} → {len(images)} training images")
    return images, labels


@dataclass
class Prepared:
    """What a run needs, built before any output is written (bad input fails here)."""

    data: Dataset
    images: np.ndarray  # training images, offline augmented copies included
    labels: np.ndarray
    model: keras.Model
    precision: str
    precision_reason: str


@contextlib.contextmanager
def _dtype_policy(name: str) -> Iterator[None]:
    """Layers built inside take the policy `name`; the process's own policy comes back after, so a run never changes
    how the next model built in the same process (a sweep's next run, a scorer) computes."""
    previous = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_dtype_policy(previous)


def _prepare(cfg: Config, checkpoint: Path | None = None) -> Prepared:
    keras.utils.set_random_seed(cfg.seed)
    precision, precision_reason = resolve_precision(cfg.train.precision)
    classes = find_classes(cfg.data)
    # the model first: a bad weights file fails in seconds, not after decoding the images
    with (distribution(cfg.train.distribution, cfg.train.devices).scope(),  # variables live on every replica
          _dtype_policy(precision)):
        model = (load_saved(checkpoint, "checkpoint", "it is damaged or unsafe: start a new run with braintumor "
                            "train CONFIG") if checkpoint
                 else build_model(cfg.model, cfg.data.image_size, len(classes), cfg.data.channels))
    if cfg.model.weights == "none" and cfg.model.backbone != "simple_cnn" and cfg.model.mode != "full":
        log.warning(f"model.weights is none: the {cfg.model.backbone} backbone keeps random, frozen weights, so "
                    f"expect accuracy near chance ({100 / len(classes):.0f} %); use weights: imagenet to learn")
    data = load_dataset(cfg, classes)
    images, labels = _training_arrays(cfg, data)
    return Prepared(data, images, labels, model, precision, precision_reason)


def run(cfg: Config, folder: Path | None = None) -> Path:
    """Train one experiment into a new run folder, <output.dir>/<name>-<time> or the exact `folder` a sweep
    planned; returns its path."""
    parent = folder.parent if folder else Path(cfg.output.dir).expanduser()
    rundir.ensure_writable(parent)
    stopper = StopOnSignal()
    with stopper.installed(), logs.collect() as earlier:
        prepared = _prepare(cfg)
        run = Run.planned(folder) if folder else Run.new(parent, cfg.name)
        with contextlib.ExitStack() as held:
            try:  # the run folder appears whole (status, config, data, lock held) or stays empty
                with atomic_output(run.path, folder=True) as staging:
                    staged = Run(staging)
                    held.enter_context(staged.lock())
                    staged.checkpoints.mkdir()
                    staged.reserve_space()
                    staged.save_config(cfg)
                    staged.write_data(prepared.data.summary())
                    staged.write_split(prepared.data.split_csv)
                    staged.set_status("running")
            except BaseException as err:
                run.path.rmdir()
                if isinstance(err, OSError):
                    raise UserError(f"cannot write the run directory {run.path} ({describe(err)}); "
                                    "free space or choose another output.dir") from err
                raise
            with logs.log_to_file(run.log, earlier), _failure_marked(run):
                stopper.defer(run.path)
                return _fit_and_report(cfg, run, prepared, TrainingState(), stopper)


def resume(run_dir: Path) -> Path:
    """Continue an interrupted run from its last complete epoch and finish it."""
    run = Run.existing(run_dir, "train --resume")
    _refuse_completed(run)  # before taking the lock: a completed run's folder gets no lock file
    stopper = StopOnSignal(run.path)
    with stopper.installed(), run.lock(), logs.log_to_file(run.log):
        _refuse_completed(run, locked=True)
        with _failure_marked(run):
            run.remove_partials()
            run.reserve_space()
            cfg = run.read_config()
            if not run.checkpoints.is_dir() and run.metrics.is_file():
                log.info(f"resuming {run.path}: training and reports were complete; finishing the bookkeeping")
                run.complete()
                return run.path
            run.checkpoints.mkdir(exist_ok=True)
            restore = None
            if run.training_state.is_file():
                state = TrainingState.load(run.training_state)
                remove_unnamed_checkpoints(run.checkpoints, state)
                last = run.checkpoints / str(state.last_checkpoint)
                if prefix_cache.applies(cfg):  # the checkpoint holds the part after the cached prefix
                    prepared, restore = _prepare(cfg), last
                else:
                    prepared = _prepare(cfg, checkpoint=last)
                log.info(f"resuming {run.path} after epoch {state.epoch} of {cfg.train.epochs}")
            else:  # killed before the first epoch ended: start over in the same folder
                run.training_state.unlink(missing_ok=True)  # first: the checkpoint files below then belong to no state
                state = TrainingState()
                remove_unnamed_checkpoints(run.checkpoints, state)
                prepared = _prepare(cfg)
                log.info(f"resuming {run.path} from the start (no epoch had finished)")
            if prepared.data.summary()["validation_files"] != run.validation_files():
                raise UserError(f"the data under {cfg.data.root} changed since {run.path} started; "
                                "resume needs the same files, or start a new run")
            write_history(run.history, state.history)
            run.set_status("running")
            stopper.defer(run.path)
            return _fit_and_report(cfg, run, prepared, state, stopper, restore)


def _refuse_completed(run: Run, locked: bool = False) -> None:
    if run.state() == "completed":
        if locked:  # another process completed it while we waited for the lock
            run.release()
        raise UserError(f"{run.path} is already completed; start a new run with braintumor train CONFIG")


@contextlib.contextmanager
def _failure_marked(run: Run) -> Iterator[None]:
    """Any failure marks the run failed, with the reason; a full disk becomes one line naming the folder."""
    try:
        yield
    except BaseException as err:
        full = rundir.no_space(err)
        failure = err if full is None else UserError(
            f"cannot write in {run.path} ({describe(full)}); free space there, "
            f"then continue with braintumor train --resume {run.path}")
        try:
            run.set_status("failed", str(failure) if isinstance(failure, KeyboardInterrupt | UserError)
                              else f"{type(failure).__name__}: {failure}".strip())
        except OSError as status_err:
            log.error(f"could not mark {run.path} failed ({describe(status_err)})")
        if failure is err:
            raise
        raise failure from err


def _fit_and_report(cfg: Config, run: Run, prepared: Prepared, state: TrainingState,
                    stopper: StopOnSignal, restore: Path | None = None) -> Path:
    """`restore`: a last checkpoint of the part after a cached prefix to continue from (weights and optimizer)."""
    data, images, labels, model = prepared.data, prepared.images, prepared.labels, prepared.model
    # what fit trains and checkpoints: the whole model, or the part after a cached prefix (sharing its weights)
    where = prefix_cache.cut_model(cfg, model)
    fit_model = model if where.suffix is None else where.suffix
    xla, xla_reason = resolve_xla(fit_model, cfg.train.xla)
    strategy = distribution(cfg.train.distribution, cfg.train.devices)
    steps_per_epoch = math.ceil(len(labels) / cfg.train.batch_size)
    if not fit_model.compiled:  # a resumed model comes back compiled, with its optimizer state
        with strategy.scope():
            fit_model.compile(optimizer=optim.make_optimizer(cfg.train, steps_per_epoch), loss=optim.loss(cfg),
                              metrics=["accuracy"], jit_compile=xla)
    if restore:
        fit_model.optimizer.build(fit_model.trainable_variables)
        fit_model.load_weights(restore)
    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
    log.info(f"device: {device} | precision: {prepared.precision} ({prepared.precision_reason}) | XLA: "
             f"{'on' if xla else 'off'} ({xla_reason})")
    run.write_env(environment(
        seed=cfg.seed, device=device, precision=prepared.precision, precision_reason=prepared.precision_reason,
        xla=xla, xla_reason=xla_reason, distribution=cfg.train.distribution, devices=strategy_devices(strategy),
        prefix_cache=where.reason))
    log.info(f"run directory: {run.path}")
    patience = cfg.train.early_stopping_patience
    if state.epoch < cfg.train.epochs and not state.stopped_early(patience):
        targets = optim.targets(cfg, labels, len(data.classes))  # one-hot with label smoothing or mixup
        val_targets = optim.targets(cfg, data.val.labels, len(data.classes))
        inputs, val_inputs = prefix_cache.fit_inputs(cfg, where, images, targets, data.val.images, val_targets,
                                                     epochs=range(state.epoch, cfg.train.epochs))
        steps = [History(state, stopper, run.history), BestWeights(state, stopper, run.checkpoints),
                 LastCheckpoint(state, stopper, run.checkpoints), EarlyStopping(state, stopper, patience),
                 SaveState(state, stopper, run.checkpoints)]
        precise_bn = [PreciseBatchNorm(images, cfg.train.batch_size, cfg.seed)] if cfg.train.precise_bn else []
        tensorboard = ([keras.callbacks.TensorBoard(str(run.tensorboard), write_graph=False, profile_batch=0)]
                       if cfg.train.tensorboard else [])
        fit_model.fit(
            inputs, steps_per_epoch=steps_per_epoch, validation_data=val_inputs,
            batch_size=cfg.train.batch_size, epochs=cfg.train.epochs, initial_epoch=state.epoch,
            shuffle=False,  # the dataset shuffles, seeded per epoch
            class_weight=_class_weight(cfg.train, labels, len(data.classes)),
            callbacks=[EpochSeeds(cfg.seed), *optim.schedule_callbacks(cfg.train), *precise_bn, *steps, *tensorboard,
                       stopper],
            verbose=1)
    stopper.check(state.epoch)
    fit_model.load_weights(run.checkpoints / str(state.best_weights))
    save_atomically(run.model, inference_model(model).save)  # training-only layers left out
    stopper.check(state.epoch)
    _write_reports(run, cfg, data, state)
    stopper.check(state.epoch)
    run.complete()
    log.info(f"done: {run.path}")
    return run.path


def _write_reports(run: Run, cfg: Config, data: Dataset, state: TrainingState) -> None:
    """The Testing reports, built in a staging folder and renamed into the run folder, metrics.json last."""
    staging = run.reports_staging()
    evaluate.report_training_run(run, cfg, data, state.best_epoch, round(state.train_seconds, 3), out=staging)
    run.adopt_reports(staging)
    if cfg.train.tensorboard:
        _confusion_matrix_summary(run, state.best_epoch or 0)


def _confusion_matrix_summary(run: Run, step: int) -> None:
    png = tf.io.decode_png(run.confusion_matrix.read_bytes(), channels=3)
    writer = tf.summary.create_file_writer(str(run.tensorboard / "test"))
    with writer.as_default():
        tf.summary.image("confusion_matrix", png[tf.newaxis], step=step)
    writer.close()
