"""Backbone registry, trainable modes, weights loading and its errors, safe-mode saving."""

from __future__ import annotations

import numpy as np
import pytest

from braintumor.core.backbones import BACKBONES
from braintumor.core.config import ModelConfig
from braintumor.core.errors import UserError
from braintumor.models.build import build_backbone, build_model


def _trainable_backbone_weights(model, backbone: str) -> int:
    inner = [layer for layer in model.layers if layer.name not in ("image", "preprocess", "pool", "head")][0]
    return len(inner.trainable_weights)


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "inceptionv3", "simple_cnn"])
def test_each_backbone_builds_at_its_minimum_size_and_predicts(name):
    size = BACKBONES[name].min_size
    model = build_model(ModelConfig(backbone=name, weights="none", mode="fine-tune"), size, 4)
    probs = model.predict(np.zeros((2, size, size, 3), np.float32), verbose=0)
    assert probs.shape == (2, 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    backbone = model.layers[2]
    names = [layer.name for layer in backbone.layers]
    boundary = names.index(BACKBONES[name].fine_tune_after)
    assert not any(layer.trainable for layer in backbone.layers[: boundary + 1])
    assert all(layer.trainable for layer in backbone.layers[boundary + 1:])


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
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
