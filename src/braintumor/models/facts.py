"""What a built model says about itself: its backbone, the layer Grad-CAM explains, the fine-tune boundary, the
features the out-of-distribution detector reads.

Read off the model's own layers, as timm's `pretrained_cfg` travels with a model, so every shape a
config can build (a simple_cnn of any depth and convs_per_block) and every reloaded model.keras
answers for itself; no registry string can name a layer the model does not have. Training, the
prefix cache, Grad-CAM and calibration all ask here.
"""

from __future__ import annotations

import keras

from braintumor.core.backbones import BACKBONES
from braintumor.core.config import ModelConfig
from braintumor.core.errors import UserError

# the layers build_model names: the pooled features the head reads (the penultimate layer), and the head's softmax
# Dense layer inside it
FEATURES = "pool"
HEAD = "head"
CLASSIFIER = "classifier"

# Spatial pooling ends a block: its output is a downsampled copy of the block's feature maps, not new features.
POOLING_LAYERS = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone sub-model of a model from `build_model` (the first nested model; the head is the last)."""
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def stage_layers(backbone: keras.Model) -> list[str]:
    """The end of each stage of the backbone before its last: for every spatial size it computes at, its widest
    feature map of that size (the last of the widest: a stage's output, not a branch inside it), except at the size
    of the backbone's output, whose spatial mean is already the penultimate features (VGG16 block1_conv2 …
    block5_conv3, ResNet50 conv1_relu, conv2_block3_out … conv4_block6_out, InceptionV3 … mixed2, mixed7,
    simple_cnn each block's last ReLU)."""
    widest: dict[tuple, tuple[int, int, str]] = {}
    for index, layer in enumerate(backbone.layers):
        if _is_feature_map(layer):
            size, key = tuple(layer.output.shape[1:3]), (int(layer.output.shape[-1]), index, layer.name)
            widest[size] = max(widest.get(size, key), key)
    widest.pop(tuple(backbone.output.shape[1:3]), None)
    return [name for _, _, name in sorted(widest.values(), key=lambda key: key[1])]


def detector_model(model: keras.Model) -> keras.Model:
    """A model with `model`'s input that returns the spatial means of each backbone stage's output (`stage_layers`),
    then the penultimate features (the last stage's): what the out-of-distribution detector reads, from edges to
    classes (Lee et al., 2018). The backbone is re-called on the tensor that feeds it, so the weights are the
    model's own."""
    backbone = backbone_of(model)
    feeding = model.layers[model.layers.index(backbone) - 1].output  # build_model's models are a chain of layers
    stages = keras.Model(backbone.inputs, [backbone.get_layer(name).output for name in stage_layers(backbone)])
    # float32 whatever dtype policy the process was left in: the same run must score the same image the same way
    pooled = [keras.layers.GlobalAveragePooling2D(dtype="float32")(output) for output in stages(feeding)]
    return keras.Model(model.inputs, [*pooled, model.get_layer(FEATURES).output])


def classifier(model: keras.Model) -> keras.layers.Dense:
    """The softmax layer: probabilities = softmax(features @ kernel + bias)."""
    return model.get_layer(HEAD).get_layer(CLASSIFIER)


def _is_feature_map(layer: keras.layers.Layer) -> bool:
    """A layer whose output is new spatial features: not the input, a pooling, or a zero-padded copy."""
    return len(layer.output.shape) == 4 and not isinstance(
        layer, (*POOLING_LAYERS, keras.layers.InputLayer, keras.layers.ZeroPadding2D))


def gradcam_layer(backbone: keras.Model) -> str:
    """The last layer of the backbone with spatial, not pooled, output: the last convolutional block's feature
    maps, whose weighting by the class gradient is the Grad-CAM map (VGG16 block5_conv3, ResNet50
    conv5_block3_out, InceptionV3 mixed10, simple_cnn its last block's last ReLU)."""
    return next(layer.name for layer in reversed(backbone.layers) if _is_feature_map(layer))


def fine_tune_after(cfg: ModelConfig, backbone: keras.Model) -> str:
    """The last frozen layer in fine-tune mode: `model.fine_tune_after` when set, else the backbone's recipe (the
    registry's choice for keras.applications backbones), else the pooling layer before the last block, so the
    last block trains, as VGG16's block5 does."""
    names = [layer.name for layer in backbone.layers]
    chosen = cfg.fine_tune_after or BACKBONES[cfg.backbone].fine_tune_after
    if chosen is None:
        last_block = names.index(gradcam_layer(backbone))
        pools = [layer.name for layer in backbone.layers[:last_block] if isinstance(layer, POOLING_LAYERS)]
        if not pools:
            raise UserError(f"{cfg.backbone} with model.depth {cfg.depth} has a single block, so fine-tune mode has "
                            "nothing to freeze; use model.depth 2 or more, or model.mode full")
        chosen = pools[-1]
    if chosen not in names:
        raise UserError(f"model.fine_tune_after = {chosen!r} is not a layer of {cfg.backbone}; "
                        f"use a layer name such as {names[len(names) // 2]!r}")
    return chosen
