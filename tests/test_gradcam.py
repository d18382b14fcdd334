"""Grad-CAM: maps for every backbone and mode and every simple_cnn shape, reloaded models, mixed precision,
localisation, and the --gradcam PNGs (configs/scratch.yaml's model: tests/test_every_config.py)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from PIL import Image

from braintumor.apps.gradcam import GradCam
from braintumor.cli import main
from braintumor.core.config import ModelConfig
from braintumor.models import facts
from braintumor.models.build import build_model, computing_layers

# the smallest sizes where the target layer's map is at least 2 × 2 (a 1 × 1 map upsamples to a constant)
SIZES = {"vgg16": 32, "resnet50": 64, "inceptionv3": 107, "simple_cnn": 32}
# the layer each backbone's maps weigh: its last convolutional block's output
EXPLAINED = {"vgg16": "block5_conv3", "resnet50": "conv5_block3_out", "inceptionv3": "mixed10",
             "simple_cnn": "conv3_relu"}
# the ends of the backbone's stages whose spatial means the out-of-distribution detector reads (at SIZES)
STAGES = {"vgg16": ["block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"],
          "resnet50": ["conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"],
          "inceptionv3": ["mixed2", "mixed7"],  # after 4 stem activations, whose names count up per build
          "simple_cnn": ["conv1_relu", "conv2_relu", "conv3_relu"]}


@pytest.fixture(autouse=True)
def _float32_policy_and_seeded_weights():
    """Before (an in-process train of an earlier test file sets the global policy it trained in) and after.
    Seeded: an untrained network's class score can have no positive gradient at the explained layer, and Grad-CAM's
    map of such a draw is rightly all zero (seen once for ResNet50 in a clean-clone CI run), so each test explains
    the same weights every run."""
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_dtype_policy("float32")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def _images(size: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, (n, size, size, 3)).astype(np.uint8)


MODES = ["feature-extraction", "fine-tune", "full"]
# ResNet50's and InceptionV3's graphs cost TensorFlow 8-20 s each to trace: CI explains them under fine-tune (a
# partly trainable nested backbone, the mode the study's best rows use); the other modes run in the extended tier
HEAVY = {"resnet50", "inceptionv3"}


@pytest.mark.slow
@pytest.mark.parametrize("backbone,mode", [
    pytest.param(backbone, mode, marks=[pytest.mark.extended] if backbone in HEAVY and mode != "fine-tune" else [])
    for backbone in SIZES for mode in MODES])
def test_each_backbone_and_mode_gives_a_map_of_the_image_size_that_is_not_constant(backbone, mode):
    size = SIZES[backbone]
    model = build_model(ModelConfig(backbone=backbone, weights="none", mode=mode), size, 4)
    cam = GradCam(model)
    assert cam.layer == EXPLAINED[backbone]
    _assert_maps(cam, model, size)
    stages = facts.stage_layers(facts.backbone_of(model))
    assert stages[-len(STAGES[backbone]):] == STAGES[backbone]
    assert len(stages) == len(STAGES[backbone]) + (4 if backbone == "inceptionv3" else 0)
    widths = [facts.backbone_of(model).get_layer(name).output.shape[-1] for name in stages]
    penultimate = model.get_layer("pool").output.shape[-1]
    assert [output.shape[-1] for output in facts.detector_model(model).outputs] == [*widths, penultimate]


def _assert_maps(cam: GradCam, model: keras.Model, size: int) -> np.ndarray:
    maps, probs = cam(_images(size))
    assert maps.shape == (2, size, size) and maps.dtype == np.float32
    assert np.allclose(probs, model.predict(_images(size).astype(np.float32), verbose=0), atol=1e-5)
    for heatmap in maps:
        assert heatmap.max() == pytest.approx(1.0) and heatmap.min() >= 0 and heatmap.std() > 0.01
    return maps


# every depth with each convs_per_block, and every (convs_per_block, channels) pair: the grayscale layer sits before
# the backbone, so channels cannot interact with depth
@pytest.mark.parametrize("depth,convs,channels", [(2, 1, 1), (2, 2, 3), (3, 1, 3), (3, 2, 1),
                                                  (4, 1, 1), (4, 2, 3), (5, 1, 3), (5, 2, 1)])
def test_every_simple_cnn_shape_is_explained_at_its_last_blocks_output(depth, convs, channels):
    cfg = ModelConfig(backbone="simple_cnn", weights="none", mode="full", width=4, depth=depth, convs_per_block=convs)
    model = build_model(cfg, 32, 4, channels)
    cam = GradCam(model)
    assert cam.layer == (f"conv{depth}_relu" if convs == 1 else f"conv{depth}_{convs}_relu")
    _assert_maps(cam, model, 32)


def test_a_saved_and_reloaded_model_explains_the_same_layer_with_the_same_maps(tmp_path):
    cfg = ModelConfig(backbone="simple_cnn", weights="none", mode="full", width=4, depth=5, convs_per_block=2)
    model = build_model(cfg, 32, 4, channels=1)  # configs/scratch.yaml's shape
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    cam, cam_reloaded = GradCam(model), GradCam(reloaded)
    assert cam_reloaded.layer == cam.layer == "conv5_2_relu"
    np.testing.assert_allclose(_assert_maps(cam_reloaded, reloaded, 32), cam(_images(32))[0], atol=1e-6)


def test_a_mixed_precision_model_is_explained_in_float32():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = build_model(ModelConfig(backbone="simple_cnn", weights="none", mode="full"), 32, 4)
    cam = GradCam(model)
    assert {layer.dtype_policy.name for layer in computing_layers(cam.backbone)} == {"float32"}
    maps, _ = cam(_images(32))
    assert maps.shape == (2, 32, 32) and len(np.unique(maps[0])) > 50  # bfloat16 gradients would give few levels


def _blob_images(rng: np.random.Generator, n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise; half the images (class 1) have a bright blob in a random quadrant. Returns images, labels, quadrants."""
    images = rng.normal(60, 20, (n, size, size)).clip(0, 255)
    labels, quadrants = np.arange(n) % 2, rng.integers(0, 4, n)
    yy, xx = np.mgrid[0:size, 0:size]
    for image, label, quadrant in zip(images, labels, quadrants, strict=True):
        if label:
            cy = rng.integers(5, size // 2 - 5) + (size // 2) * (quadrant // 2)
            cx = rng.integers(5, size // 2 - 5) + (size // 2) * (quadrant % 2)
            image += 180 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8)
    return np.repeat(images.clip(0, 255)[..., None], 3, axis=3).astype(np.uint8), labels, quadrants


def test_the_maps_peak_lies_in_the_quadrant_of_the_blob_that_decides_the_class():
    rng = np.random.default_rng(0)
    images, labels, _ = _blob_images(rng, 256)
    model = build_model(ModelConfig(backbone="simple_cnn", weights="none", mode="full", dropout=0.0), 32, 2)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images.astype(np.float32), labels, batch_size=32, epochs=6, verbose=0)
    test, test_labels, quadrants = _blob_images(rng, 40)
    blob = test_labels == 1
    maps, probs = GradCam(model)(test[blob], np.ones(blob.sum(), int))
    assert (probs.argmax(axis=1) == 1).mean() >= 0.9  # the model learnt the task
    peaks = [np.unravel_index(m.argmax(), m.shape) for m in maps]
    found = np.array([(y >= 16) * 2 + (x >= 16) for y, x in peaks])
    assert (found == quadrants[blob]).mean() >= 0.9


def test_predict_gradcam_writes_a_titled_png_per_image(trained_run, synth_root, tmp_path, capsys):
    out = tmp_path / "cams"
    folder = synth_root / "Testing" / "pituitary_tumor"
    assert main(["predict", "--run", str(trained_run), str(folder), "--gradcam", str(out),
                 "--gradcam-class", "no_tumor"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.stem for p in pngs] == sorted(p.stem for p in folder.glob("*.jpg"))
    with Image.open(pngs[0]) as png:
        assert png.format == "PNG" and png.size[0] > png.size[1] > 200
    assert "wrote 6 Grad-CAM image(s)" in capsys.readouterr().err
