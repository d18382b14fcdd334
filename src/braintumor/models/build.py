"""Model building: a BACKBONES entry (core/backbones.py) → preprocess, backbone, pooling, head.

Every model takes raw RGB images in [0, 255]; its own first layer applies the backbone's
preprocessing, so evaluation and prediction need nothing but the saved model.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from braintumor.core.backbones import BACKBONES
from braintumor.core.config import ModelConfig
from braintumor.core.errors import UserError, describe
from braintumor.models.facts import CLASSIFIER, FEATURES, HEAD, classifier, fine_tune_after

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # ImageNet channel means, subtracted after the RGB → BGR flip


def preprocess_layer(backbone: str) -> keras.layers.Layer:
    """The backbone's `preprocess_input` as one built-in Keras layer named "preprocess", so that a saved
    model.keras loads in plain Keras (`safe_mode=True`, no braintumor import) and computes the same values.

    float32 even under mixed precision: the subtraction of the caffe means must not round in bfloat16.
    """
    mode = BACKBONES[backbone].preprocess
    if mode == "unit":
        return keras.layers.Rescaling(1 / 255, name="preprocess", dtype="float32")
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess", dtype="float32")
    # caffe: RGB → BGR, minus the means: a fixed linear map of each pixel, i.e. a frozen 1×1 convolution
    layer = keras.layers.Conv2D(3, 1, name="preprocess", dtype="float32", trainable=False)
    layer.build((None, None, None, 3))
    flip = np.eye(3, dtype=np.float32)[::-1].reshape(1, 1, 3, 3)  # kernel[0, 0, in, out]: out c = in 2 - c
    layer.set_weights([flip, -np.asarray(CAFFE_MEAN_BGR, np.float32)])
    return layer


@keras.saving.register_keras_serializable(package="braintumor")
class BackbonePreprocess(keras.layers.Layer):
    """The custom preprocessing layer of runs saved before `preprocess_layer`: registered only so those
    model.keras files still load; new models never contain it."""

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone

    def call(self, images):
        images = keras.ops.cast(images, self.compute_dtype)
        module = BACKBONES[self.backbone].preprocess_module
        if not module:
            return images / 255.0
        return getattr(keras.applications, module).preprocess_input(images)

    def get_config(self):
        return {**super().get_config(), "backbone": self.backbone}


def _instance_batch_norm(x, filters: int, name: str, cfg: ModelConfig):
    """IBN-a (Pan et al., 2018): half the filters instance-normalised (each image and channel by its own
    statistics, which removes a site's contrast and texture style), half batch-normalised (which keeps what
    tells the classes apart). Two convolutions of half the filters each are one convolution split in two."""
    half = filters // 2
    style = keras.layers.Conv2D(half, 3, padding="same", use_bias=False, name=f"{name}_in_conv")(x)
    style = keras.layers.GroupNormalization(groups=half, name=f"{name}_in")(style)  # a group per channel
    content = keras.layers.Conv2D(filters - half, 3, padding="same", use_bias=False, name=name)(x)
    content = keras.layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"{name}_bn")(content)
    return keras.layers.Concatenate(name=f"{name}_ibn")([style, content])


@keras.saving.register_keras_serializable(package="braintumor")
class MixStyle(keras.layers.Layer):
    """MixStyle (Zhou et al., ICLR 2021), a training-only layer: for a share `p` of the images of a batch, the
    style of each channel (its mean and standard deviation over the image) is mixed with that of another image of
    the batch, by a weight drawn from Beta(alpha, alpha); the content (the features less their style) is kept. So
    the network meets every site's brightness and contrast with every image's content, and cannot read the site
    off the style. Identity at inference; a run saves its model without it (`inference_model`)."""

    def __init__(self, p: float, alpha: float = 0.1, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.p, self.alpha, self.seed = p, alpha, seed
        self.seed_generator = keras.random.SeedGenerator(seed)  # reseeded every epoch by the trainer
        self.mixing = True  # off in `unmixed`

    def call(self, features, training=False):
        if not (training and self.mixing):
            return features
        ops = keras.ops
        x = ops.cast(features, "float32")  # statistics of bfloat16 features would round
        mean = ops.stop_gradient(ops.mean(x, axis=(1, 2), keepdims=True))
        std = ops.stop_gradient(ops.sqrt(ops.var(x, axis=(1, 2), keepdims=True) + 1e-6))
        batch = ops.shape(x)[0]
        weight = keras.random.beta((batch, 1, 1, 1), self.alpha, self.alpha, seed=self.seed_generator)
        mixed = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator) < self.p
        weight = ops.where(mixed, weight, 1.0)
        partner = keras.random.shuffle(ops.arange(batch), seed=self.seed_generator)
        mixed_mean = weight * mean + (1 - weight) * ops.take(mean, partner, axis=0)
        mixed_std = weight * std + (1 - weight) * ops.take(std, partner, axis=0)
        return ops.cast((x - mean) / std * mixed_std + mixed_mean, features.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "p": self.p, "alpha": self.alpha, "seed": self.seed}


@contextmanager
def unmixed(model: keras.Model) -> Iterator[None]:
    """While this runs, `model`'s MixStyle layers pass their input through in training mode too (in eager calls),
    so that BatchNorm statistics taken in training mode (precise BN) are those of the features inference sees."""
    layers = _mixstyle_layers(model)
    for layer in layers:
        layer.mixing = False
    try:
        yield
    finally:
        for layer in layers:
            layer.mixing = True


def _mixstyle_layers(model: keras.Model) -> list[MixStyle]:
    return [layer for layer in computing_layers(model) if isinstance(layer, MixStyle)]


def _simple_cnn(input_shape: tuple[int, int, int], weights: str | None, cfg: ModelConfig) -> keras.Model:
    """A from-scratch CNN: `depth` blocks of `convs_per_block` conv-norm-ReLU layers and a max pool, the
    filters doubling from `width`, the norm BatchNorm, GroupNorm or, in the first conv of every block but the
    last two, IBN (`cfg.norm`); with `cfg.mixstyle`, a MixStyle layer after each of those blocks. The defaults
    (3 blocks of one conv, 32-64-128) train on a CPU in minutes."""
    inputs = keras.Input(input_shape)
    x = inputs
    for block in range(1, cfg.depth + 1):
        early = block <= cfg.depth - 2  # IBN and MixStyle act on low-level features only
        for conv in range(1, cfg.convs_per_block + 1):
            name = f"conv{block}" if cfg.convs_per_block == 1 else f"conv{block}_{conv}"
            filters = cfg.width * 2 ** (block - 1)
            if cfg.norm == "ibn" and conv == 1 and early:
                x = _instance_batch_norm(x, filters, name, cfg)
            else:
                x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
                if cfg.norm == "group":
                    x = keras.layers.GroupNormalization(groups=8, name=f"{name}_gn")(x)
                else:
                    x = keras.layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"{name}_bn")(x)
            x = keras.layers.Activation("relu", name=f"{name}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"conv{block}_pool")(x)
        if cfg.mixstyle and early:
            x = MixStyle(cfg.mixstyle, name=f"conv{block}_mixstyle")(x)
    model = keras.Model(inputs, x, name="simple_cnn")
    if weights:
        model.load_weights(weights)
    return model


def _keras_cache() -> str:
    return str(Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models")


def _resolve_weights(cfg: ModelConfig) -> str | None:
    if cfg.weights == "none":
        return None
    if cfg.weights == "imagenet":
        return "imagenet"
    path = Path(cfg.weights).expanduser()
    if not path.is_file():
        raise UserError(f"model.weights file {path} not found; give an existing weights file, "
                        "or set model.weights to imagenet or none")
    return str(path)


def build_backbone(cfg: ModelConfig, image_size: int, channels: int = 3) -> keras.Model:
    """The backbone alone (no head), with the weights the config asks for."""
    spec = BACKBONES[cfg.backbone]
    shape = (image_size, image_size, channels)
    weights = _resolve_weights(cfg)
    try:
        if not spec.constructor:
            return _simple_cnn(shape, weights, cfg)
        return getattr(keras.applications, spec.constructor)(include_top=False, weights=weights, input_shape=shape)
    except Exception as err:  # Keras raises plain Exception/ValueError for both failures below
        if weights is None:
            raise
        cause = describe(err)
        if weights == "imagenet":
            raise UserError(
                f"could not get ImageNet weights for {cfg.backbone} ({cause}); Keras downloads them once into "
                f"{_keras_cache()} — connect to the internet, copy the file named in the URL there, or set "
                "model.weights to none or a local weights file") from err
        raise UserError(f"weights file {weights} does not fit {cfg.backbone} at {image_size} px ({cause}); "
                        f"use a file saved from a {cfg.backbone} backbone without its top layers") from err


def _freeze(backbone: keras.Model, cfg: ModelConfig) -> None:
    if cfg.mode == "full":
        backbone.trainable = True
    elif cfg.mode == "feature-extraction":
        backbone.trainable = False
    else:
        names = [layer.name for layer in backbone.layers]
        first_trainable = names.index(fine_tune_after(cfg, backbone)) + 1
        for index, layer in enumerate(backbone.layers):
            layer.trainable = index >= first_trainable


def _grayscale() -> keras.layers.Layer:
    """RGB → one intensity channel, as a frozen built-in layer (the saved model still takes RGB)."""
    layer = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, dtype="float32", name="grayscale")
    layer.build((None, None, None, 3))
    layer.set_weights([np.full((1, 1, 3, 1), 1 / 3, np.float32)])
    return layer


def build_model(cfg: ModelConfig, image_size: int, num_classes: int, channels: int = 3) -> keras.Model:
    """Preprocess → [grayscale] → backbone → pooling → dropout → softmax, trainable as `cfg.mode` says.

    The model always takes RGB images; with `channels=1` (data.channels) a fixed layer averages them into
    one intensity channel, which is all an MRI slice carries, and the backbone's first layer is a third
    the size.
    """
    backbone = build_backbone(cfg, image_size, channels)
    _freeze(backbone, cfg)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = preprocess_layer(cfg.backbone)(inputs)
    if channels == 1:
        x = _grayscale()(x)
    # BatchNorm keeps its ImageNet statistics unless the whole backbone is retrained.
    x = backbone(x, training=False) if cfg.mode != "full" else backbone(x)
    pooling = keras.layers.GlobalAveragePooling2D if cfg.pooling == "avg" else keras.layers.GlobalMaxPooling2D
    x = pooling(name=FEATURES)(x)
    head = keras.Sequential(
        [keras.layers.Dropout(cfg.dropout, name="dropout"),
         keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name=CLASSIFIER)],
        name=HEAD,
    )
    return keras.Model(inputs, head(x), name=f"{cfg.backbone}_{cfg.mode.replace('-', '_')}")


def computing_layers(layer: keras.layers.Layer):
    """The layers that compute, found recursively inside nested models (models and inputs take the
    global dtype policy, but compute nothing themselves)."""
    if not isinstance(layer, keras.Model | keras.layers.InputLayer):
        yield layer
    for inner in getattr(layer, "layers", ()):
        yield from computing_layers(inner)


def float32_model(model: keras.Model) -> keras.Model:
    """`model`, or, if it computes in mixed precision, a float32 copy with the same weights (for Grad-CAM,
    whose gradients would be too coarse in bfloat16, and for export: onnxruntime has no bfloat16 convolution)."""
    if all(layer.dtype_policy.name == "float32" for layer in computing_layers(model)):
        return model
    return float32_copy(model)


def float32_copy(model: keras.Model) -> keras.Model:
    """A float32 copy of `model` with the same weights; every layer, nested models' too, is new."""
    return _copy(model, "float32")


