"""Grad-CAM (Selvaraju et al., 2017): where in a scan the evidence for a class lies.

The heat map weighs the feature maps of the backbone's last convolutional block (read off the model
by `models.facts.gradcam_layer`) by the gradient of the class score with respect to them. Our models nest the
backbone as a sub-model after the preprocessing layer, so the keras.io recipe (one model from the
input to that layer's output and the model's output) fails with "Graph disconnected". Instead,
two stages: the backbone sub-model up to the target layer and to its own output, then the layers
after it (pooling, head) applied inside the gradient tape.
"""

from __future__ import annotations

import io
from pathlib import Path

import keras
import matplotlib
import numpy as np
import tensorflow as tf

from braintumor.core.atomic import write_bytes
from braintumor.models.build import float32_model
from braintumor.models.facts import backbone_of, gradcam_layer

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

OVERLAY_ALPHA = 0.45  # heat map opacity over the scan


class GradCam:
    """Heat maps of one model; built once, then called per batch."""

    def __init__(self, model: keras.Model):
        model = float32_model(model)
        inner = backbone_of(model)
        layers = model.layers[1:]  # after the Input: preprocess, [grayscale], backbone, pool, head (a chain)
        index = layers.index(inner)
        self.before, self.after = layers[:index], layers[index + 1:]
        self.layer = gradcam_layer(inner)  # the layer explained
        self.backbone = keras.Model(inner.inputs, [inner.get_layer(self.layer).output, inner.outputs[0]])

    def __call__(self, images: np.ndarray, class_index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(N, H, W) heat maps in [0, 1] at the images' size, and the (N, C) probabilities.

        `class_index` picks the class explained per image; by default the predicted one.
        """
        x = tf.convert_to_tensor(images, tf.float32)
        for layer in self.before:
            x = layer(x, training=False)
        with tf.GradientTape() as tape:
            features, x = self.backbone(x, training=False)
            for layer in self.after:
                x = layer(x, training=False)
            probs = x
            chosen = tf.argmax(probs, axis=1) if class_index is None else tf.constant(class_index, tf.int64)
            # log p rather than p: the softmax saturates near p = 1, which would leave almost no gradient
            score = tf.math.log(tf.gather(probs, chosen, axis=1, batch_dims=1) + 1e-12)
        grads = tape.gradient(score, features)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # one weight per feature map
        cam = tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))[..., None]
        cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        cam = tf.math.divide_no_nan(cam, peak)
        return cam.numpy(), probs.numpy()


def overlay(image: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The scan (uint8 RGB) with the heat map in the jet colour map laid over it, as uint8 RGB."""
    colours = plt.get_cmap("jet")(heatmap)[..., :3] * 255
    return np.clip((1 - OVERLAY_ALPHA) * image + OVERLAY_ALPHA * colours, 0, 255).astype(np.uint8)


def write_png(path: Path, image: np.ndarray, heatmap: np.ndarray, title: str) -> None:
    """A PNG with the scan and its Grad-CAM overlay side by side, titled (atomically written)."""
    figure, axes = plt.subplots(1, 2, figsize=(7, 3.8))
    for axis, picture, caption in zip(axes, (image, overlay(image, heatmap)), ("scan", "Grad-CAM"), strict=True):
        axis.imshow(picture, interpolation="bilinear")
        axis.set_title(caption, fontsize=10)
        axis.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_bytes(path, buffer.getvalue())
