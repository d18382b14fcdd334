"""`braintumor export`: a run's model as ONNX, TensorFlow SavedModel or TFLite, usable without braintumor.

Each export is one folder, RUN_DIR/export/<format>/ (or DIR/<format>/ with --out DIR), holding
- the model (Keras' own `model.export`: tf2onnx for ONNX, the TFLite converter for "litert"),
- model_card.json: how to feed it (decoding step by step, preprocessing, tensor names), the classes in
  output order, the intended use, and a check of the exported model in its own runtime against the
  run's model.keras on the run's test images (Testing, or its own test part under a grouped protocol),
- decode.py: the package's own decoding (data/pixels.py, copied unchanged; numpy + Pillow only),
- for ONNX, predict.py: a reference classifier needing only onnxruntime, numpy and Pillow.
The folder is built as a hidden `.<format>.partial-*` sibling and renamed into place once, so a model
never lands without its card; a sibling left by a killed export is removed by the next export.

The exported model takes what model.keras takes, RGB in [0, 255] of shape (N, size, size, 3), and
returns the class probabilities, calibrated as braintumor's (the run's temperature folded into the softmax
layer: its kernel and bias divided by T; the out-of-distribution detector is not exported); it computes
in float32 even where the run trained in mixed precision (onnxruntime has no bfloat16 convolution), which
the card's check quantifies.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from PIL import __version__ as pillow_version
from tqdm import tqdm

from braintumor import __version__
from braintumor.core import rundir
from braintumor.core.atomic import remove_dead_partials, write_bytes, write_json
from braintumor.core.backbones import BACKBONES
from braintumor.core.config import Config
from braintumor.core.errors import UserError, describe
from braintumor.core.logs import native_stderr_filtered
from braintumor.core.run import Run
from braintumor.data import pixels
from braintumor.engine.evaluate import default_split, load_run_split
from braintumor.engine.scoring import PREDICT_BATCH, Scorer, load_scorer
from braintumor.models.build import computing_layers, float32_model, with_temperature

EXPORT_DIR = "export"  # RUN_DIR/export/<format>/ is an export's default folder
CARD = "model_card.json"
DECODER = "decode.py"  # a verbatim copy of data/pixels.py
PREDICT_SCRIPT = "predict.py"  # a verbatim copy of apps/export_predict.py, in ONNX exports
PREDICT_SOURCE = "braintumor.apps.export_predict"  # found, not imported: it imports onnxruntime
INTENDED_USE = ("research and teaching tool for brain-MRI tumour classification; not a medical device: "
                "not validated for clinical use and not to be used for diagnosis or treatment decisions")


@dataclass(frozen=True)
class Format:
    keras_format: str  # keras.Model.export's name for it
    file: str  # the model's name in the export folder
    modules: tuple[str, ...]  # what the conversion and the check need beyond TensorFlow
    extra: str | None  # the braintumor extra that installs them


FORMATS = {
    "onnx": Format("onnx", "model.onnx", ("tf2onnx", "onnx", "onnxruntime"), "export"),
    "savedmodel": Format("tf_saved_model", "saved_model", (), None),
    "tflite": Format("litert", "model.tflite", ("ai_edge_litert",), "export"),
}

Runner = Callable[[np.ndarray], np.ndarray]  # float32 images → probabilities, in the format's own runtime


def _check_dependencies(fmt: str) -> None:
    missing = []
    for name in FORMATS[fmt].modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--format {fmt} needs {', '.join(missing)}, which is not installed; "
                        f"install the extra: pip install 'braintumor[{FORMATS[fmt].extra}]'")


def _dims(shape) -> list[int | None]:
    """A tensor shape with its unknown (named or -1) dimensions as None."""
    return [d if isinstance(d, int) and d >= 0 else None for d in shape]


def _open_onnx(path: Path) -> tuple[Runner, int, dict]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (image,), (probs,) = session.get_inputs(), session.get_outputs()
    interface = {
        "runtime": f"onnxruntime {onnxruntime.__version__}",
        "input": {"name": image.name, "shape": _dims(image.shape), "dtype": "float32"},
        "output": {"name": probs.name, "shape": _dims(probs.shape), "dtype": "float32"},
        "usage": f"onnxruntime.InferenceSession('{path.name}').run(['{probs.name}'], {{'{image.name}': images}})[0]; "
                 f"or python {PREDICT_SCRIPT} IMAGE... (onnxruntime, numpy and Pillow only)",
    }
    return lambda images: session.run([probs.name], {image.name: images})[0], PREDICT_BATCH, interface


def _open_savedmodel(path: Path) -> tuple[Runner, int, dict]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    ((image, image_spec),) = serve.structured_input_signature[1].items()
    ((probs, probs_spec),) = serve.structured_outputs.items()
    interface = {
        "runtime": f"tensorflow {tf.__version__}",
        "signature": "serving_default",
        "input": {"key": image, "shape": _dims(image_spec.shape.as_list()), "dtype": image_spec.dtype.name},
        "output": {"key": probs, "shape": _dims(probs_spec.shape.as_list()), "dtype": probs_spec.dtype.name},
        "usage": f"tf.saved_model.load('{path.name}').signatures['serving_default']({image}=images)['{probs}']",
    }

    def run(images: np.ndarray) -> np.ndarray:
        return loaded.signatures["serving_default"](**{image: tf.constant(images)})[probs].numpy()

    return run, PREDICT_BATCH, interface


def _open_tflite(path: Path) -> tuple[Runner, int, dict]:
    from importlib.metadata import version

    from ai_edge_litert.interpreter import Interpreter  # LiteRT, the runtime of a .tflite on a device

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (image,), (probs,) = interpreter.get_input_details(), interpreter.get_output_details()

    def details(tensor: dict) -> dict:
        return {"name": tensor["name"], "index": int(tensor["index"]), "shape": tensor["shape"].tolist(),
                "shape_signature": tensor["shape_signature"].tolist(), "dtype": np.dtype(tensor["dtype"]).name}

    interface = {
        "runtime": f"LiteRT (ai-edge-litert {version('ai-edge-litert')})",
        "input": details(image),
        "output": details(probs),
        "batch": f"fixed at {int(image['shape'][0])} once allocated: feed one image at a time, or call "
                 f"resize_tensor_input({int(image['index'])}, [N, size, size, 3]) and allocate_tensors() first",
        "usage": "from ai_edge_litert.interpreter import Interpreter; "
                 f"interpreter = Interpreter(model_path='{path.name}'); interpreter.allocate_tensors(); "
                 f"interpreter.set_tensor({int(image['index'])}, image[None]); interpreter.invoke(); "
                 f"interpreter.get_tensor({int(probs['index'])})",
    }

    def run(images: np.ndarray) -> np.ndarray:
        interpreter.set_tensor(image["index"], images)
        interpreter.invoke()
        return interpreter.get_tensor(probs["index"]).copy()

    return run, int(image["shape"][0]), interface


RUNTIMES: dict[str, Callable[[Path], tuple[Runner, int, dict]]] = {
    "onnx": _open_onnx, "savedmodel": _open_savedmodel, "tflite": _open_tflite}


def _compute_dtype(model: keras.Model) -> str:
    policies = sorted({layer.dtype_policy.name for layer in computing_layers(model)} - {"float32"})
    return policies[0] if policies else "float32"


def _test_part(run: Run, cfg: Config, classes: list[str], split_name: str):
    """The images the run is scored on (its test part: Testing, or split.csv's under a grouped protocol, whose
    Testing folder it partly trained on), decoded as the run decodes; None and the reason when they cannot be read."""
    data_cfg = dataclasses.replace(cfg.data, make_synthetic_if_missing=False)
    try:
        return load_run_split(run, data_cfg, classes, split_name), None
    except UserError as err:
        return None, str(err)


def _check(run: Runner, batch_size: int, fmt: str, scorer: Scorer, source: Run, cfg: Config,
           classes: list[str]) -> dict:
    """The exported model, run in its own runtime on the `source` run's test images, against model.keras and the
    run's calibration (the probabilities braintumor predict gives)."""
    split_name = default_split(source.protocol(), cfg)
    split, reason = _test_part(source, cfg, classes, split_name)
    if split is None or not split.files:
        return {"checked": False, "reason": f"the run's {split_name} images could not be read: "
                                            f"{reason or 'none is readable'}"}
    model = scorer.model
    expected = scorer(split.images).probabilities
    got = [run(split.images[start:start + batch_size].astype(np.float32))
           for start in tqdm(range(0, len(split.files), batch_size), desc=f"checking {fmt} on {split_name}",
                             unit="batch", leave=False)]
    probs = np.concatenate(got).astype(np.float64)
    dtype = _compute_dtype(model)
    check = {
        "checked": True,
        "split": split_name,
        "data_root": str(Path(cfg.data.root).expanduser().resolve()),
        "images": len(split.files),
        "accuracy": float((probs.argmax(axis=1) == split.labels).mean()),
        "model_keras_accuracy": float((expected.argmax(axis=1) == split.labels).mean()),
        "max_abs_probability_difference": float(np.abs(probs - expected).max()),
        "class_changes": int((probs.argmax(axis=1) != expected.argmax(axis=1)).sum()),
        "compared_with": f"model.keras, computing in {dtype}"
                         + (f", at temperature {scorer.calibration.temperature:.6g}" if scorer.calibration else ""),
    }
    if dtype != "float32":
        check["note"] = (f"model.keras computes in {dtype}, this export in float32: the differences above come "
                         "mostly from that rounding, not from the conversion")
    return check


