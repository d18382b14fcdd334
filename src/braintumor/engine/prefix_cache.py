"""Prefix cache: the frozen front of the model runs once, and fit trains only the part after it.

Without online augmentation the training images never change between epochs, and neither does
anything the frozen layers compute from them, so a naive fit recomputes the same values every
epoch. Here the model is cut at a *boundary*: the prefix (image → preprocessing → backbone up to
the boundary, BatchNorm in inference mode) runs once over the training and validation images and
its outputs are cached on disk; fit trains the suffix (the backbone's own layers after the
boundary, then pooling and head) on them. The suffix shares its layers and weights with the whole
model, so the saved model.keras is the whole model, and evaluation, prediction and export do not
change.

- fine-tune: the boundary is `model.fine_tune_after` (VGG16 block4_pool, ResNet50
  conv4_block6_out, InceptionV3 mixed8 by default). Where the layers after it also need a tensor
  from before it (a boundary inside a residual block or an Inception module), the cache is off and
  the log and env.json say why.
- feature-extraction: the whole backbone and the pooling are frozen, so the boundary is the pooled
  output and the suffix is the head alone.

Cache files are memory-mapped .npy in the compute dtype (bfloat16 stored as its raw 16 bits), so
RAM use stays at one batch; they are written and verified as every cache is (core/cache.py: SHA-256
checked on every load, a damaged file reported, deleted and built again, never read; an unwritable
cache folder warns once, and the outputs are then held in memory for this run). The key hashes
by value everything the prefix's outputs depend on: its weights (ImageNet, a weights file, or the
seeded random init), every prefix layer's config (backbone, boundary, preprocessing), the dtype
policy, and the image array's bytes in order (file list and content, image size, decoding, the
validation split, offline augmentation's seed and parameters), plus the library versions.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from braintumor.core import cache
from braintumor.core.config import Config
from braintumor.core.logs import get_logger
from braintumor.data import augment
from braintumor.models.facts import backbone_of, fine_tune_after
from braintumor.models.keras_internals import call_arguments, layer_calls

log = get_logger(__name__)

FORMAT_VERSION = 3  # bump when the extraction or the file format changes, to invalidate caches
EXTRACT_BATCH = 64


@dataclass
class Cut:
    """Where fit's model starts: `suffix` is None when fit trains the whole model."""

    reason: str  # one line for the log and env.json
    boundary: str = ""  # e.g. "vgg16/block4_pool", or "pool" in feature extraction
    prefix: keras.Model | None = None  # image → boundary outputs (frozen)
    suffix: keras.Model | None = None  # boundary outputs → class probabilities (shares the whole model's layers)


def _config_reason(cfg: Config) -> str | None:
    """Why the configuration rules the cache out, or None."""
    if cfg.model.mode == "full":
        return "full mode trains every layer"
    if cfg.augmentation.online:
        return "online augmentation changes the images every epoch"
    if not cfg.train.prefix_cache:
        return "train.prefix_cache is false"
    return None


def applies(cfg: Config) -> bool:
    """Whether the configuration allows the cache (the model may still rule it out: see `cut_model`)."""
    return _config_reason(cfg) is None


