"""The backbone registry as plain data (no Keras import), so config validation and `--help` stay fast.

To add a keras.applications backbone, add one entry to BACKBONES: its constructor name in
keras.applications, the module holding its `preprocess_input` and that function's mode, its minimum
input size, and the last layer kept frozen in fine-tune mode. `braintumor.models.build` turns an entry
into a Keras model; what depends on the built model's layers (the layer Grad-CAM explains, the
fine-tune boundary of a from-scratch backbone, whose layers follow its config) is read off that model
by `braintumor.models.facts`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    constructor: str  # name in keras.applications; empty for the from-scratch baseline
    preprocess_module: str  # keras.applications.<module>.preprocess_input
    min_size: int
    # default last frozen layer in fine-tune mode; None: the pooling layer before the last block (models/facts.py)
    fine_tune_after: str | None
    # preprocess_input as arithmetic: "caffe" (RGB → BGR, minus ImageNet means), "tf" (to [-1, 1]), "unit" (to [0, 1])
    preprocess: str


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone("VGG16", "vgg16", 32, "block4_pool", "caffe"),  # trains block5
    "resnet50": Backbone("ResNet50", "resnet", 32, "conv4_block6_out", "caffe"),  # trains conv5
    "inceptionv3": Backbone("InceptionV3", "inception_v3", 75, "mixed8", "tf"),  # trains mixed9, mixed10
    "simple_cnn": Backbone("", "", 32, None, "unit"),  # its layers follow model.depth
}