def _how_to_feed(cfg: Config) -> dict:
    size, steps = cfg.data.image_size, list(cfg.data.preprocess)
    return {
        "image_size": size,
        "values": f"RGB, channels last, float32 of shape (N, {size}, {size}, 3) in [0, 255]: the decoded "
                  "uint8 values, not scaled or normalised (the model does that itself)",
        "preprocessing": steps,  # decode.py's `preprocess` argument
        "decoding": pixels.describe_decoding(size, steps),
        "reference_decoder": f"{DECODER}: decode_image(path, {size}, {steps}) -> ({size}, {size}, 3) uint8; "
                             f"needs only numpy and Pillow (exported with numpy {np.__version__}, "
                             f"Pillow {pillow_version})",
        "inside_the_model": f"{cfg.model.backbone} preprocess_input (mode "
                            f"{BACKBONES[cfg.model.backbone].preprocess!r}) is the model's first layer",
    }


def model_card(run: Run, cfg: Config, classes: list[str], fmt: str, scorer: Scorer, interface: dict,
               check: dict) -> dict:
    metrics = run.read_metrics() if run.metrics.is_file() else {}
    return {
        "format": fmt,
        "file": FORMATS[fmt].file,
        "intended_use": INTENDED_USE,
        "classes": classes,  # output order
        "input": {"tensor": interface["input"], **_how_to_feed(cfg)},
        "output": {"tensor": interface["output"],
                   "values": "softmax probabilities, one per class, in the order of `classes`",
                   "calibration": _calibration_note(scorer)},
        **{key: value for key, value in interface.items() if key not in ("input", "output")},
        "check": check,
        "model": {"backbone": cfg.model.backbone, "mode": cfg.model.mode, "weights": cfg.model.weights,
                  "compute_dtype": "float32", "trained_in": _compute_dtype(scorer.model)},
        "source_run": str(run.path.resolve()),
        "metrics": {key: metrics[key] for key in ("split", "accuracy", "loss", "macro_avg", "n") if key in metrics},
        "exported_by": f"braintumor {__version__}, keras {keras.__version__}",
    }


