"""`braintumor export`: a run's model as ONNX, TensorFlow SavedModel or TFLite, with a model card.

Keras' own `model.export` does the conversion (tf2onnx for ONNX, the TFLite converter for "litert").
The exported model takes what model.keras takes, RGB in [0, 255] of shape (N, size, size, 3), and
returns the class probabilities in the card's class order; it computes in float32 even where the
run trained in mixed precision (onnxruntime has no bfloat16 convolution).
"""

from __future__ import annotations

import importlib
import os
import tempfile
from pathlib import Path

import numpy as np

from braintumor.core import rundir
from braintumor.core.atomic import write_json
from braintumor.core.errors import UserError, describe
from braintumor.core.run import Run
from braintumor.models.build import float32_model
from braintumor.models.saved import load_run_model

# format → (keras.Model.export format, default file name, modules it needs, extra that installs them)
FORMATS = {
    "onnx": ("onnx", "model.onnx", ("tf2onnx", "onnx"), "export"),
    "savedmodel": ("tf_saved_model", "saved_model", (), None),
    "tflite": ("litert", "model.tflite", (), None),
}


def _check_dependencies(fmt: str) -> None:
    _, _, modules, extra = FORMATS[fmt]
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--format {fmt} needs {', '.join(missing)}, which is not installed; "
                        f"install the extra: pip install 'braintumor[{extra}]'")


def model_card(run: Run, fmt: str, file: Path) -> dict:
    cfg = run.read_config()
    metrics = run.read_metrics() if run.metrics.is_file() else {}
    return {
        "file": file.name,
        "format": fmt,
        "source_run": str(run.path.resolve()),
        "classes": run.classes(),  # output order
        "input": {"shape": [None, cfg.data.image_size, cfg.data.image_size, 3], "dtype": "float32",
                  "range": "RGB in [0, 255], decoded as `braintumor predict` does"},
        "output": "softmax probabilities, one per class, in the order of `classes`",
        "preprocessing": {"before_the_model": list(cfg.data.preprocess), "image_size": cfg.data.image_size,
                          "inside_the_model": f"{cfg.model.backbone} preprocessing (its first layer)"},
        "model": {"backbone": cfg.model.backbone, "mode": cfg.model.mode, "weights": cfg.model.weights,
                  "compute_dtype": "float32"},
        "metrics": {key: metrics[key] for key in ("split", "accuracy", "loss", "macro_avg", "n") if key in metrics},
    }


def export_run(run: Run, fmt: str, out: Path | None = None) -> Path:
    """Write the exported model at `out` (default RUN_DIR/export/<format>/<file>) and model_card.json beside it."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    _check_dependencies(fmt)
    keras_format, default_name, _, _ = FORMATS[fmt]
    model = float32_model(load_run_model(run))
    model(np.zeros((1, *model.inputs[0].shape[1:]), np.float32))  # the ONNX exporter needs a model that was called
    out = out or run.path / "export" / fmt / default_name
    if out.exists():
        raise UserError(f"{out} already exists; remove it or choose another --out")
    rundir.ensure_writable(out.parent)
    # export into a temp folder and move the result into place: a failed conversion leaves nothing behind
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.partial-", dir=out.parent) as work:
        target = Path(work) / out.name
        try:
            model.export(str(target), format=keras_format, verbose=False)
        except Exception as err:  # converters raise many types; the model is fine, the conversion is not
            raise UserError(f"export to {fmt} failed ({describe(err)}); try another --format, or run with "
                            "--debug and report the error") from err
        os.replace(target, out)
    write_json(out.parent / "model_card.json", model_card(run, fmt, out))
    print(f"wrote {out} and {out.parent / 'model_card.json'}")
    return out
