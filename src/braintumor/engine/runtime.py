"""Runtime: mixed precision and XLA, each with the reason it was picked, the distribution strategy, and the
environment record (env.json).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy
import sklearn
import tensorflow as tf

from braintumor.models.build import computing_layers
from braintumor.models.keras_internals import layers_without_xla


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(setting: str) -> tuple[str, str]:
    """The dtype policy to use and why."""
    if setting != "auto":
        return setting, "set in config"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16", "auto: GPU found"
    if cpu_supports_bf16():
        return "mixed_bfloat16", "auto: CPU with bfloat16 instructions, where it beats float32 (BENCHMARKS.md)"
    return "float32", "auto: CPU without bfloat16 instructions"


def resolve_xla(model: keras.Model, setting: str) -> tuple[bool, str]:
    """Whether to compile with XLA, and why."""
    unsupported = layers_without_xla(computing_layers(model))
    if setting == "off":
        return False, "off in config"
    if unsupported:
        return False, f"layer {unsupported[0]} does not support XLA"
    if setting == "on":
        return True, "on in config"
    if not tf.config.list_physical_devices("GPU"):
        return False, "auto: off on CPU, where XLA trained slower than the default kernels (BENCHMARKS.md)"
    return True, "auto: GPU and every layer supports XLA"


def distribution(setting: str, devices: list[str] | None = None) -> tf.distribute.Strategy:
    """The strategy to build and compile the model under: TensorFlow's default (one device) or a MirroredStrategy.

    Cached, so a run builds its model and compiles it under the same strategy object.
    """
    return _strategy(setting, tuple(devices) if devices else None)


@functools.cache
def _strategy(setting: str, devices: tuple[str, ...] | None) -> tf.distribute.Strategy:
    if setting == "none":
        return tf.distribute.get_strategy()
    # None: every visible GPU (or the CPU when there is none); batches are split across the replicas
    return tf.distribute.MirroredStrategy(devices=list(devices) if devices else None)


def strategy_devices(strategy: tf.distribute.Strategy) -> list[str]:
    """The devices a strategy trains on, for env.json."""
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return list(strategy.extended.worker_devices)
    return ["/device:GPU:0" if tf.config.list_physical_devices("GPU") else "/device:CPU:0"]  # TF's default placement


def _git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True,
                               timeout=5).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(**extra: Any) -> dict[str, Any]:
    """Versions, machine and device facts for env.json."""
    return {
        "command": sys.argv,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": numpy.__version__,
        "scikit_learn": sklearn.__version__,
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "git_commit": _git_commit(),
        **extra,
    }
