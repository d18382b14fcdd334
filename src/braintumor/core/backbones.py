"""The backbone registry as plain data (no Keras import), so config validation and `--help` stay fast.

To add a keras.applications backbone, add one entry to BACKBONES: its constructor name in
keras.applications, the module holding its `preprocess_input` and that function's mode, its minimum
input size, the last layer kept frozen in fine-tune mode, and the layer Grad-CAM explains.
`braintumor.models.build` turns an entry into a Keras model.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backbone:
    constructor: str  # name in keras.applications; empty for the from-scratch baseline
    preprocess_module: str  # keras.applications.<module>.preprocess_input
    min_size: int
    fine_tune_after: str  # default last frozen layer in fine-tune mode
    # preprocess_input as arithmetic: "caffe" (RGB → BGR, minus ImageNet means), "tf" (to [-1, 1]), "unit" (to [0, 1])
    preprocess: str
    gradcam_layer: str  # the last convolutional block's output: its feature maps are what Grad-CAM weighs


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone("VGG16", "vgg16", 32, "block4_pool", "caffe", "block5_conv3"),  # trains block5
    "resnet50": Backbone("ResNet50", "resnet", 32, "conv4_block6_out", "caffe", "conv5_block3_out"),  # trains conv5
    "inceptionv3": Backbone("InceptionV3", "inception_v3", 75, "mixed8", "tf", "mixed10"),  # trains mixed9, mixed10
    "simple_cnn": Backbone("", "", 32, "conv3_pool", "unit", "conv3_relu"),
}
