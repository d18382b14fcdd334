"""The study's augmentation, in the input pipeline.

Keras 3's RandomTranslation/RandomShear/... layers set supports_jit=False, and one of them inside
a model silently turns XLA off for the whole model, so augmentation runs here, in tf.data, never
inside the model.

How the study's Keras ImageDataGenerator parameters map:
- width_shift / height_shift 0.2: shift uniform in ±0.2 × width / height (pixels, bilinear).
- shear 0.2: shear angle uniform in ±0.2 degrees (ImageDataGenerator's shear_range is in degrees).
- horizontal_flip: mirrored with probability 0.5.
- fill_mode nearest: pixels shifted in from outside copy the nearest edge pixel.
- brightness [0.8, 2.0]: pixel values multiplied by a factor uniform in [0.8, 2.0], clipped at 255,
  like ImageDataGenerator's brightness_range (PIL ImageEnhance.Brightness). Keras'
  RandomBrightness is additive, so it is not used.
Extras for MRI slices (off by default, so the study's configs keep the study's augmentation): zoom
(factor range, > 1 enlarges: a random resized crop), rotation (± degrees), contrast (factor about
the image mean), gamma (on [0, 1] intensities), blur (a Gaussian of random sigma: scanners and
exports differ in resolution, and sharpness must not tell the classes apart) and histogram shift (a random
monotone remapping of intensities, as MONAI's RandHistogramShift: other sequences and scanners order the same
tissues alike but space their gray levels differently) and bias field (a smooth multiplicative intensity field, as
MONAI's RandBiasField: receive coils make one side of a slice brighter, and by how much differs by scanner) and
noise (Gaussian, of a standard deviation drawn per image, inside the brain: sources differ in noise level) and
inversion (the brain's intensities reversed, for a share of images: T2 and FLAIR slices show the tissues in
another order than T1's, and in Training no_tumor has them, glioma and pituitary none) and GIN (a share of images
sent through a random shallow convolutional network, as Ouyang et al. 2022 did to carry a model from one MRI sequence
to others: gray levels and local texture remapped non-monotonically, the shapes kept).
Online mode draws new transforms every batch of every epoch; offline mode draws `copies` fixed
copies once, seeded (the study's 2870 → 5740). Online mode can also blend the images of each batch (mixup).
Validation and Testing images are never augmented.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image
from tqdm import tqdm

from braintumor.core.config import AugmentationConfig


def augment_batch(images: tf.Tensor, seed: tf.Tensor, cfg: AugmentationConfig) -> tf.Tensor:
    """Random affine + brightness for a batch (B, H, W, 3) of [0, 255] images; float32 out.

    `seed` is a shape-(2,) integer tensor: the same seed gives the same transforms.
    """
    images = tf.cast(images, tf.float32)
    shape = tf.shape(images)
    batch, height, width = shape[0], tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)

    def own_seed(index: int) -> tf.Tensor:
        """A seed of one key's own, so turning that key on leaves every other draw as it was."""
        return tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), index)

    def uniform(index: int, low: float, high: float, extra_dims: int = 0) -> tf.Tensor:
        return tf.random.stateless_uniform([batch] + [1] * extra_dims, seeds[index], low, high)

    tx = uniform(0, -cfg.width_shift, cfg.width_shift) * width
    ty = uniform(1, -cfg.height_shift, cfg.height_shift) * height
    shear = uniform(2, -cfg.shear, cfg.shear) * (math.pi / 180.0)
    flip = tf.where(uniform(3, 0.0, 1.0) < 0.5, -1.0, 1.0) if cfg.horizontal_flip else tf.ones([batch])
    ones, zeros = tf.ones([batch]), tf.zeros([batch])
    # the MRI extras draw from seeds of their own, so the study's transforms stay the same draw for draw
    extra = tf.random.experimental.stateless_split(own_seed(1), 4)

    def extra_uniform(index: int, low: float, high: float, off: float, extra_dims: int = 0) -> tf.Tensor | None:
        """None where the key is off (no draw, no arithmetic: the study's output stays bit-identical)."""
        if low == high == off:
            return None
        return tf.random.stateless_uniform([batch] + [1] * extra_dims, extra[index], low, high)

    zoom = extra_uniform(0, *cfg.zoom, off=1.0)
    zoom = ones if zoom is None else zoom
    angle = extra_uniform(1, -cfg.rotation, cfg.rotation, off=0.0)
    radians = zeros if angle is None else angle * (math.pi / 180.0)
    rot_cos, rot_sin = (ones, zeros) if angle is None else (tf.cos(radians), tf.sin(radians))
    # Inverse map, output pixel (x, y) → input pixel, about the image centre (cx, cy): with
    # u = x - tx - cx, v = y - ty - cy, (x_in - cx, y_in - cy) = A · R · (u, v) / zoom, where
    # A = [[flip, -flip·sin(s)], [0, cos(s)]] undoes shear and flip and R = [[cos r, sin r], [-sin r, cos r]]
    # undoes the rotation (identity, and zoom 1, when those keys are off)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    sin, cos = tf.sin(shear), tf.cos(shear)
    b11 = (flip * rot_cos + flip * sin * rot_sin) / zoom
    b12 = (flip * rot_sin - flip * sin * rot_cos) / zoom
    b21 = -cos * rot_sin / zoom
    b22 = cos * rot_cos / zoom
    transforms = tf.stack([
        b11, b12, cx - b11 * (tx + cx) - b12 * (ty + cy),
        b21, b22, cy - b21 * (tx + cx) - b22 * (ty + cy),
        zeros, zeros,
    ], axis=1)
    moved = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=transforms, output_shape=shape[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode=cfg.fill_mode.upper())
    moved.set_shape(images.shape)  # the op forgets the static image size; without it training runs far slower
    if cfg.blur[1] > 0:
        sigma = tf.random.stateless_uniform([batch], own_seed(2), *cfg.blur)
        moved = gaussian_blur(moved, sigma, radius=math.ceil(3 * cfg.blur[1]))
    low, high = cfg.brightness
    out = moved * uniform(4, low, high, extra_dims=3)
    if cfg.bias_field:
        out = out * bias_field(batch, images.shape[1], images.shape[2], own_seed(5), cfg.bias_field)[..., None]
    contrast = extra_uniform(2, *cfg.contrast, off=1.0, extra_dims=3)
    if contrast is not None:  # about each image's own mean, as tf.image.adjust_contrast
        mean = tf.reduce_mean(out, axis=[1, 2, 3], keepdims=True)
        out = mean + contrast * (out - mean)
    out = tf.clip_by_value(out, 0.0, 255.0)
    gamma = extra_uniform(3, *cfg.gamma, off=1.0, extra_dims=3)
    if gamma is not None:
        out = 255.0 * tf.pow(out / 255.0, gamma)
    if cfg.noise:  # on nonzero pixels only, so the background stays black as after brain_crop
        keys = tf.random.experimental.stateless_split(own_seed(6), 2)
        sigma = tf.random.stateless_uniform([batch, 1, 1, 1], keys[0], 0.0, cfg.noise)
        gray = tf.concat([tf.shape(out)[:3], [1]], axis=0)  # one draw for R, G and B: a gray slice stays gray
        noisy = out + sigma * tf.random.stateless_normal(gray, keys[1])
        out = tf.where(out > 0, tf.clip_by_value(noisy, 0.0, 255.0), out)
    if cfg.invert:  # nonzero pixels only, so the background stays black
        inverted = tf.random.stateless_uniform([batch, 1, 1, 1], own_seed(7)) < cfg.invert
        out = tf.where(inverted & (out > 0), 255.0 - out, out)
    if cfg.histogram_shift:
        out = histogram_shift(out, own_seed(4), cfg.histogram_shift)
    if cfg.gin:
        out = random_network_contrast(out, own_seed(8), cfg.gin)
    return out


