"""The backbone registry as plain data (no Keras import), so config validation and `--help` stay fast.

To add a keras.applications backbone, add one entry to BACKBONES: its constructor name in
keras.applications, the module holding its `preprocess_input`, its minimum input size, and the last
layer kept frozen in fine-tune mode. `braintumor.models.build` turns an entry into a Keras model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    constructor: str  # name in keras.applications; empty for the from-scratch baseline
    preprocess_module: str  # keras.applications.<module>.preprocess_input
    min_size: int
    fine_tune_after: str  # default last frozen layer in fine-tune mode


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone("VGG16", "vgg16", 32, "block4_pool"),  # trains block5
    "resnet50": Backbone("ResNet50", "resnet", 32, "conv4_block6_out"),  # trains conv5
    "inceptionv3": Backbone("InceptionV3", "inception_v3", 75, "mixed8"),  # trains mixed9, mixed10
    "simple_cnn": Backbone("", "", 32, "conv3_pool"),
}
