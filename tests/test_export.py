"""`braintumor export`: ONNX (onnxruntime), SavedModel and TFLite (TensorFlow) give model.keras's probabilities."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf

from braintumor.cli import main
from braintumor.core.run import Run
from braintumor.data.decode import decode_image
from braintumor.models.saved import load_run_model


@pytest.fixture(scope="module")
def run_and_images(trained_run, synth_root, tmp_path_factory):
    run = shutil.copytree(trained_run, tmp_path_factory.mktemp("export") / trained_run.name)
    files = sorted((synth_root / "Testing").glob("*/synth_000[01].jpg"))
    images = np.stack([decode_image(f, 32, []) for f in files]).astype(np.float32)
    return run, images, load_run_model(Run(run)).predict(images, verbose=0)


def test_onnx_export_matches_model_keras_in_onnxruntime(run_and_images, capsys):
    ort = pytest.importorskip("onnxruntime", reason="needs the [export] extra")
    pytest.importorskip("tf2onnx", reason="needs the [export] extra")
    run, images, expected = run_and_images
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    path = run / "export" / "onnx" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {session.get_inputs()[0].name: images})
    assert np.abs(probs - expected).max() < 1e-4
    card = json.loads((path.parent / "model_card.json").read_text())
    assert card["classes"] == ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
    assert card["input"]["shape"] == [None, 32, 32, 3] and card["format"] == "onnx"
    assert card["metrics"]["accuracy"] == json.loads((run / "metrics.json").read_text())["accuracy"]
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_savedmodel_export_matches_model_keras_in_tensorflow(run_and_images, tmp_path):
    run, images, expected = run_and_images
    out = tmp_path / "served" / "sm"
    assert main(["export", "--run", str(run), "--format", "savedmodel", "--out", str(out)]) == 0
    loaded = tf.saved_model.load(str(out))  # held: its functions reference its variables
    probs = loaded.serve(images).numpy()
    assert np.abs(probs - expected).max() < 1e-4
    assert sorted(p.name for p in out.parent.iterdir()) == ["model_card.json", "sm"]  # no temp folder left


def test_tflite_export_matches_model_keras(run_and_images, tmp_path):
    run, images, expected = run_and_images
    out = tmp_path / "model.tflite"
    assert main(["export", "--run", str(run), "--format", "tflite", "--out", str(out)]) == 0
    interpreter = tf.lite.Interpreter(model_path=str(out))
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    probs = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert np.abs(probs - expected).max() < 1e-4


def test_without_the_export_extra_a_one_line_error_names_it(run_and_images, monkeypatch, capsys):
    run, _, _ = run_and_images
    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # what Python does when a package is not installed
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(run / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install 'braintumor[export]'" in err
    assert not (run / "x.onnx").exists()
