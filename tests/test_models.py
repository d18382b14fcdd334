"""Backbone registry, the fine-tune boundary a built model reports, trainable modes, weights loading and its
errors, safe-mode saving."""

from __future__ import annotations

import numpy as np
import pytest

from braintumor.core.backbones import BACKBONES
from braintumor.core.config import ModelConfig
from braintumor.core.errors import UserError
from braintumor.models.build import build_backbone, build_model
from braintumor.models.facts import backbone_of, fine_tune_after


def _trainable_backbone_weights(model, backbone: str) -> int:
    return len(backbone_of(model).trainable_weights)


def _assert_frozen_up_to(backbone, boundary: str) -> None:
    names = [layer.name for layer in backbone.layers]
    assert not any(layer.trainable for layer in backbone.layers[: names.index(boundary) + 1])
    assert all(layer.trainable for layer in backbone.layers[names.index(boundary) + 1:])


@pytest.mark.parametrize("name,boundary", [("vgg16", "block4_pool"), ("resnet50", "conv4_block6_out"),
                                           ("inceptionv3", "mixed8"), ("simple_cnn", "conv2_pool")])
def test_each_backbone_builds_at_its_minimum_size_and_predicts(name, boundary):
    size = BACKBONES[name].min_size
    cfg = ModelConfig(backbone=name, weights="none", mode="fine-tune")
    model = build_model(cfg, size, 4)
    # an eager call computes what predict() does, without tracing a graph of the whole backbone (5 s for InceptionV3)
    probs = np.asarray(model(np.zeros((2, size, size, 3), np.float32), training=False))
    assert probs.shape == (2, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert fine_tune_after(cfg, backbone_of(model)) == boundary
    _assert_frozen_up_to(backbone_of(model), boundary)


@pytest.mark.parametrize("depth", [2, 5])
def test_simple_cnn_fine_tunes_its_last_block_whatever_its_depth(depth):
    cfg = ModelConfig(backbone="simple_cnn", weights="none", mode="fine-tune", width=4, depth=depth, convs_per_block=2)
    backbone = backbone_of(build_model(cfg, 32, 4, channels=1))
    assert fine_tune_after(cfg, backbone) == f"conv{depth - 1}_pool"
    _assert_frozen_up_to(backbone, f"conv{depth - 1}_pool")
    assert {layer.name.split("_")[0] for layer in backbone.layers if layer.trainable_weights} == {f"conv{depth}"}


def test_a_single_block_simple_cnn_cannot_fine_tune():
    with pytest.raises(UserError, match="model.depth 1 has a single block.*model.depth 2 or more"):
        build_model(ModelConfig(backbone="simple_cnn", weights="none", mode="fine-tune", depth=1), 32, 4)


def test_modes_freeze_what_they_say():
    def trainable(mode):
        return _trainable_backbone_weights(build_model(ModelConfig(weights="none", mode=mode), 32, 4), "vgg16")

    assert trainable("feature-extraction") == 0
    assert 0 < trainable("fine-tune") < trainable("full") == 26  # VGG16: 13 conv layers x (kernel, bias)
    assert trainable("fine-tune") == 6  # block5: 3 conv layers


def test_fine_tune_after_a_chosen_layer_and_a_wrong_one():
    model = build_model(ModelConfig(weights="none", fine_tune_after="block3_pool"), 32, 4)
    assert _trainable_backbone_weights(model, "vgg16") == 12
    with pytest.raises(UserError, match="'block9_pool' is not a layer of vgg16"):
        build_model(ModelConfig(weights="none", fine_tune_after="block9_pool"), 32, 4)


def test_local_weights_file_is_loaded(tmp_path):
    source = build_backbone(ModelConfig(weights="none"), 32)
    path = tmp_path / "vgg16_notop.weights.h5"
    source.save_weights(path)
    loaded = build_backbone(ModelConfig(weights=str(path)), 32)
    for a, b in zip(source.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    fresh = build_backbone(ModelConfig(weights="none"), 32)
    assert not all(np.array_equal(a, b) for a, b in zip(source.get_weights(), fresh.get_weights(), strict=False))


# Keras warns once per layer it cannot match before it raises; the raise is what we turn into one line
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_missing_and_mismatched_weights_files(tmp_path):
    with pytest.raises(UserError, match="not found; give an existing weights file"):
        build_backbone(ModelConfig(weights=str(tmp_path / "absent.h5")), 32)
    other = build_backbone(ModelConfig(backbone="simple_cnn", weights="none"), 32)
    path = tmp_path / "simple.weights.h5"
    other.save_weights(path)
    with pytest.raises(UserError, match="does not fit vgg16 .* saved from a vgg16 backbone"):
        build_backbone(ModelConfig(weights=str(path)), 32)


def test_imagenet_download_failure_says_where_keras_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # empty cache, and no internet here or in CI
    with pytest.raises(UserError, match="could not get ImageNet weights for vgg16 .*keras/models.*model.weights"):
        build_backbone(ModelConfig(weights="imagenet"), 32)


def test_saved_model_loads_in_safe_mode_with_identical_predictions(tmp_path):
    import keras

    model = build_model(ModelConfig(backbone="resnet50", weights="none", mode="feature-extraction"), 32, 4)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    # eager calls: the same outputs as predict() without tracing ResNet50 twice
    np.testing.assert_array_equal(np.asarray(model(x, training=False)), np.asarray(loaded(x, training=False)))
