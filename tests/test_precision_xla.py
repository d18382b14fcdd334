"""How train.precision and train.xla resolve, and that a run records the choice in env.json."""

from __future__ import annotations

import json

import keras
import pytest
import tensorflow as tf

from braintumor.engine import runtime

no_gpu = pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="auto differs on a GPU")


@pytest.mark.parametrize("setting", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_explicit_precision_is_used_as_set(setting):
    assert runtime.resolve_precision(setting) == (setting, "set in config")


@no_gpu
@pytest.mark.parametrize("bf16, expected", [(True, "mixed_bfloat16"), (False, "float32")])
def test_auto_precision_on_a_cpu_follows_its_bfloat16_support(monkeypatch, bf16, expected):
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: bf16)
    policy, reason = runtime.resolve_precision("auto")
    assert policy == expected and reason.startswith("auto: CPU")


def _model(*layers: keras.layers.Layer) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    inner = keras.Sequential(list(layers), name="inner")  # nested, as the backbone and head are
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inner(inputs))))


def test_xla_on_and_off_as_set_for_a_model_that_allows_it():
    model = _model(keras.layers.Conv2D(4, 3))
    assert runtime.resolve_xla(model, "on") == (True, "on in config")
    assert runtime.resolve_xla(model, "off") == (False, "off in config")


@no_gpu
def test_auto_xla_is_off_on_a_cpu_with_the_measured_reason():
    xla, reason = runtime.resolve_xla(_model(keras.layers.Conv2D(4, 3)), "auto")
    assert not xla and "slower" in reason and "CPU" in reason


@pytest.mark.parametrize("setting", ["on", "auto"])
def test_a_layer_without_xla_support_turns_it_off_and_is_named(setting):
    xla, reason = runtime.resolve_xla(_model(keras.layers.RandomTranslation(0.1, 0.1, name="shift")), setting)
    assert not xla and reason == "layer shift does not support XLA"


def test_run_records_precision_and_xla_in_env_json(trained_run):
    env = json.loads((trained_run / "env.json").read_text())
    assert (env["precision"], env["precision_reason"]) == ("float32", "set in config")
    assert env["xla"] is runtime.resolve_xla(_model(keras.layers.Conv2D(4, 3)), "auto")[0]
    assert env["xla_reason"]