def cut_model(cfg: Config, model: keras.Model) -> Cut:
    """Cut `model` (from models.build) into a frozen prefix and a trainable suffix, where the cache applies."""
    reason = _config_reason(cfg)
    if reason:
        return _logged(Cut(f"off ({reason}); every epoch runs the whole model"))
    if cfg.model.mode == "feature-extraction":
        pooled = model.get_layer("pool").output
        suffix = _rebuild(model, {id(pooled): keras.Input(pooled.shape[1:], name="prefix_outputs")})
        return _logged(Cut("on: the frozen backbone runs once, then only the head trains", "pool",
                           keras.Model(model.inputs, pooled, name="prefix"), suffix))
    backbone = backbone_of(model)
    name = fine_tune_after(cfg.model, backbone)
    boundary = f"{backbone.name}/{name}"
    inner = backbone.get_layer(name).output
    after = keras.Input(inner.shape[1:], name="boundary")
    tensors, cut = _replay(backbone, {id(inner): after})
    if cut or id(backbone.outputs[0]) not in tensors:
        return _logged(Cut(f"off (model.fine_tune_after {name!r} cuts through a skip connection: "
                           f"{cut or 'the backbone output'} also needs a tensor from before it); every epoch runs "
                           "the whole model", boundary))
    after_part = keras.Model(after, tensors[id(backbone.outputs[0])], name=f"{backbone.name}_after_{name}")
    before_part = keras.Model(backbone.inputs, inner, name=f"{backbone.name}_to_{name}")
    call = next(node for node in layer_calls(model) if node.operation is backbone)
    image = keras.Input(model.inputs[0].shape[1:], name=model.inputs[0].name)
    prefix_tensors, _ = _replay(model, {id(model.inputs[0]): image}, swap={backbone: before_part}, last=backbone)
    prefix = keras.Model(image, prefix_tensors[id(call.outputs[0])], name="prefix")
    suffix = _rebuild(model, {id(call.input_tensors[0]): keras.Input(inner.shape[1:], name="prefix_outputs")},
                      swap={backbone: after_part})
    return _logged(Cut(f"on at {boundary}: the frozen part runs once, then only the layers after it train",
                       boundary, prefix, suffix))


def _logged(result: Cut) -> Cut:
    log.info(f"prefix cache: {result.reason}")
    return result


def _replay(graph: keras.Model, seeds: dict, swap: dict | None = None, last=None) -> tuple[dict, str | None]:
    """Call `graph`'s layers again in topological order, starting from new tensors.

    `seeds` maps ids of `graph`'s tensors to the new tensors that replace them; `swap` calls another layer
    in place of one of `graph`'s; nodes whose inputs are not available are skipped (they belong to the part
    before the seeds). Returns the ids of `graph`'s tensors mapped to the new ones, and the name of the first
    layer that needs both a new tensor and one from before the seeds (a cut through a skip connection).
    Keras 3 has no public "model from an inner layer on" (models/keras_internals.py).
    """
    tensors, swap = dict(seeds), swap or {}
    for node in layer_calls(graph):
        available = [id(x) in tensors for x in node.input_tensors]
        if not all(available):
            if any(available):
                return tensors, node.operation.name
            continue
        args, kwargs = call_arguments(node, tensors)
        outputs = swap.get(node.operation, node.operation)(*args, **kwargs)
        tensors.update(zip((id(x) for x in node.outputs), keras.tree.flatten(outputs), strict=True))
        if node.operation is last:
            return tensors, None
    return tensors, None


def _rebuild(model: keras.Model, seeds: dict, swap: dict | None = None) -> keras.Model:
    """The part of `model` after `seeds` (one new Input), as a model sharing `model`'s layers."""
    tensors, _ = _replay(model, seeds, swap)
    (inputs,) = seeds.values()
    return keras.Model(inputs, tensors[id(model.outputs[0])], name="suffix")


def fit_inputs(cfg: Config, where: Cut, images: np.ndarray, labels: np.ndarray, val_images: np.ndarray,
               val_labels: np.ndarray, epochs: range) -> tuple[tf.data.Dataset, tf.data.Dataset | tuple]:
    """What fit trains (the batches of every epoch in `epochs`) and validates on: the images, or, where the
    prefix is cached, its cached outputs."""
    batch = cfg.train.batch_size
    if where.suffix is None:
        online = cfg.augmentation if cfg.augmentation.online else None
        return (augment.training_dataset(images, labels, batch, cfg.seed, online, epochs),
                (val_images.astype(np.float32), val_labels))
    cache_dir = Path(cfg.data.cache_dir).expanduser()
    train = cached_outputs(where, images, cache_dir, "training")
    val = cached_outputs(where, val_images, cache_dir, "validation")
    train_order = augment.epoch_orders(len(train), batch, cfg.seed, epochs).map(lambda epoch, step, index: index)
    val_order = tf.data.Dataset.range(len(val)).batch(batch)
    return _batches(train, labels, train_order), _batches(val, val_labels, val_order)


