"""The from-scratch recipe's keys: schedules with warm-up, weight decay, label smoothing, MRI augmentation."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from braintumor.cli import main
from braintumor.core.config import AugmentationConfig, Config, TrainConfig, load_config, save_config
from braintumor.data.augment import (
    augment_batch,
    bias_field,
    histogram_shift,
    mixup,
    random_network_contrast,
    training_dataset,
)
from braintumor.engine import optim

STILL = AugmentationConfig(width_shift=0.0, height_shift=0.0, shear=0.0, horizontal_flip=False, brightness=[1, 1])


def _history(write_config, tmp_path, **train) -> list[dict]:
    assert main(["train", str(write_config(train={"epochs": 4, **train}, ))]) == 0
    (run,) = (tmp_path / "outputs").iterdir()
    with (run / "history.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(schedule="cosine", learning_rate=0.1, epochs=10, warmup_epochs=2)
    rate = optim.make_optimizer(cfg, steps_per_epoch=5).learning_rate  # evaluated at iteration 0
    schedule = optim.learning_rate(cfg, steps_per_epoch=5)
    at = [float(schedule(step)) for step in (0, 5, 10, 30, 50)]
    assert float(rate) == pytest.approx(0.0, abs=1e-9)
    assert at[0] < at[1] < at[2] == pytest.approx(0.1) and at[3] < at[2] and at[4] == pytest.approx(0.0, abs=1e-6)


def test_warmup_ramps_the_constant_rate_per_epoch(write_config, tmp_path):
    rows = _history(write_config, tmp_path, learning_rate=0.004, warmup_epochs=3)
    rates = [float(row["learning_rate"]) for row in rows]
    np.testing.assert_allclose(rates, [0.001, 0.002, 0.003, 0.004], rtol=1e-5)


def test_plateau_lowers_the_rate_when_validation_loss_stalls():
    # all-zero inputs and a tiny rate: the validation loss cannot move by min_delta, so it stalls every epoch
    cfg = TrainConfig(learning_rate=1e-5, schedule="plateau", plateau_patience=1, plateau_factor=0.1)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4, activation="softmax")])
    model.compile(optimizer=optim.make_optimizer(cfg, steps_per_epoch=1), loss=optim.loss(Config(train=cfg)))
    x, y = np.zeros((8, 2), np.float32), np.arange(8) % 4
    history = model.fit(x, y, validation_data=(x, y), epochs=4, verbose=0, callbacks=optim.schedule_callbacks(cfg))
    np.testing.assert_allclose(history.history["learning_rate"], [1e-5, 1e-5, 1e-6, 1e-7], rtol=1e-4)


def test_weight_decay_uses_decoupled_decay():
    adam = optim.make_optimizer(TrainConfig(weight_decay=1e-2), steps_per_epoch=1)
    assert isinstance(adam, keras.optimizers.AdamW) and adam.weight_decay == pytest.approx(1e-2)
    assert optim.make_optimizer(TrainConfig(), steps_per_epoch=1).weight_decay is None
    # decay alone (zero gradient) shrinks a weight by lr * wd per step
    sgd = optim.make_optimizer(TrainConfig(optimizer="sgd", learning_rate=0.1, weight_decay=0.5), steps_per_epoch=1)
    weight = keras.Variable(np.ones(3, np.float32))
    sgd.apply_gradients([(np.zeros(3, np.float32), weight)])
    np.testing.assert_allclose(weight.numpy(), 1 - 0.1 * 0.5, rtol=1e-6)


def test_label_smoothing_spreads_the_targets():
    cfg = Config(train=TrainConfig(label_smoothing=0.2))
    targets = optim.targets(cfg, np.array([0, 2]), num_classes=4)
    probs = np.full((2, 4), 0.25, np.float32)
    expected = -np.sum(((1 - 0.2) * targets + 0.2 / 4) * np.log(probs), axis=1).mean()
    assert float(optim.loss(cfg)(targets, probs)) == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(optim.targets(Config(), np.array([0, 2]), 4), [0, 2])
    mixed = Config(augmentation=AugmentationConfig(enabled=True, mode="online", mixup=0.2))
    np.testing.assert_array_equal(optim.targets(mixed, np.array([0, 2]), 4), np.eye(4)[[0, 2]])  # blended later


# ---------------------------------------------------------------- augmentation extras

def _blob_image(y: int, x: int, size: int = 48) -> np.ndarray:
    image = np.zeros((1, size, size, 3), np.uint8)
    image[0, y - 2:y + 3, x - 2:x + 3] = 255
    return image


def _centroid(image: np.ndarray) -> np.ndarray:
    weight = image[..., 0]
    ys, xs = np.indices(weight.shape)
    return np.array([(ys * weight).sum(), (xs * weight).sum()]) / weight.sum()


def _run(images, cfg, seed=(1, 2)):
    return augment_batch(images, tf.constant(seed, tf.int64), cfg).numpy()


def test_zoom_moves_points_away_from_the_centre_by_the_factor():
    image = _blob_image(11, 23)  # 12.5 px above the centre (23.5, 23.5)
    zoomed = _run(image, dataclasses.replace(STILL, zoom=[1.5, 1.5]))
    np.testing.assert_allclose(_centroid(zoomed[0]) - 23.5, 1.5 * (_centroid(image[0]) - 23.5), atol=0.3)


def test_rotation_keeps_the_distance_from_the_centre_and_turns_the_point():
    image = _blob_image(11, 23)
    before = _centroid(image[0]) - 23.5
    angles = []
    for seed in range(6):
        after = _centroid(_run(image, dataclasses.replace(STILL, rotation=40), seed=(seed, 0))[0]) - 23.5
        assert np.linalg.norm(after) == pytest.approx(np.linalg.norm(before), abs=0.4)
        angles.append(np.degrees(np.arctan2(after[0], after[1]) - np.arctan2(before[0], before[1])))
    assert max(abs(a) for a in angles) <= 40.5 and np.ptp(angles) > 10


def test_gamma_and_contrast_follow_their_formulas():
    rng = np.random.default_rng(0)
    image = rng.integers(20, 230, (2, 16, 16, 3)).astype(np.uint8)
    gamma = _run(image, dataclasses.replace(STILL, gamma=[2.0, 2.0]))
    np.testing.assert_allclose(gamma, 255 * (image / 255.0) ** 2, atol=1e-2)
    contrast = _run(image, dataclasses.replace(STILL, contrast=[0.5, 0.5]))
    mean = image.reshape(2, -1).mean(1)[:, None, None, None]
    np.testing.assert_allclose(contrast, mean + 0.5 * (image - mean), atol=1e-2)


def test_blur_is_a_gaussian_of_the_given_sigma_drawn_per_image():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 24, 24, 3)).astype(np.uint8)
    fixed = _run(image, dataclasses.replace(STILL, blur=[1.5, 1.5]))
    reference = gaussian_filter(image.astype(np.float64), sigma=(0, 1.5, 1.5, 0), mode="constant", truncate=3.0)
    np.testing.assert_allclose(fixed, reference, atol=1e-2)
    noise = np.repeat(image[:1], 8, axis=0)
    drawn = _run(noise, dataclasses.replace(STILL, blur=[0.0, 3.0]), seed=(5, 6))
    detail = [d[6:-6, 6:-6].std() for d in drawn]  # noise left after blurring falls as sigma grows
    assert max(detail) > 2 * min(detail)  # one sigma per image, not one per batch
    np.testing.assert_array_equal(_run(image, dataclasses.replace(STILL, blur=[0.0, 0.0])),
                                  _run(image, STILL))


def test_histogram_shift_remaps_gray_levels_by_one_increasing_curve_per_image():
    ramp = np.tile(np.arange(256, dtype=np.float32), (6, 1))[:, None, :, None]  # every gray level, 6 images
    out = histogram_shift(tf.constant(ramp), tf.constant([7, 8], tf.int64), points=6).numpy()[:, 0, :, 0]
    np.testing.assert_allclose(out[:, [0, -1]], [[0, 255]] * 6, atol=1e-3)  # black stays black, white white
    assert (np.diff(out, axis=1) >= -1e-3).all()  # order of gray levels kept
    assert np.abs(out - ramp[:, 0, :, 0]).max() > 10  # but their spacing moved
    assert np.ptp(out[:, 128]) > 5  # one curve per image, not one per batch
    knots = np.arange(0, 256, 51)  # the control points: 255 * k / 5, whole gray levels
    for row in out:  # linear between them
        np.testing.assert_allclose(row, np.interp(np.arange(256), knots, row[knots]), atol=1e-2)
    image = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    shifted = _run(image, dataclasses.replace(STILL, histogram_shift=5))
    assert not np.allclose(shifted, image)
    np.testing.assert_array_equal(_run(image, STILL), image)  # 0 is off


def test_bias_field_multiplies_each_image_by_its_own_smooth_field():
    image = np.full((4, 32, 32, 1), 50, np.uint8)
    image[:, :4] = 0  # background
    out = _run(image, dataclasses.replace(STILL, bias_field=0.2))
    np.testing.assert_array_equal(out[:, :4], 0)  # black stays black
    log_field = np.log(out[:, 4:, :, 0] / 50.0)
    assert log_field.min() < -0.05 and log_field.max() > 0.05
    # smooth: a polynomial of degree 3 in y and in x over the image, nothing finer
    y, x = np.meshgrid(np.linspace(-1, 1, 32)[4:], np.linspace(-1, 1, 32), indexing="ij")
    basis = np.polynomial.legendre.legvander2d(y.ravel(), x.ravel(), [3, 3])
    for one in log_field:
        fit = basis @ np.linalg.lstsq(basis, one.ravel(), rcond=None)[0]
        np.testing.assert_allclose(fit, one.ravel(), atol=1e-4)
    assert np.ptp(log_field[:, 10, 16]) > 0.02  # one field per image, not one per batch
    fields = bias_field(tf.constant(400), 16, 16, tf.constant([1, 2], tf.int64), 0.2).numpy()
    assert 0.7 < np.percentile(fields, 5) < 0.8 and 1.25 < np.percentile(fields, 95) < 1.45  # as the key documents
    np.testing.assert_allclose(np.log(fields).mean(), 0, atol=0.02)  # as often darker as brighter
    np.testing.assert_array_equal(_run(image, dataclasses.replace(STILL, bias_field=0.0)), image)  # 0 is off


def test_noise_is_gaussian_gray_inside_the_brain_with_one_level_per_image():
    image = np.full((8, 32, 32, 3), 120, np.uint8)
    image[:, :, :8] = 0  # background
    out = _run(image, dataclasses.replace(STILL, noise=10.0))
    np.testing.assert_array_equal(out[:, :, :8], 0)  # black stays black
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # gray stays gray
    residual = out[:, :, 8:, 0] - 120.0
    np.testing.assert_allclose(residual.mean(), 0, atol=0.3)
    levels = residual.reshape(8, -1).std(axis=1)
    assert levels.max() < 10.5 and levels.max() > 2 * levels.min()  # one sigma per image, at most the key's
    np.testing.assert_array_equal(_run(image, dataclasses.replace(STILL, noise=0.0)), image)  # 0 is off


def test_invert_reverses_the_brain_of_a_share_of_images_and_keeps_the_background():
    image = np.zeros((200, 8, 8, 1), np.uint8)
    image[:, 2:6, 2:6] = 40  # the brain
    image[:, 3, 3] = 200  # a bright spot in it
    out = _run(image, dataclasses.replace(STILL, invert=0.3))
    np.testing.assert_array_equal(out[:, :2], 0)  # black stays black
    inverted = out[:, 2, 2, 0] == 215
    np.testing.assert_array_equal(out[inverted, 3, 3, 0], 55)  # the bright spot turns dark
    np.testing.assert_array_equal(out[~inverted], image[~inverted])  # the others untouched
    assert 0.2 < inverted.mean() < 0.4  # the key's share of images
    np.testing.assert_array_equal(_run(image, dataclasses.replace(STILL, invert=0.0)), image)  # 0 is off


def test_gin_remaps_a_share_of_brains_by_random_networks_keeping_their_moments_and_background():
    rng = np.random.default_rng(2)
    image = np.zeros((300, 24, 24, 3), np.uint8)
    image[:, 4:20, 4:20] = rng.integers(40, 200, (300, 16, 16, 1))  # a gray brain on black
    out = _run(image, dataclasses.replace(STILL, gin=0.4))
    np.testing.assert_array_equal(out[:, :4], 0)  # black stays black
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # gray stays gray
    changed = np.abs(out - image).reshape(300, -1).max(axis=1) > 1e-3
    np.testing.assert_array_equal(out[~changed], image[~changed])  # the others untouched
    assert 0.3 < changed.mean() < 0.5  # the key's share of images
    brain, remapped = image[changed, 4:20, 4:20, 0].reshape(-1, 256), out[changed, 4:20, 4:20, 0].reshape(-1, 256)
    # the brain's mean and spread as before (clipping to 0-255 moves them a little)
    np.testing.assert_allclose(np.median(remapped.mean(axis=1) / brain.mean(axis=1)), 1, atol=0.05)
    np.testing.assert_allclose(np.median(remapped.std(axis=1) / brain.std(axis=1)), 1, atol=0.1)
    order = [np.corrcoef(a, b)[0, 1] for a, b in zip(brain, remapped, strict=True)]
    assert min(order) < -0.2 and max(order) > 0.9  # some reversed, as between sequences; some nearly kept
    # not a gray-level curve: one gray level comes out as several, by its neighbourhood
    spread_per_level = [np.ptp(one[pixels == level]) for pixels, one in zip(brain, remapped, strict=True)
                        for level in np.unique(pixels) if (pixels == level).sum() > 2]
    assert max(spread_per_level) > 20
    again = random_network_contrast(tf.constant(image, tf.float32), tf.constant([5, 6], tf.int64), 0.4).numpy()
    np.testing.assert_array_equal(again, random_network_contrast(tf.constant(image, tf.float32),
                                                                 tf.constant([5, 6], tf.int64), 0.4).numpy())
    np.testing.assert_array_equal(_run(image, dataclasses.replace(STILL, gin=0.0)), image)  # 0 is off


def test_mixup_blends_each_image_and_its_target_by_one_beta_weight():
    from scipy import stats

    count = 4000  # the weights of many images at once: their law is checked against Beta(0.2, 0.2)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (count, 4, 4, 1)), tf.float32)
    classes = rng.integers(0, 4, count)
    targets = tf.constant(np.eye(4, dtype=np.float32)[classes])
    mixed, soft = (x.numpy() for x in mixup(images, targets, tf.constant([3, 4], tf.int64), 0.2))
    partner = slice(None, None, -1)  # the mirrored place of the batch
    own, other = images.numpy(), images.numpy()[partner]
    onehot = targets.numpy()
    weight = ((mixed - other).reshape(count, -1) / (own - other).reshape(count, -1)).mean(axis=1)
    np.testing.assert_allclose(mixed, weight[:, None, None, None] * own + (1 - weight[:, None, None, None]) * other,
                               atol=1e-2)
    np.testing.assert_allclose(soft, weight[:, None] * onehot + (1 - weight[:, None]) * onehot[partner],
                               atol=1e-4)  # the target's blend is the image's
    np.testing.assert_allclose(soft.sum(axis=1), 1, atol=1e-5)
    assert stats.kstest(weight, stats.beta(0.2, 0.2).cdf).pvalue > 0.01
    again = mixup(images, targets, tf.constant([3, 4], tf.int64), 0.2)[0].numpy()
    np.testing.assert_array_equal(again, mixed)  # seeded


def test_mixup_in_the_pipeline_blends_the_batches_it_would_have_drawn_without_it():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (12, 8, 8, 3)).astype(np.uint8)
    onehot = np.eye(4, dtype=np.float32)[np.arange(12) % 4]
    plain = dataclasses.replace(STILL, enabled=True, mode="online", rotation=20)
    batches = {alpha: list(training_dataset(images, onehot, 6, 0, dataclasses.replace(plain, mixup=alpha),
                                            epochs=range(2)).as_numpy_iterator()) for alpha in (0.0, 0.4)}
    for (image, target), (mixed, soft) in zip(batches[0.0], batches[0.4], strict=True):
        np.testing.assert_array_equal(target.max(axis=1), 1)  # unmixed: one-hot
        assert (soft.max(axis=1) < 1 - 1e-3).any()
        # where the partner's class differs, the share of the image's own class is its weight
        differs = target.argmax(axis=1) != target[::-1].argmax(axis=1)
        w = (soft * target).sum(axis=1)[differs][:, None, None, None]
        np.testing.assert_allclose(mixed[differs], w * image[differs] + (1 - w) * image[::-1][differs], atol=1e-3)


def test_a_run_with_mixup_trains_on_soft_targets(write_config, tmp_path):
    cfg = write_config(augmentation={"enabled": True, "mode": "online", "mixup": 0.2}, train={"epochs": 2})
    assert main(["train", str(cfg)]) == 0
    (run,) = (tmp_path / "outputs").iterdir()
    model = keras.models.load_model(run / "model.keras")
    assert isinstance(model.loss, keras.losses.CategoricalCrossentropy)  # one-hot targets, blended in tf.data
    assert load_config(run / "config.yaml").augmentation.mixup == 0.2
    assert len(list(csv.DictReader((run / "history.csv").open()))) == 2


@pytest.mark.parametrize(("key", "value"), [("zoom", [0, 1]), ("zoom", [1.2, 1.1]), ("rotation", 200),
                                            ("gamma", [1]), ("contrast", [-1, 1]), ("blur", [2, 1]),
                                            ("blur", [0, 6]), ("histogram_shift", 2),
                                            ("histogram_shift", 40), ("bias_field", -0.1), ("bias_field", 2),
                                            ("noise", -1), ("noise", 60), ("invert", -0.1), ("invert", 1.5),
                                            ("gin", -0.1), ("gin", 2),
                                            ("mixup", 1.5), ("mixup", 0.2)])
def test_bad_augmentation_values_name_the_key(write_config, capsys, key, value):
    # mixup 0.2 is refused in the default offline mode: fixed copies cannot be blended batch by batch
    assert main(["validate", str(write_config(augmentation={"enabled": True, key: value}))]) == 2
    assert f"augmentation.{key}" in capsys.readouterr().err


def test_mixup_with_augmentation_off_is_refused_not_ignored(write_config, capsys):
    assert main(["validate", str(write_config(augmentation={"mode": "online", "mixup": 0.2}))]) == 2
    assert "augmentation.mixup = 0.2 is not allowed; use 0 unless augmentation is enabled" in capsys.readouterr().err


@pytest.mark.parametrize(("key", "value"), [("schedule", "step"), ("warmup_epochs", 5), ("weight_decay", -1),
                                            ("label_smoothing", 1.0), ("plateau_factor", 1.5)])
def test_bad_recipe_values_name_the_key(write_config, capsys, key, value):
    assert main(["validate", str(write_config(train={"epochs": 5, key: value}))]) == 2
    assert f"train.{key}" in capsys.readouterr().err


# ---------------------------------------------------------------- from-scratch models

def test_simple_cnn_width_depth_and_convs_shape_the_network():
    from braintumor.core.config import ModelConfig
    from braintumor.models.build import build_model

    model = build_model(ModelConfig(backbone="simple_cnn", weights="none", mode="full", width=8, depth=4,
                                    convs_per_block=2, bn_momentum=0.99), 32, 4)
    backbone = model.get_layer("simple_cnn")
    convs = [layer for layer in backbone.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 8, 16, 16, 32, 32, 64, 64]
    assert backbone.output.shape[1:] == (2, 2, 64)  # four poolings of 32 px
    assert {layer.momentum for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.99}


def test_grayscale_model_takes_rgb_and_sees_one_channel(write_config, tmp_path):
    assert main(["train", str(write_config(data={"channels": 1}, model={"width": 8}))]) == 0
    (run,) = (tmp_path / "outputs").iterdir()
    model = keras.models.load_model(run / "model.keras")
    assert model.input_shape == (None, 32, 32, 3)
    assert model.get_layer("simple_cnn").input_shape == (None, 32, 32, 1)
    rgb = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype(np.float32)
    gray = np.repeat(rgb.mean(-1, keepdims=True), 3, axis=-1)
    np.testing.assert_allclose(model.predict(rgb, verbose=0), model.predict(gray, verbose=0), atol=1e-5)


def test_group_norm_model_trains_explains_itself_and_is_refused_by_adapt(write_config, synth_root, tmp_path,
                                                                         capsys):
    assert main(["train", str(write_config(model={"width": 8, "norm": "group"}))]) == 0
    (run,) = (tmp_path / "outputs").iterdir()
    backbone = keras.models.load_model(run / "model.keras").get_layer("simple_cnn")
    norms = {type(layer) for layer in backbone.layers} & {keras.layers.GroupNormalization,
                                                          keras.layers.BatchNormalization}
    assert norms == {keras.layers.GroupNormalization}
    image = next((synth_root / "Testing").rglob("*.jpg"))
    assert main(["predict", "--run", str(run), str(image), "--gradcam", str(tmp_path / "cam")]) == 0
    assert len(list((tmp_path / "cam").iterdir())) == 1
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0  # checked in onnxruntime against model.keras
    assert " 0 class change(s)" in capsys.readouterr().out
    assert main(["adapt", "--run", str(run), "--data", str(synth_root / "Testing")]) == 2
    assert "has no BatchNormalization layer" in capsys.readouterr().err


def test_ibn_model_instance_normalises_half_of_the_early_blocks_and_adapts_only_batchnorm(write_config, synth_root,
                                                                                         tmp_path, capsys):
    """model.norm ibn: IBN-a in the first conv of blocks 1 .. depth-2; precise BN, Grad-CAM, ONNX and adapt work."""
    config = write_config(model={"width": 8, "depth": 4, "convs_per_block": 2, "norm": "ibn"},
                          train={"precise_bn": True, "epochs": 1})
    assert main(["train", str(config)]) == 0
    (run,) = (tmp_path / "outputs").iterdir()
    backbone = keras.models.load_model(run / "model.keras").get_layer("simple_cnn")
    instance = [layer for layer in backbone.layers if isinstance(layer, keras.layers.GroupNormalization)]
    assert [layer.name for layer in instance] == ["conv1_1_in", "conv2_1_in"]
    assert [layer.groups for layer in instance] == [4, 8]  # one group per channel: instance norm
    assert backbone.get_layer("conv2_1_ibn").output.shape[-1] == 16 and "conv3_1_ibn" not in {
        layer.name for layer in backbone.layers}
    image = next((synth_root / "Testing").rglob("*.jpg"))
    assert main(["predict", "--run", str(run), str(image), "--gradcam", str(tmp_path / "cam")]) == 0
    assert len(list((tmp_path / "cam").iterdir())) == 1
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    assert " 0 class change(s)" in capsys.readouterr().out
    new = tmp_path / "adapted"
    assert main(["adapt", "--run", str(run), "--data", str(synth_root / "Testing"), "--out", str(new)]) == 0
    adapted = keras.models.load_model(new / "model.keras").get_layer("simple_cnn")
    for layer in backbone.layers:  # the instance norms' weights, like every weight but BatchNorm's statistics, stay
        for old, fresh in zip(layer.weights, adapted.get_layer(layer.name).weights, strict=True):
            moving = old.path.endswith(("moving_mean", "moving_variance"))
            assert np.array_equal(np.asarray(old), np.asarray(fresh)) != moving, old.path


def test_mixstyle_mixes_each_images_feature_style_with_another_and_keeps_its_content():
    from braintumor.models.build import MixStyle

    rng = np.random.default_rng(0)
    styles = rng.uniform(0.5, 3.0, (8, 1, 1, 4)), rng.uniform(-2, 2, (8, 1, 1, 4))
    features = (rng.normal(size=(8, 6, 6, 4)) * styles[0] + styles[1]).astype(np.float32)

    def normalised(x):
        x = np.asarray(x, np.float64)
        return (x - x.mean(axis=(1, 2), keepdims=True)) / x.std(axis=(1, 2), keepdims=True)

    always = MixStyle(1.0, alpha=1.0, seed=1)  # mixing weights uniform in [0, 1]
    mixed = np.asarray(always(features, training=True))
    np.testing.assert_allclose(normalised(mixed), normalised(features), atol=1e-3)  # the content is kept
    changed = ~np.isclose(mixed.mean(axis=(1, 2)), features.mean(axis=(1, 2)), atol=1e-3).all(axis=1)
    assert changed.sum() >= 6  # the style is another image's, in part (an image may draw itself as partner)
    np.testing.assert_array_equal(always(features, training=False), features)  # identity at inference
    np.testing.assert_allclose(MixStyle(0.0, seed=1)(features, training=True), features, atol=1e-5)
    same_style = np.repeat(features[:1], 8, axis=0)  # nothing to mix when every image has the same style
    np.testing.assert_allclose(always(same_style, training=True), same_style, atol=1e-4)


def test_precise_bn_takes_the_statistics_of_unmixed_features():
    from braintumor.core.config import ModelConfig
    from braintumor.engine.callbacks import batchnorm_layers, recompute_batchnorm
    from braintumor.models.build import build_model

    cfg = ModelConfig(backbone="simple_cnn", weights="none", mode="full", width=8, depth=3, mixstyle=1.0)
    model = build_model(cfg, 32, 4)
    batches = [np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)]

    def statistics() -> list[np.ndarray]:
        recompute_batchnorm(model, batchnorm_layers(model), batches)
        return [np.asarray(variable) for layer in batchnorm_layers(model)[1:]  # after the first MixStyle
                for variable in (layer.moving_mean, layer.moving_variance)]

    for first, second in zip(statistics(), statistics(), strict=True):  # mixing would draw anew each time
        np.testing.assert_array_equal(first, second)
    assert model.get_layer("simple_cnn").get_layer("conv1_mixstyle").mixing  # and mixes again after


def test_mixstyle_model_trains_saves_a_plain_keras_model_and_its_checkpoints_keep_the_layer(write_config, tmp_path,
                                                                                           synth_root):
    from braintumor.core.config import ModelConfig
    from braintumor.models.build import MixStyle, build_model
    from braintumor.models.saved import load_saved

    model_cfg = {"width": 8, "depth": 4, "norm": "ibn", "mixstyle": 0.5}
    assert main(["train", str(write_config(model=model_cfg, train={"precision": "mixed_bfloat16"}))]) == 0
    (run,) = (tmp_path / "outputs").iterdir()
    backbone = keras.models.load_model(run / "model.keras", safe_mode=True).get_layer("simple_cnn")
    assert not any(isinstance(layer, MixStyle) for layer in backbone.layers)  # a file plain Keras loads
    assert [layer.name for layer in backbone.layers if isinstance(layer, keras.layers.Identity)] == [
        "conv1_mixstyle", "conv2_mixstyle"]
    assert main(["evaluate", "--run", str(run)]) == 0
    image = next((synth_root / "Testing").rglob("*.jpg"))
    assert main(["predict", "--run", str(run), str(image), "--gradcam", str(tmp_path / "cam")]) == 0
    # a checkpoint keeps the layer, so that --resume trains on with it
    training = build_model(ModelConfig(backbone="simple_cnn", weights="none", mode="full", **model_cfg), 32, 4)
    training.save(tmp_path / "last.keras")
    resumed = load_saved(tmp_path / "last.keras", "checkpoint", "start again")
    assert [layer.name for layer in resumed.get_layer("simple_cnn").layers if isinstance(layer, MixStyle)] == [
        "conv1_mixstyle", "conv2_mixstyle"]


@pytest.mark.parametrize(("sections", "key"), [
    ({"model": {"norm": "ibn", "depth": 2}}, "model.norm"),
    ({"data": {"channels": 2}}, "data.channels"),
    ({"model": {"norm": "layer"}}, "model.norm"),
    ({"model": {"backbone": "vgg16", "norm": "group"}}, "model.norm"),
    ({"model": {"norm": "group"}, "train": {"precise_bn": True}}, "train.precise_bn"),
    ({"data": {"channels": True}}, "data.channels"),
    ({"data": {"channels": 1}, "model": {"backbone": "vgg16"}}, "data.channels"),
    ({"model": {"backbone": "vgg16", "width": 64}}, "model.width"),
    ({"model": {"depth": 0}}, "model.depth"),
    ({"model": {"bn_momentum": 1.0}}, "model.bn_momentum"),
    ({"model": {"mixstyle": 1.5}}, "model.mixstyle"),
    ({"model": {"mixstyle": 0.5, "depth": 2}}, "model.mixstyle"),
    ({"model": {"backbone": "vgg16", "mixstyle": 0.5}}, "model.mixstyle"),
])
def test_bad_model_values_name_the_key(write_config, capsys, sections, key):
    assert main(["validate", str(write_config(**sections))]) == 2
    assert key in capsys.readouterr().err


# ---------------------------------------------------------------- seed ensembles

def test_ensemble_averages_the_runs_probabilities(trained_run, write_config, tmp_path, capsys):
    from braintumor.results.reports import read_predictions

    assert main(["train", str(write_config("seed1", seed=1))]) == 0  # the shared run has seed 0
    runs = [trained_run, *(tmp_path / "outputs").iterdir()]
    out = tmp_path / "ensemble"
    assert main(["evaluate", "--ensemble", *map(str, runs), "--out", str(out)]) == 0
    files, _, probs, _ = read_predictions(out / "predictions.csv")
    members = [read_predictions(run / "predictions.csv") for run in runs]
    assert all(member[0] == files for member in members)
    np.testing.assert_allclose(probs, np.mean([member[2] for member in members], axis=0), atol=2e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["ensemble"] == [str(run) for run in runs] and "leak_free" in metrics


def test_ensemble_refuses_runs_with_another_image_pipeline(trained_run, tmp_path, capsys):
    # the check reads the runs' configs before any model is loaded, so a copy of the shared run whose config says
    # 40 px stands for a run trained at 40 px; first, so that a default output folder would land in tmp_path
    large = shutil.copytree(trained_run, tmp_path / "outputs" / "large")
    cfg = load_config(large / "config.yaml")
    cfg.data.image_size = 40
    save_config(cfg, large / "config.yaml")
    assert main(["evaluate", "--ensemble", str(large), str(trained_run)]) == 2
    assert "image pipeline" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["large"]


# ---------------------------------------------------------------- precise BatchNorm

def test_precise_bn_sets_moving_statistics_to_the_mean_of_clean_batch_statistics():
    from braintumor.engine.callbacks import PreciseBatchNorm

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    normalised = keras.layers.BatchNormalization(momentum=0.99, name="bn")(features)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(normalised))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).integers(0, 255, (40, 16, 16, 3)).astype(np.uint8)
    weights_before = [w.copy() for w in model.get_weights()]

    callback = PreciseBatchNorm(images, batch_size=8, seed=3, count=24)  # 3 batches of 8
    callback.set_model(model)
    callback.on_test_begin()

    conv = keras.Model(inputs, features)
    batches = [conv(batch.astype(np.float32)).numpy() for batch in callback.batches]
    assert len(batches) == 3 and sum(len(b) for b in batches) == 24
    expected_mean = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    expected_var = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    bn = model.get_layer("bn")
    np.testing.assert_allclose(bn.moving_mean.numpy(), expected_mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), expected_var, rtol=1e-3, atol=1e-5)
    assert bn.momentum == 0.99  # restored
    for before, after, variable in zip(weights_before, model.get_weights(), model.weights, strict=True):
        if "moving" not in variable.path:  # only the statistics change, never a learned weight
            np.testing.assert_array_equal(before, after)


def test_a_run_with_the_whole_recipe_completes_and_matches_its_validation_when_evaluated(write_config, tmp_path):
    """configs/scratch.yaml's recipe, precise BatchNorm included, in one run."""
    rows = _history(write_config, tmp_path, schedule="cosine", warmup_epochs=1, weight_decay=1e-4,
                    label_smoothing=0.1, precise_bn=True)
    assert len(rows) == 4 and all(np.isfinite(float(row["val_loss"])) for row in rows)
    (run,) = (tmp_path / "outputs").iterdir()
    best = json.loads((run / "metrics.json").read_text())["best_epoch"]
    assert main(["evaluate", "--run", str(run), "--split", "validation", "--out", str(tmp_path / "val")]) == 0
    validation = json.loads((tmp_path / "val" / "metrics.json").read_text())
    # the saved model carries the statistics its validation epoch was scored with
    assert validation["accuracy"] == pytest.approx(float(rows[best - 1]["val_accuracy"]), abs=1e-6)


