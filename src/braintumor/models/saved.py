"""Saved Keras models (a run's model.keras, a training checkpoint), loaded in safe mode with one-line errors."""

from __future__ import annotations

from pathlib import Path

import keras

from braintumor.core.errors import UserError, describe
from braintumor.core.run import Run
from braintumor.models import build  # noqa: F401  (registers the preprocessing layer of older runs, for loading)


def load_saved(path: Path, what: str, fix: str, compile: bool = True) -> keras.Model:  # noqa: A002 (Keras' name)
    """`path` loaded in Keras' safe mode; a damaged or unsafe file is one line: "<what> <path> cannot be loaded
    (<reason>); <fix>". `compile=False` leaves the optimizer and its state (twice the weights, for Adam) unloaded."""
    try:
        return keras.models.load_model(path, safe_mode=True, compile=compile)
    except Exception as err:  # Keras raises many types for damaged or unsafe archives
        raise UserError(f"{what} {path} cannot be loaded ({describe(err)}); {fix}") from err


def load_run_model(run: Run) -> keras.Model:
    """The model of a run (of one whose training wrote it: open the run with `Run.completed` first)."""
    if not run.model.is_file():
        raise UserError(f"{run.model} not found; the run folder is damaged: "
                        f"train it again with braintumor train {run.config}")
    return load_saved(run.model, "model", f"the file is damaged: train it again with braintumor train {run.config}",
                      compile=False)  # every command uses it for inference only
