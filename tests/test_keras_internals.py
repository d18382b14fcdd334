"""The Keras internals of models/keras_internals.py still exist and mean what we use them for, and the public
API that replaced the others (dtype via clone_model, SeedGenerator.state) does what the internals did.

A Keras upgrade that removes or renames an internal fails here with its name, not deep inside a training run.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
import pytest

from braintumor.core.config import ModelConfig
from braintumor.engine.callbacks import EpochSeeds
from braintumor.models.build import build_model, computing_layers, float32_model
from braintumor.models.keras_internals import USED, call_arguments, layer_calls, layers_without_xla


@contextlib.contextmanager
def _named_on_failure():
    try:
        yield
    except AttributeError as err:  # e.g. "'Functional' object has no attribute '_nodes_by_depth'"
        pytest.fail(f"Keras {keras.__version__} lacks an internal that models/keras_internals.py uses "
                    f"({', '.join(USED)}): {err}")


def _skip_model() -> keras.Model:
    inputs = keras.Input((4,), name="x")
    first = keras.layers.Dense(4, name="first")(inputs)
    second = keras.layers.Dropout(0.5, name="second")(first, training=False)
    return keras.Model(inputs, keras.layers.Add(name="add")([first, second]))


def test_layer_calls_come_in_order_and_replay_with_their_keyword_arguments():
    model = _skip_model()
    with _named_on_failure():
        calls = layer_calls(model)
        assert [node.operation.name for node in calls] == ["first", "second", "add"]
        dropout = calls[1]
        new = keras.Input((4,))
        args, kwargs = call_arguments(dropout, {id(dropout.input_tensors[0]): new})
        assert [id(x) for x in calls[2].input_tensors] == [id(calls[0].outputs[0]), id(dropout.outputs[0])]
    assert args[0] is new and kwargs == {"training": False}
    replayed = keras.Model(new, dropout.operation(*args, **kwargs))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(replayed.predict(x, verbose=0), x)  # inference mode kept: dropout is identity


def test_layers_without_xla_names_the_keras_layers_that_cannot_compile():
    layers = [keras.layers.Conv2D(2, 3, name="conv"), keras.layers.RandomTranslation(0.1, 0.1, name="shift")]
    with _named_on_failure():
        assert layers_without_xla(layers) == ["shift"]


def test_epoch_seeds_make_dropout_masks_a_function_of_seed_and_epoch():
    inputs = keras.Input((64,))
    model = keras.Model(inputs, keras.layers.Dropout(0.5)(inputs))
    seeds = EpochSeeds(seed=3)
    seeds.set_model(model)
    x = np.ones((1, 64), np.float32)

    def mask(epoch: int) -> np.ndarray:
        seeds.on_epoch_begin(epoch)
        return np.asarray(model(x, training=True)) > 0

    first = mask(0)
    mask(1)
    assert (mask(0) == first).all() and not (mask(1) == first).all()


def test_float32_copy_of_a_mixed_precision_model_has_its_weights_and_float32_results():
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    try:
        mixed = build_model(ModelConfig(backbone="simple_cnn", weights="none", mode="fine-tune", width=4), 32, 4)
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    copy = float32_model(mixed)
    assert {layer.dtype_policy.name for layer in computing_layers(copy)} == {"float32"}
    assert [w.path for w in copy.weights] == [w.path for w in mixed.weights]
    frozen = [[layer.trainable for layer in computing_layers(model)] for model in (copy, mixed)]
    assert frozen[0] == frozen[1] and not all(frozen[0])
    reference = build_model(ModelConfig(backbone="simple_cnn", weights="none", mode="fine-tune", width=4), 32, 4)
    reference.set_weights(mixed.get_weights())
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(copy.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-6)