def _batches(outputs: np.ndarray, labels: np.ndarray, order: tf.data.Dataset) -> tf.data.Dataset:
    """Batches of (float32 outputs, labels) read from the memory-mapped cache in `order` (index batches), one
    batch in RAM at a time; training draws the same order as augment.training_dataset's."""

    def gather(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return outputs[index].astype(np.float32), labels[index]

    def read(index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x, y = tf.numpy_function(gather, [index], (tf.float32, tf.as_dtype(labels.dtype)))
        return tf.ensure_shape(x, (None, *outputs.shape[1:])), tf.ensure_shape(y, (None, *labels.shape[1:]))

    return order.map(read).prefetch(2)


def cached_outputs(where: Cut, images: np.ndarray, cache_dir: Path, desc: str) -> np.ndarray:
    """The prefix's outputs for `images` (memory-mapped), read from the cache or computed into it; in memory when
    the cache folder cannot be written."""
    path = cache_dir / f"prefix-{_key(where, images)}.npy"
    meta = cache.verified(path, "prefix cache")
    if meta is not None:
        log.info(f"prefix cache: hit for the {len(images)} {desc} images ({path})")
        return np.load(path, mmap_mode="r").view(tf.as_dtype(meta["dtype"]).as_numpy_dtype)
    log.info(f"prefix cache: miss for the {len(images)} {desc} images: running the part up to {where.boundary} "
             f"once ({path})")
    outputs = None

    def fill(tmp: Path) -> dict:
        nonlocal outputs
        outputs = _extract(where.prefix, images, desc, lambda shape, storage: _file_array(tmp, shape, storage))
        outputs.flush()
        return {"dtype": tf.as_dtype(outputs.dtype).name}

    # a write that fails after the extraction leaves `outputs` mapping a deleted file, which stays readable
    if not cache.write(path, fill) and outputs is None:
        outputs = _extract(where.prefix, images, desc, np.empty)
    return outputs


def _file_array(path: Path, shape: tuple, storage: np.dtype) -> np.memmap:
    """A .npy file mapped into memory, its disk space reserved first where the system can: a full disk is then an
    OSError here, not a SIGBUS when a page of the map is written."""
    array = np.lib.format.open_memmap(path, mode="w+", dtype=storage, shape=shape)
    if hasattr(os, "posix_fallocate"):  # Linux; not macOS or Windows
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
    return array


def _extract(prefix: keras.Model, images: np.ndarray, desc: str, allocate) -> np.ndarray:
    """Run `prefix` over `images` in batches into `allocate(shape, storage dtype)`; returns it viewed as the compute
    dtype (bfloat16 has no .npy type: its raw bits are stored as unsigned integers)."""
    stored, dtype = None, None
    for start in tqdm(range(0, len(images), EXTRACT_BATCH), desc=f"prefix outputs, {desc}", unit="batch",
                      leave=False):
        out = np.asarray(prefix.predict_on_batch(images[start:start + EXTRACT_BATCH].astype(np.float32)))
        if stored is None:
            dtype = out.dtype
            stored = allocate((len(images), *out.shape[1:]), np.dtype(f"<u{out.itemsize}"))
        stored[start:start + len(out)] = np.ascontiguousarray(out).view(stored.dtype)
    return stored.view(dtype)


def _key(where: Cut, images: np.ndarray) -> str:
    prefix = where.prefix
    facts = [FORMAT_VERSION, tf.__version__, keras.__version__, where.boundary, prefix.dtype_policy.name,
             _layer_configs(prefix), list(images.shape), str(images.dtype)]
    digest = hashlib.sha256(json.dumps(facts, default=str, sort_keys=True).encode())
    for weight in prefix.weights:  # trainable and not (BatchNorm statistics)
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.data)
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()[:24]


def _layer_configs(model: keras.Model) -> list:
    """Each layer's class and config, nested models flattened, without the names Keras numbers per process."""
    configs = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            configs += _layer_configs(layer)
        elif not isinstance(layer, keras.layers.InputLayer):
            configs.append([type(layer).__name__, {k: v for k, v in layer.get_config().items() if k != "name"}])
    return configs
