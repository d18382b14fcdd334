"""Augmentation semantics: the study's parameters, seeded, outside the model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from braintumor.core.config import AugmentationConfig
from braintumor.data.augment import augment_batch, offline_copies, training_dataset
from braintumor.data.synth import make_image

STILL = AugmentationConfig(width_shift=0.0, height_shift=0.0, shear=0.0, horizontal_flip=False, brightness=[1, 1])


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(0)
    gray = np.stack([make_image(label, rng, 48) for label in ("glioma_tumor", "meningioma_tumor") * 4])
    return np.repeat(gray[..., None], 3, axis=-1)


def _run(images, cfg, seed=(1, 2)):
    return augment_batch(images, tf.constant(seed, tf.int64), cfg).numpy()


def test_identity_settings_leave_images_unchanged(images):
    np.testing.assert_allclose(_run(images, STILL), images, atol=1e-3)


def test_brightness_is_multiplicative_and_clipped(images):
    doubled = _run(images, dataclasses.replace(STILL, brightness=[2.0, 2.0]))
    np.testing.assert_allclose(doubled, np.minimum(2.0 * images, 255), atol=1e-3)
    factors = _run(images, dataclasses.replace(STILL, brightness=[0.8, 2.0]))
    dark = images < 100  # unclipped pixels: the ratio is one factor per image, inside the range
    ratios = [np.median(f[d & (i > 20)] / i[d & (i > 20)]) for f, i, d in zip(factors, images, dark, strict=False)]
    assert 0.8 <= min(ratios) and max(ratios) <= 2.0 and np.ptp(ratios) > 0.05


def test_flip_mirrors_exactly(images):
    flipped = _run(images, dataclasses.replace(STILL, horizontal_flip=True))
    mirrored = [np.allclose(f, i[:, ::-1], atol=1e-3) for f, i in zip(flipped, images, strict=False)]
    unchanged = [np.allclose(f, i, atol=1e-3) for f, i in zip(flipped, images, strict=False)]
    assert all(m or u for m, u in zip(mirrored, unchanged, strict=False)) and any(mirrored) and any(unchanged)


def test_shift_fills_with_nearest_edge_and_is_seeded(images):
    bright = np.full_like(images, 200)
    shifted = _run(bright, dataclasses.replace(STILL, width_shift=0.2, height_shift=0.2))
    np.testing.assert_allclose(shifted, 200, atol=1e-3)  # nearest fill: no black border
    constant = _run(bright, dataclasses.replace(STILL, width_shift=0.2, height_shift=0.2, fill_mode="constant"))
    assert (constant < 1).any()
    cfg = AugmentationConfig()
    np.testing.assert_array_equal(_run(images, cfg, (3, 4)), _run(images, cfg, (3, 4)))
    assert not np.allclose(_run(images, cfg, (3, 4)), _run(images, cfg, (3, 5)))


def test_offline_copies_double_the_set_and_save_pngs(images, tmp_path):
    labels = np.array([0, 1] * 4)
    files = [f"Training/c{i % 2}/img{i}.jpg" for i in range(len(images))]
    cfg = AugmentationConfig(enabled=True, save_dir=str(tmp_path / "aug"))
    copies, copy_labels = offline_copies(images, labels, files, cfg, ["c0", "c1"], seed=0)
    assert copies.shape == images.shape and copies.dtype == np.uint8
    np.testing.assert_array_equal(copy_labels, labels)
    assert not np.array_equal(copies, images)
    again, _ = offline_copies(images, labels, files, dataclasses.replace(cfg, save_dir=None), ["c0", "c1"], seed=0)
    np.testing.assert_array_equal(copies, again)
    saved = sorted(p.relative_to(tmp_path / "aug").as_posix() for p in (tmp_path / "aug").rglob("*.png"))
    assert len(saved) == 8 and saved[0] == "c0/img0_aug1.png"


def test_online_pipeline_draws_new_transforms_each_epoch(images):
    labels = np.arange(len(images))
    dataset = training_dataset(images, labels, batch_size=len(images), seed=0, online=AugmentationConfig(),
                               epochs=range(2))
    (x1, y1), (x2, y2) = list(dataset)
    order1, order2 = np.argsort(y1.numpy()), np.argsort(y2.numpy())
    assert not np.allclose(x1.numpy()[order1], x2.numpy()[order2])
    # epoch 1 alone (as a run resumed after epoch 1 draws it) is the same batch
    (x2_alone, y2_alone), = list(training_dataset(images, labels, batch_size=len(images), seed=0,
                                                  online=AugmentationConfig(), epochs=range(1, 2)))
    np.testing.assert_array_equal(y2_alone.numpy(), y2.numpy())
    np.testing.assert_array_equal(x2_alone.numpy(), x2.numpy())
    plain = training_dataset(images, labels, batch_size=len(images), seed=0, online=None)
    (x3, y3), = list(plain)
    np.testing.assert_array_equal(x3.numpy()[np.argsort(y3.numpy())], images)
