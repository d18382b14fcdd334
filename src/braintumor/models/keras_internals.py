"""The Keras internals braintumor uses, in one place, each where public Keras has no equivalent.

tests/test_keras_internals.py exercises every one of them, so a Keras upgrade that removes or renames one
fails there, naming it, instead of deep inside a training run. Everything else uses public Keras.
"""

from __future__ import annotations

from collections.abc import Iterable

import keras

# What these functions read, for the test's message; keep in step with the code below.
USED = ("Functional._nodes_by_depth", "Node.operation", "Node.is_input", "Node.input_tensors", "Node.outputs",
        "Node.arguments.fill_in", "Layer.supports_jit")


def layer_calls(graph: keras.Model) -> list:
    """Every layer call (a Keras `Node`: `.operation`, `.input_tensors`, `.outputs`) of a functional model, each after
    the calls that make its inputs.

    Public Keras walks a graph only from its inputs (`clone_model`'s `call_function`); the prefix cache replays one
    from an inner tensor. This follows keras.src Function._run_through_graph."""
    return [node for depth in sorted(graph._nodes_by_depth, reverse=True) for node in graph._nodes_by_depth[depth]
            if not node.is_input and node.operation]


def call_arguments(node, tensors: dict) -> tuple[list, dict]:
    """A layer call's positional and keyword arguments (e.g. `training=False`), each of its input tensors replaced by
    `tensors[id(tensor)]`."""
    return node.arguments.fill_in(tensors)


def layers_without_xla(layers: Iterable[keras.layers.Layer]) -> list[str]:
    """The names of the layers that cannot compile with XLA. `model.jit_compile = True`, the public check, turns XLA
    off with a warning that does not say which layer is the cause; env.json names it."""
    return [layer.name for layer in layers if not layer.supports_jit]
