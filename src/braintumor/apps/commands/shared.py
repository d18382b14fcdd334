"""What several commands share: the --set option, the config epilog, argument types, TensorFlow start-up."""

from __future__ import annotations

import argparse

from braintumor.core.logs import native_stderr_filtered

CONFIG_EPILOG = """\
Config keys, their defaults and allowed values: README.md, section "Configs" (the schema is
src/braintumor/core/config.py). Check a config without training: braintumor validate CONFIG."""
OVERRIDE_HELP = ("override a config value, e.g. --set train.epochs=2 --set data.root=PATH "
                 "(the value is read as YAML; repeatable)")
SHIPPED_HINT = "or the name of a shipped config (quickstart, scratch, vgg16_full, ...)"


def add_overrides(parser: argparse.ArgumentParser, help_text: str = OVERRIDE_HELP) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def add_run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, metavar="RUN_DIR",
                        help="a completed run folder made by braintumor train")


def positive(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


MAX_BATCH = 1024  # a VGG16 batch of 1024 at 224 px needs about 13 GB of activations


def batch_size(text: str) -> int:
    """An argparse type: images per model call, 1 to MAX_BATCH (checked before any work)."""
    value = positive(text)
    if value > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"{text!r} is over {MAX_BATCH}, the most images one model call may take")
    return value


def start_tensorflow(debug: bool) -> None:
    """Load TensorFlow and probe its devices with its start-up lines (oneDNN, CUDA stubs, `failed call to
    cuInit`) hidden unless --debug. Every command that loads TensorFlow calls this before its first heavy
    import: TensorFlow prints them once, at load and at the first device probe.
    """
    with native_stderr_filtered(enabled=not debug):
        import tensorflow as tf

        tf.config.list_physical_devices()