def inference_model(model: keras.Model) -> keras.Model:
    """`model`, or, if it has training-only layers (MixStyle), a copy with the same weights and an Identity layer
    in their place: what a run saves as model.keras, which plain Keras loads without braintumor."""
    if not _mixstyle_layers(model):
        return model
    return _copy(model)


def _copy(model: keras.Model, dtype: str | None = None) -> keras.Model:
    """A copy of `model` with its weights, every layer new (nested models' too), MixStyle layers as Identity;
    every layer computing in `dtype` if one is given, else in its own dtype policy."""

    def copy_layer(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.Sequential):  # its Input took the dtype of its first input: bfloat16 in the head
            inputs = keras.Input(layer.inputs[0].shape[1:], dtype=dtype or layer.inputs[0].dtype)
            return keras.Sequential([inputs, *map(copy_layer, layer.layers)], name=layer.name)
        if isinstance(layer, keras.Model):
            return keras.models.clone_model(layer, clone_function=copy_layer)
        if isinstance(layer, MixStyle):
            return keras.layers.Identity(name=layer.name, dtype=dtype or layer.dtype_policy.name)
        return layer.__class__.from_config({**layer.get_config(), **({"dtype": dtype} if dtype else {})})

    copy = keras.models.clone_model(model, clone_function=copy_layer)
    copy.set_weights(model.get_weights())
    return copy


def with_temperature(model: keras.Model, temperature: float) -> keras.Model:
    """A float32 copy of `model` whose softmax layer computes softmax(logits / temperature): its kernel and bias
    divided by the temperature, so the copy gives calibrated probabilities wherever it runs."""
    copy = float32_copy(model)
    kernel, bias = classifier(copy).get_weights()
    classifier(copy).set_weights([kernel / temperature, bias / temperature])
    return copy