def _calibration_note(scorer: Scorer) -> dict:
    if scorer.calibration is None:
        return {"temperature": None, "note": "the run has no calibration: these are the model's own probabilities; "
                                             "braintumor calibrate --run RUN_DIR fits one, then export again"}
    return {"temperature": scorer.calibration.temperature,
            "note": "temperature scaling fitted on the run's validation images is folded into the softmax layer "
                    "(kernel and bias divided by the temperature); the out-of-distribution detector is not part "
                    "of this export"}


def _onnx_metadata(path: Path, cfg: Config, classes: list[str]) -> None:
    """The classes and how to feed the model, in the ONNX file itself (metadata_props)."""
    import onnx

    feed = _how_to_feed(cfg)
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {
        "classes": json.dumps(classes),
        "image_size": str(feed["image_size"]),
        "preprocessing": json.dumps(feed["preprocessing"]),
        "input": feed["values"],
        "decoding": json.dumps(feed["decoding"]),
        "intended_use": INTENDED_USE,
        "model_card": f"{CARD} and the reference decoder {DECODER} are in the export folder",
    })
    onnx.save(proto, str(path))


def export_run(run: Run, fmt: str, out: Path | None = None, debug: bool = False) -> Path:
    """Write the export folder `out`/<format> (default RUN_DIR/export/<format>) in one rename; return it.
    `debug`: let the converters' and runtimes' own warnings through."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of: {', '.join(FORMATS)}")
    _check_dependencies(fmt)
    cfg, classes = run.read_config(), run.classes()
    dest = (out or run.path / EXPORT_DIR) / fmt
    rundir.ensure_writable(dest.parent)
    remove_dead_partials(dest)
    if dest.exists():
        raise UserError(f"{dest} already exists; remove it or choose another --out")
    scorer = load_scorer(run)
    model = scorer.model
    exported = with_temperature(model, scorer.calibration.temperature) if scorer.calibration else float32_model(model)
    exported(np.zeros((1, *exported.inputs[0].shape[1:]), np.float32))  # the ONNX exporter needs a called model
    try:
        with rundir.staged_dir(dest) as work:
            try:
                with warnings.catch_warnings():
                    if not debug:  # Keras' bundled tf2onnx probes `np.object` on import, which numpy 2 warns about
                        warnings.filterwarnings("ignore", message=".*np.object", category=FutureWarning)
                    exported.export(str(work / FORMATS[fmt].file), format=FORMATS[fmt].keras_format, verbose=False)
            except Exception as err:  # converters raise many types; the model is fine, the conversion is not
                raise UserError(f"export to {fmt} failed ({describe(err)}); try another --format, or run with "
                                "--debug and report the error") from err
            write_bytes(work / DECODER, Path(pixels.__file__).read_bytes())
            if fmt == "onnx":  # metadata before the check, so that the check runs the very file shipped
                _onnx_metadata(work / FORMATS[fmt].file, cfg, classes)
                write_bytes(work / PREDICT_SCRIPT, Path(importlib.util.find_spec(PREDICT_SOURCE).origin).read_bytes())
            try:
                with native_stderr_filtered(enabled=not debug):  # LiteRT announces its CPU delegate on stderr
                    runner, batch_size, interface = RUNTIMES[fmt](work / FORMATS[fmt].file)
            except Exception as err:  # a runtime that cannot load the converted model raises its own types
                raise UserError(f"the {fmt} conversion gave a model its runtime cannot load ({describe(err)}); "
                                "try another --format, or run with --debug and report the error") from err
            check = _check(runner, batch_size, fmt, scorer, run, cfg, classes)
            write_json(work / CARD, model_card(run, cfg, classes, fmt, scorer, interface, check))
    except OSError as err:
        if dest.exists():  # another export of this format finished first
            raise UserError(f"{dest} already exists; remove it or choose another --out") from err
        raise
    print(f"wrote {dest}: {FORMATS[fmt].file}, {CARD}, {DECODER}" + (f", {PREDICT_SCRIPT}" if fmt == "onnx" else ""))
    if check["checked"]:
        print(f"checked on {check['images']} {check['split']} image(s): accuracy {check['accuracy']:.4f}, "
              f"largest probability difference to model.keras {check['max_abs_probability_difference']:.2g}, "
              f"{check['class_changes']} class change(s)")
    else:
        print(f"not checked: {check['reason']}")
    return dest