@pytest.mark.parametrize(("sections", "message"), [
    ({"model": {"backbone": "vgg16", "weights": "none", "mode": "fine-tune"}, "train": {"precise_bn": True}},
     "train.precise_bn = True needs model.mode full"),
    ({"train": {"precise_bn": True, "distribution": "mirrored"}}, "train.precise_bn"),
])
def test_precise_bn_outside_full_single_device_training_is_refused(write_config, capsys, sections, message):
    assert main(["validate", str(write_config(**sections))]) == 2
    assert message in capsys.readouterr().err


def test_by_sequence_splits_the_leak_free_images_by_the_listed_sequences(tmp_path):
    """scripts/by_sequence.py: twins apart, then leak-free T1c and the slices docs/testing_not_t1c.csv lists."""
    rows = [("Testing/glioma_tumor/image(3).jpg", "glioma_tumor", "no_tumor"),  # listed: FLAIR, leak-free
            ("Testing/pituitary_tumor/image(44).jpg", "pituitary_tumor", "pituitary_tumor"),  # listed: T2
            ("Testing/glioma_tumor/image(1).jpg", "glioma_tumor", "glioma_tumor"),  # not listed: T1c
            ("Testing/glioma_tumor/image(2).jpg", "glioma_tumor", "meningioma_tumor"),  # not listed: T1c
            ("Testing/no_tumor/image(1).jpg", "no_tumor", "no_tumor")]  # a twin
    with (tmp_path / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "true", "predicted"])
        writer.writerows(rows)
    (tmp_path / "metrics.json").write_text(json.dumps({"leak_free": {"excluded_files": [rows[-1][0]]}}))
    script = Path(__file__).resolve().parents[1] / "scripts" / "by_sequence.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == f"| {tmp_path.name} | 1 / 1 | 1 / 2 | 1 / 2 | 2 / 4 |"
    (tmp_path / "metrics.json").write_text(json.dumps({"leak_free": {"excluded_files": []}}))  # no twin at all
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == f"| {tmp_path.name} | 0 / 0 | 2 / 3 | 1 / 2 | 3 / 5 |"
    (tmp_path / "metrics.json").write_text("{}")  # a run's reports without the leak-free subset: refused, named
    refused = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode == 2 and "--leak-free-from" in refused.stderr


