"""Classify image files with an exported braintumor ONNX model, without braintumor.

`braintumor export --format onnx` copies this file unchanged into the export folder as predict.py,
next to model.onnx, model_card.json and decode.py. It needs only onnxruntime, numpy and Pillow, and
reads nothing but that folder:

    python predict.py scan1.jpg scan2.png

prints what `braintumor predict --json` prints for the same files, but for the out-of-distribution fields
(the detector is not exported): a JSON list of {"file", "predicted", "probabilities": {class: p}}.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime

FOLDER = Path(__file__).resolve().parent


def _decoder():
    """decode.py of this folder, by path: `python -I` does not put the script's folder on sys.path."""
    spec = importlib.util.spec_from_file_location("decode", FOLDER / "decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(files: list[str]) -> int:
    if not files:
        print(f"usage: python {Path(__file__).name} IMAGE...", file=sys.stderr)
        return 2
    card = json.loads((FOLDER / "model_card.json").read_text())
    decode, classes = _decoder(), card["classes"]
    size, steps = card["input"]["image_size"], card["input"]["preprocessing"]
    session = onnxruntime.InferenceSession(str(FOLDER / card["file"]), providers=["CPUExecutionProvider"])
    image_name, probs_name = card["input"]["tensor"]["name"], card["output"]["tensor"]["name"]
    results = []
    for file in files:
        try:
            image = decode.decode_image(file, size, steps)[None].astype(np.float32)
        except decode.UNREADABLE as err:  # as braintumor predict: say why, go on
            print(f"skipped {file}: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        (probs,) = session.run([probs_name], {image_name: image})[0]
        results.append({"file": file, "predicted": classes[int(probs.argmax())],
                        "probabilities": {name: float(p) for name, p in zip(classes, probs, strict=True)}})
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