def random_network_contrast(images: tf.Tensor, seed: tf.Tensor, share: float, layers: int = 4,
                            width: int = 2) -> tf.Tensor:
    """GIN (global intensity non-linear augmentation, Ouyang et al. 2022): for a `share` of the images (B, H, W, C),
    the gray slice goes through a shallow network of its own, `layers` convolutions (3 × 3 or, half the time, 1 × 1)
    with `width` channels between them, normal random weights and offsets and leaky ReLUs, and is blended with its
    input by a weight drawn from U(0, 1). A tissue can come out brighter or darker than its neighbours, as on another
    sequence. The result is brought back to the input brain's mean and standard deviation (nonzero pixels; the
    background stays black) and copied to every channel; the other images pass unchanged."""
    shape = tf.shape(images)
    batch = shape[0]
    gray = tf.reduce_mean(images, axis=-1, keepdims=True)
    brain = tf.cast(gray > 0, tf.float32)

    def brain_moments(values: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = tf.maximum(tf.reduce_sum(brain, axis=[1, 2, 3], keepdims=True), 1.0)
        mean = tf.reduce_sum(values * brain, axis=[1, 2, 3], keepdims=True) / pixels
        spread = tf.reduce_sum(tf.square(values - mean) * brain, axis=[1, 2, 3], keepdims=True) / pixels
        return mean, tf.sqrt(spread) + 1e-3

    mean, std = brain_moments(gray)
    standard = (gray - mean) / std  # the network sees the brain at unit scale, the background below it
    keys = tf.random.experimental.stateless_split(seed, 3 * layers + 2)
    centre_only = np.zeros((1, 3, 3, 1, 1), np.float32)
    centre_only[0, 1, 1] = 1.0
    out, channels = standard, 1
    for layer in range(layers):
        last = layer == layers - 1
        width_out = 1 if last else width
        weights = tf.random.stateless_normal([batch, 3, 3, channels, width_out], keys[3 * layer])
        one_by_one = tf.random.stateless_uniform([batch, 1, 1, 1, 1], keys[3 * layer + 1]) < 0.5
        weights = tf.where(one_by_one, weights * centre_only, weights)
        out = tf.reduce_sum(convolve_each_image(out, weights), axis=3)  # (B, H, W, width_out)
        out += tf.random.stateless_normal([batch, 1, 1, width_out], keys[3 * layer + 2])
        if not last:
            out = tf.nn.leaky_relu(out, 0.01)
        channels = width_out
    blend = tf.random.stateless_uniform([batch, 1, 1, 1], keys[-2])
    mixed = blend * out + (1.0 - blend) * standard
    mixed_mean, mixed_std = brain_moments(mixed)
    remapped = brain * tf.clip_by_value((mixed - mixed_mean) / mixed_std * std + mean, 0.0, 255.0)
    chosen = tf.random.stateless_uniform([batch, 1, 1, 1], keys[-1]) < share
    out = tf.where(chosen, tf.broadcast_to(remapped, shape), images)
    out.set_shape(images.shape)
    return out


def histogram_shift(images: tf.Tensor, seed: tf.Tensor, points: int) -> tf.Tensor:
    """Each image's [0, 255] intensities mapped through its own random increasing piecewise-linear curve with
    `points` control points at even gray levels (MONAI's RandHistogramShift). The ends stay fixed, so black
    background stays black; from left to right each inner point is drawn uniformly between its new left neighbour
    and its old right one, so the curve never decreases."""
    shape = tf.shape(images)
    batch = shape[0]
    even = tf.linspace(0.0, 1.0, points)
    draws = tf.random.stateless_uniform([batch, points], seed)
    curve = [tf.zeros([batch])]
    for index in range(1, points - 1):
        curve.append(curve[-1] + draws[:, index] * (even[index + 1] - curve[-1]))
    curve = tf.stack(curve + [tf.ones([batch])], axis=1)  # (B, points)
    position = tf.reshape(images, [batch, -1]) / 255.0 * (points - 1)
    segment = tf.clip_by_value(tf.floor(position), 0.0, points - 2.0)
    left = tf.cast(segment, tf.int32)
    low, high = tf.gather(curve, left, batch_dims=1), tf.gather(curve, left + 1, batch_dims=1)
    out = tf.reshape(255.0 * (low + (position - segment) * (high - low)), shape)
    out.set_shape(images.shape)
    return out


def bias_field(batch: tf.Tensor, height: int, width: int, seed: tf.Tensor, largest: float,
               degree: int = 3) -> tf.Tensor:
    """One smooth field (B, H, W) per image: exp of a sum of Legendre products P_i(y) P_j(x), i + j <= `degree`,
    over [-1, 1]², each coefficient uniform in [-largest, largest] (MONAI's RandBiasField, whose coefficients are
    all positive; here a field brightens or darkens either side)."""
    along_y = np.polynomial.legendre.legvander(np.linspace(-1, 1, height), degree)  # (H, degree + 1)
    along_x = np.polynomial.legendre.legvander(np.linspace(-1, 1, width), degree)
    basis = np.stack([np.outer(along_y[:, i], along_x[:, j])
                      for i in range(degree + 1) for j in range(degree + 1 - i)]).astype(np.float32)
    coefficients = tf.random.stateless_uniform([batch, len(basis)], seed, -largest, largest)
    return tf.exp(tf.einsum("bt,thw->bhw", coefficients, tf.constant(basis)))


def gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Each image (B, H, W, C) blurred with its own Gaussian of standard deviation `sigma` (B,) pixels,
    truncated at `radius`; zero padding, as the black background around a brain. Sigma 0 leaves it as is."""
    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(offsets[None, :] / tf.maximum(sigma[:, None], 1e-3)))
    weights /= tf.reduce_sum(weights, axis=1, keepdims=True)  # (B, 2r+1)
    shape = tf.shape(images)
    kernel = tf.broadcast_to(weights[:, None, :, None, None], [shape[0], 1, 2 * radius + 1, images.shape[-1], 1])
    across = convolve_each_image(images, kernel)[..., 0]
    out = convolve_each_image(across, tf.transpose(kernel, [0, 2, 1, 3, 4]))[..., 0]
    out.set_shape(images.shape)
    return out


def convolve_each_image(images: tf.Tensor, kernels: tf.Tensor) -> tf.Tensor:
    """Each image (B, H, W, C) convolved with kernels of its own (B, kh, kw, C, M), zero padding: (B, H, W, C, M),
    channel c by its M kernels. Every (image, channel) pair becomes a channel of one image, so one depthwise
    convolution serves the whole batch."""
    shape = tf.shape(images)
    _, rows, columns, channels, multiplier = kernels.shape
    stacked = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, shape[1], shape[2], -1])
    flat = tf.reshape(tf.transpose(kernels, [1, 2, 0, 3, 4]), [rows, columns, -1, multiplier])
    convolved = tf.nn.depthwise_conv2d(stacked, flat, [1, 1, 1, 1], "SAME")
    return tf.transpose(tf.reshape(convolved, [shape[1], shape[2], shape[0], channels, multiplier]), [2, 0, 1, 3, 4])


def mixup(images: tf.Tensor, targets: tf.Tensor, seed: tf.Tensor, alpha: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup (Zhang et al. 2018): each image and its one-hot target blended with those at the mirrored place
    of the batch (a shuffled batch, so a random partner), with a weight drawn per image from Beta(alpha, alpha)."""
    count = tf.shape(images)[:1]
    first, second = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    draw_a, draw_b = tf.random.stateless_gamma(count, first, alpha), tf.random.stateless_gamma(count, second, alpha)
    weight = tf.math.divide_no_nan(draw_a, draw_a + draw_b)  # Beta(alpha, alpha) as a ratio of Gammas
    mixed_images = _blend(images, tf.reverse(images, [0]), weight[:, None, None, None])
    return mixed_images, _blend(targets, tf.reverse(targets, [0]), weight[:, None])


def _blend(own: tf.Tensor, partner: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
    return weight * own + (1.0 - weight) * partner


def offline_copies(images: np.ndarray, labels: np.ndarray, files: list[str], cfg: AugmentationConfig,
                   classes: list[str], seed: int, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """`cfg.copies` augmented copies of every image, drawn once with `seed`; optionally saved as PNG."""
    copies = []
    for copy in range(cfg.copies):
        for start in tqdm(range(0, len(images), batch_size), desc=f"augmenting copy {copy + 1}/{cfg.copies}",
                          leave=False):
            batch_seed = tf.constant([seed, copy * len(images) + start], tf.int64)
            out = augment_batch(images[start:start + batch_size], batch_seed, cfg)
            copies.append(np.round(out.numpy()).astype(np.uint8))
    augmented = np.concatenate(copies) if copies else images[:0]
    augmented_labels = np.tile(labels, cfg.copies)
    if cfg.save_dir:
        _save_pngs(Path(cfg.save_dir).expanduser(), augmented, augmented_labels, files * cfg.copies, classes,
                   len(images))
    return augmented, augmented_labels


def _save_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, files: list[str], classes: list[str],
               per_copy: int) -> None:
    for index, (image, label, source) in enumerate(zip(images, labels, files, strict=True)):
        target = folder / classes[label] / f"{Path(source).stem}_aug{index // per_copy + 1}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target)


def epoch_orders(count: int, batch_size: int, seed: int, epochs: range) -> tf.data.Dataset:
    """(epoch, step, indices) for every batch of every epoch in `epochs`, one epoch after the other.

    Each epoch's order is drawn from (seed, epoch) alone, not from a stream that runs through the
    epochs before it, so a run resumed at epoch k sees the same batches as an uninterrupted one.
    """
    base = tf.constant([seed, 0], tf.int64)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(
            tf.range(count, dtype=tf.int64), tf.random.experimental.stateless_fold_in(base, epoch))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size).enumerate()
        return batches.map(lambda step, indices: (epoch, step, indices))

    return tf.data.Dataset.range(epochs.start, epochs.stop).flat_map(one_epoch)


def _fast(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    # AUTOTUNE values become "one call per core"; the tuner thread itself stalled some epochs' first batch by
    # 4-5 s on a 2-core CPU (scripts/bench.py, figure 3)
    options.autotune.enabled = False
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def training_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int,
                     online: AugmentationConfig | None, epochs: range = range(1)) -> tf.data.Dataset:
    """Shuffled batches of (float32 images, labels) for each epoch in `epochs` (see epoch_orders), with
    online transforms drawn from (seed, epoch, step). Fit it with steps_per_epoch = ceil(len(images) / batch_size).
    With mixup, `labels` are one-hot rows (optim.targets), blended with their images.
    """
    images_t, labels_t = tf.convert_to_tensor(images), tf.convert_to_tensor(labels)
    base = tf.constant([seed, 1], tf.int64)

    def load(epoch: tf.Tensor, step: tf.Tensor, indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        batch = tf.gather(images_t, indices)
        if online is None:
            return tf.cast(batch, tf.float32), tf.gather(labels_t, indices)
        fold_in = tf.random.experimental.stateless_fold_in
        batch_seed = fold_in(fold_in(base, epoch), step)
        augmented, targets = augment_batch(batch, batch_seed, online), tf.gather(labels_t, indices)
        if online.mixup:  # its own seed, so turning it on leaves every other draw as it was
            return mixup(augmented, targets, fold_in(batch_seed, 3), online.mixup)
        return augmented, targets

    return _fast(epoch_orders(len(images), batch_size, seed, epochs).map(load, num_parallel_calls=tf.data.AUTOTUNE))
