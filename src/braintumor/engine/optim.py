"""The optimisation recipe: optimizer, learning-rate schedule with warm-up, weight decay, loss with
label smoothing. Everything is a built-in Keras object, so checkpoints and model.keras load anywhere.

- `cosine`: keras.optimizers.schedules.CosineDecay per step, its own linear warm-up, down to 0 at the
  last epoch.
- `constant` and `plateau` keep a plain learning rate (ReduceLROnPlateau needs one); their warm-up is a
  per-epoch linear ramp from a callback. `plateau` multiplies the rate by `plateau_factor` after
  `plateau_patience` epochs without a lower validation loss.
- Label smoothing and mixup need targets that are not one class: one-hot rows and the categorical loss.
"""

from __future__ import annotations

import keras
import numpy as np

from braintumor.core.config import Config, TrainConfig


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    rate = learning_rate(cfg, steps_per_epoch)
    decay = cfg.weight_decay or None  # decoupled (AdamW-style) in every Keras 3 optimizer
    if cfg.optimizer == "adam":
        return keras.optimizers.AdamW(rate, weight_decay=decay) if decay else keras.optimizers.Adam(rate)
    if cfg.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(rate, weight_decay=decay)
    return keras.optimizers.SGD(rate, momentum=0.9, weight_decay=decay)


def learning_rate(cfg: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    if cfg.schedule != "cosine":
        return cfg.learning_rate
    warmup_steps = cfg.warmup_epochs * steps_per_epoch
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else cfg.learning_rate,
        decay_steps=max(1, (cfg.epochs - cfg.warmup_epochs) * steps_per_epoch),
        warmup_target=cfg.learning_rate if warmup_steps else None, warmup_steps=warmup_steps)


def schedule_callbacks(cfg: TrainConfig) -> list[keras.callbacks.Callback]:
    callbacks: list[keras.callbacks.Callback] = []
    if cfg.warmup_epochs and cfg.schedule != "cosine":
        callbacks.append(keras.callbacks.LearningRateScheduler(
            lambda epoch, rate: cfg.learning_rate * (epoch + 1) / (cfg.warmup_epochs + 1)
            if epoch < cfg.warmup_epochs else (cfg.learning_rate if epoch == cfg.warmup_epochs else rate)))
    if cfg.schedule == "plateau":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=cfg.plateau_factor, patience=cfg.plateau_patience, min_lr=1e-7))
    return callbacks


def soft_targets(cfg: Config) -> bool:
    """Whether the loss compares with one-hot rows (label smoothing, and mixup, which blends them) rather than
    class indices (Keras' sparse loss has no smoothing and takes no blend)."""
    return bool(cfg.train.label_smoothing) or cfg.augmentation.mixup > 0


def loss(cfg: Config) -> str | keras.losses.Loss:
    if soft_targets(cfg):
        return keras.losses.CategoricalCrossentropy(label_smoothing=cfg.train.label_smoothing)
    return "sparse_categorical_crossentropy"


def targets(cfg: Config, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """What the loss compares with: one-hot rows where soft_targets, class indices otherwise."""
    if soft_targets(cfg):
        return np.eye(num_classes, dtype=np.float32)[labels]
    return labels
