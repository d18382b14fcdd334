"""Training: one config → one run directory (see README, "Run directory").

Everything that can fail on bad input (config, data, weights) runs before the run directory is
created. Each epoch end appends to history.csv, saves the best weights and a resumable last
checkpoint; `resume` continues from there after a crash or a kill.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from braintumor.core import rundir
from braintumor.core.config import Config, TrainConfig, load_config, save_config
from braintumor.core.errors import UserError
from braintumor.data import augment
from braintumor.data.dataset import Dataset, find_classes, load_dataset
from braintumor.engine import evaluate, features, optim
from braintumor.engine.callbacks import CHECKPOINTS, EpochState, truncate_history
from braintumor.engine.runtime import environment, resolve_precision, resolve_xla
from braintumor.models.build import build_model


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
        print(f"offline augmentation: {len(data.train.files)} → {len(images)} training images")
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


def _prepare(cfg: Config, checkpoint: Path | None = None) -> Prepared:
    keras.utils.set_random_seed(cfg.seed)
    precision, precision_reason = resolve_precision(cfg.train.precision)
    keras.mixed_precision.set_dtype_policy(precision)
    classes = find_classes(cfg.data)
    # the model first: a bad weights file fails in seconds, not after decoding the images
    model = (keras.models.load_model(checkpoint) if checkpoint
             else build_model(cfg.model, cfg.data.image_size, len(classes), cfg.data.channels))
    data = load_dataset(cfg, classes)
    images, labels = _training_arrays(cfg, data)
    return Prepared(data, images, labels, model, precision, precision_reason)


def train_from_file(path: Path, overrides: list[str]) -> Path:
    return run(load_config(path, overrides))


def run(cfg: Config) -> Path:
    """Train one experiment into a new run directory; returns its path."""
    rundir.ensure_writable(Path(cfg.output.dir).expanduser())
    prepared = _prepare(cfg)
    run_dir = rundir.unique_dir(Path(cfg.output.dir).expanduser(), f"{cfg.name}-{rundir.timestamp()}")
    (run_dir / CHECKPOINTS).mkdir()
    rundir.set_status(run_dir, "running")
    save_config(cfg, run_dir / "config.yaml")
    rundir.write_json(run_dir / "data.json", prepared.data.summary())
    state = {"epoch": 0, "best_val_loss": None, "best_epoch": None, "wait": 0}
    return _fit_and_report(cfg, run_dir, prepared, state)


def resume(run_dir: Path) -> Path:
    """Continue an interrupted run from its last complete epoch and finish it."""
    status = rundir.read_json(run_dir / "status.json")
    if status.get("state") == "completed":
        raise UserError(f"{run_dir} is already completed; start a new run with braintumor train CONFIG")
    cfg = load_config(run_dir / "config.yaml")
    state_path = run_dir / CHECKPOINTS / "state.json"
    if state_path.is_file() and not features.applies(cfg):
        state = rundir.read_json(state_path)
        prepared = _prepare(cfg, checkpoint=run_dir / CHECKPOINTS / "last.keras")
        print(f"resuming {run_dir} after epoch {state['epoch']} of {cfg.train.epochs}")
    else:  # killed before the first epoch ended, or a head on cached features (seconds): start over in the same folder
        state = {"epoch": 0, "best_val_loss": None, "best_epoch": None, "wait": 0}
        prepared = _prepare(cfg)
        why = "only the head trains, on cached backbone outputs" if features.applies(cfg) else "no epoch had finished"
        print(f"resuming {run_dir} from the start ({why})")
    if prepared.data.summary()["validation_files"] != rundir.read_json(run_dir / "data.json")["validation_files"]:
        raise UserError(f"the data under {cfg.data.root} changed since {run_dir} started; "
                        "resume needs the same files, or start a new run")
    truncate_history(run_dir / "history.csv", state["epoch"])
    rundir.set_status(run_dir, "running")
    return _fit_and_report(cfg, run_dir, prepared, state)


def _fit_and_report(cfg: Config, run_dir: Path, prepared: Prepared, state: dict) -> Path:
    data, images, labels, model = prepared.data, prepared.images, prepared.labels, prepared.model
    precision, precision_reason = prepared.precision, prepared.precision_reason
    try:
        # what fit trains and checkpoints: the whole model, or its head alone (sharing its weights)
        fit_model = features.head_model(model) if features.applies(cfg) else model
        xla, xla_reason = resolve_xla(fit_model, cfg.train.xla)
        if not fit_model.compiled:  # a resumed model comes back compiled, with its optimizer state
            steps_per_epoch = -(-len(labels) // cfg.train.batch_size)
            fit_model.compile(optimizer=optim.make_optimizer(cfg.train, steps_per_epoch), loss=optim.loss(cfg.train),
                              metrics=["accuracy"], jit_compile=xla)
        device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"
        print(f"device: {device} | precision: {precision} ({precision_reason}) | XLA: "
              f"{'on' if xla else 'off'} ({xla_reason})")
        rundir.write_json(run_dir / "env.json", environment(
            seed=cfg.seed, device=device, precision=precision, precision_reason=precision_reason,
            xla=xla, xla_reason=xla_reason))
        print(f"run directory: {run_dir}")
        online = cfg.augmentation if cfg.augmentation.enabled and cfg.augmentation.mode == "online" else None
        if state["epoch"] < cfg.train.epochs and not _stopped_early(cfg, state):
            inputs, val_inputs = features.fit_inputs(cfg, model, images, data.val.images)
            fit_model.fit(
                augment.training_dataset(inputs, optim.targets(cfg.train, labels, len(data.classes)),
                                         cfg.train.batch_size, cfg.seed, online),
                validation_data=(val_inputs.astype(np.float32),
                                 optim.targets(cfg.train, data.val.labels, len(data.classes))),
                batch_size=cfg.train.batch_size, epochs=cfg.train.epochs, initial_epoch=state["epoch"],
                shuffle=False,  # the tf.data pipeline shuffles, seeded
                class_weight=_class_weight(cfg.train, labels, len(data.classes)),
                callbacks=[*optim.schedule_callbacks(cfg.train),
                           EpochState(run_dir, cfg.train.early_stopping_patience, state, resumable=fit_model is model)],
                verbose=1)
        fit_model.load_weights(run_dir / CHECKPOINTS / "best.weights.h5")
        model.save(run_dir / "model.keras")
        evaluate.report_training_run(run_dir, cfg, data, state["best_epoch"])
        shutil.rmtree(run_dir / CHECKPOINTS)
        rundir.set_status(run_dir, "completed")
    except BaseException as err:
        rundir.set_status(run_dir, "failed", f"{type(err).__name__}: {err}".strip())
        raise
    print(f"done: {run_dir}")
    return run_dir


def _stopped_early(cfg: Config, state: dict) -> bool:
    patience = cfg.train.early_stopping_patience
    return bool(patience) and state["wait"] >= patience
