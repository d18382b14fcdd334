"""Feature cache: a frozen backbone's outputs, computed once, so that fit trains only the head.

In feature-extraction mode without online augmentation, the frozen part of the model
(preprocess → backbone → pool) maps each training image to the same vector in every epoch, and a
naive fit recomputes all of them every epoch. Here the frozen part runs once over the training and
validation arrays, its outputs are cached on disk, and fit trains the head alone on them. The head
model shares its layers with the whole model, so the saved model.keras is still the whole model
(backbone + trained head), and evaluation and prediction do not change.

The cache key hashes, by value, everything the outputs depend on: the frozen part's weights (so
ImageNet weights, a weights file's content and the seeded random init of `weights: none` all
count), backbone, pooling and dtype policy, and the bytes of the image array in order (which
covers the file list and content, the image size, decoding and preprocessing, the validation
split, and offline augmentation's seed and parameters), plus the library versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from braintumor.core.config import Config, ModelConfig

FEATURES_VERSION = 1  # bump when the extraction changes, to invalidate caches
EXTRACT_BATCH = 64


def _skip_reason(cfg: Config) -> str | None:
    if cfg.model.mode != "feature-extraction":
        return f"{cfg.model.mode} mode trains the backbone"
    if cfg.augmentation.enabled and cfg.augmentation.mode == "online":
        return "online augmentation changes the images every epoch"
    if not cfg.train.feature_cache:
        return "train.feature_cache is false"
    return None


def applies(cfg: Config) -> bool:
    """Whether fit trains the head alone, on cached outputs of the frozen backbone."""
    return _skip_reason(cfg) is None


def head_model(model: keras.Model) -> keras.Model:
    """The whole model's head alone, taking pooled features; it shares the head's layers and weights."""
    pooled = model.get_layer("pool").output
    inputs = keras.Input(pooled.shape[1:], name="features")
    return keras.Model(inputs, model.get_layer("head")(inputs), name="head_on_features")


def fit_inputs(cfg: Config, model: keras.Model, train_images: np.ndarray,
               val_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What fit trains and validates on: the images, or, where the cache applies, their pooled features."""
    reason = _skip_reason(cfg)
    if reason:
        if cfg.model.mode == "feature-extraction":
            print(f"feature cache: off ({reason}); the frozen backbone runs in every epoch")
        return train_images, val_images
    frozen = keras.Model(model.inputs, model.get_layer("pool").output, name="frozen_part")
    cache_dir = Path(cfg.data.cache_dir).expanduser()
    return (cached_features(frozen, train_images, cfg.model, cache_dir, "training"),
            cached_features(frozen, val_images, cfg.model, cache_dir, "validation"))


def cached_features(frozen: keras.Model, images: np.ndarray, model_cfg: ModelConfig, cache_dir: Path,
                    desc: str) -> np.ndarray:
    """`frozen`'s float32 outputs for `images`, read from the cache or computed and cached."""
    path = cache_dir / f"features-{_key(frozen, images, model_cfg)}.npy"
    if path.is_file():
        print(f"feature cache: hit for the {len(images)} {desc} images ({path})")
        return np.load(path)
    print(f"feature cache: miss for the {len(images)} {desc} images: running {model_cfg.backbone} once ({path})")
    batches = [frozen.predict_on_batch(images[start:start + EXTRACT_BATCH].astype(np.float32))
               for start in tqdm(range(0, len(images), EXTRACT_BATCH), desc=f"{model_cfg.backbone} outputs, {desc}",
                                 unit="batch", leave=False)]
    features = np.concatenate(batches).astype(np.float32)
    _save(path, features)
    return features


def _key(frozen: keras.Model, images: np.ndarray, model_cfg: ModelConfig) -> str:
    facts = [FEATURES_VERSION, tf.__version__, keras.__version__, model_cfg.backbone, model_cfg.pooling,
             frozen.dtype_policy.name, list(images.shape), str(images.dtype)]
    digest = hashlib.sha256(json.dumps(facts).encode())
    for weight in frozen.weights:  # trainable and not (BatchNorm statistics)
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.data)
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()[:24]


def _save(path: Path, features: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as handle:
            np.save(handle, features)
        tmp.replace(path)
    except OSError as err:  # a read-only or full cache folder only costs speed
        warnings.warn(f"could not write the feature cache {path} ({err}); the next run computes it again",
                      stacklevel=2)
        tmp.unlink(missing_ok=True)