def test_source_folds_hold_out_whole_pixel_sizes_and_train_the_largest_source_in_every_fold(tmp_path):
    """scripts/source_folds.py: every image of one pixel size (and its twins) in one fold, the collection too large
    for a fold in every training part, and a split file that `data.split_file` reads."""
    from PIL import Image

    from braintumor.data.splits import read_split_file
    from braintumor.data.synth import make_image

    rng = np.random.default_rng(0)
    classes = ("glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor")
    root = tmp_path / "data"

    def save(origin: str, label: str, name: str, pixels: np.ndarray, size: int) -> None:
        (root / origin / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((size, size)).save(root / origin / label / name, quality=95)

    for label in classes:
        for i in range(12):  # the large collection: one size, every class
            save("Training", label, f"big{i}.jpg", make_image(label, rng, 96), 96)
        for size in range(40, 76, 4):  # small collections: two images of one size, one in each published folder
            save("Training", label, f"s{size}.jpg", make_image(label, rng, size), size)
            save("Testing", label, f"s{size}.jpg", make_image(label, rng, size), size)
    twin = make_image("glioma_tumor", rng, 80)  # one slice at two sizes: joins its two sizes' collections
    save("Training", "glioma_tumor", "twin.jpg", twin, 80)
    save("Testing", "glioma_tumor", "twin.jpg", twin, 84)
    out = tmp_path / "sources.csv"
    script = Path(__file__).resolve().parents[1] / "scripts" / "source_folds.py"
    command = [sys.executable, str(script), str(root), str(out), "--folds", "3", "--cache-dir", str(tmp_path / "c")]
    subprocess.run(command, capture_output=True, text=True, check=True)

    sides = read_split_file(out, root)  # as training reads it: every image, with its sha256 checked
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(sides) == len(rows) == 4 * (12 + 2 * 9) + 2
    by_size: dict[int, set[str]] = {}
    for row in rows:
        with Image.open(root / row["file"]) as image:
            by_size.setdefault(image.size[0], set()).add(row["split"])
    assert by_size[96] == {"train"}
    assert all("too large for a fold" in row["reason"] for row in rows if "/big" in row["file"])
    assert all(len(found) == 1 for found in by_size.values())
    assert by_size[80] == by_size[84] and by_size[80] != {"train"}
    assert {side for found in by_size.values() for side in found} == {"train", "0", "1", "2"}
    again = subprocess.run(command, capture_output=True, text=True)  # an existing file is never overwritten
    assert again.returncode == 2 and "exists" in again.stderr
