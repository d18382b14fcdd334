"""`braintumor export`: each format gives model.keras's probabilities in its own runtime (onnxruntime,
TensorFlow, the TFLite interpreter), lands in its own folder with its card, checked on the run's Testing
images, in one rename; and the export folder alone, with onnxruntime, numpy and Pillow, reproduces
`braintumor predict`."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
import tensorflow as tf
import yaml
from ai_edge_litert.interpreter import Interpreter
from conftest import REAL_DATA, needs_real_data

from braintumor.apps import export
from braintumor.cli import main
from braintumor.core.run import Run
from braintumor.data.pixels import decode_image
from braintumor.engine.scoring import load_scorer

CLASSES = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]


@pytest.fixture(scope="module")
def run_and_images(trained_run, synth_root, tmp_path_factory):
    run = shutil.copytree(trained_run, tmp_path_factory.mktemp("export") / trained_run.name)
    files = sorted((synth_root / "Testing").glob("*/synth_000[01].jpg"))
    images = np.stack([decode_image(f, 32, []) for f in files]).astype(np.float32)
    return run, images, load_scorer(Run(run))(images).probabilities  # calibrated, as braintumor predict gives


def _card(folder):
    return json.loads((folder / export.CARD).read_text())


def _assert_checked_on_testing(card, max_difference):
    check = card["check"]
    assert check["checked"] and check["split"] == "Testing" and check["images"] == 24  # the synthetic Testing set
    assert check["max_abs_probability_difference"] < max_difference and check["class_changes"] == 0
    assert check["accuracy"] == check["model_keras_accuracy"]


def test_onnx_export_matches_model_keras_in_onnxruntime_and_carries_its_card(run_and_images, capsys):
    ort = pytest.importorskip("onnxruntime", reason="needs the [export] extra")
    pytest.importorskip("tf2onnx", reason="needs the [export] extra")
    run, images, expected = run_and_images
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    folder = run / "export" / "onnx"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["onnx"]  # no temp folder left
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {session.get_inputs()[0].name: images})
    assert np.abs(probs - expected).max() < 1e-4
    card = _card(folder)
    assert card["classes"] == CLASSES and card["format"] == "onnx" and "not a medical device" in card["intended_use"]
    assert card["output"]["calibration"]["temperature"] == Run(run).read_metrics()["calibration"]["temperature"]
    assert card["input"]["tensor"] == {"name": session.get_inputs()[0].name, "shape": [None, 32, 32, 3],
                                       "dtype": "float32"}
    assert card["output"]["tensor"]["name"] == session.get_outputs()[0].name
    assert card["input"]["preprocessing"] == [] and "BILINEAR" in " ".join(card["input"]["decoding"])
    assert card["metrics"]["accuracy"] == json.loads((run / "metrics.json").read_text())["accuracy"]
    _assert_checked_on_testing(card, 1e-4)
    metadata = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert json.loads(metadata["classes"]) == CLASSES and json.loads(metadata["preprocessing"]) == []
    assert metadata["image_size"] == "32" and "not a medical device" in metadata["intended_use"]
    assert {"decode.py", "predict.py"} <= {p.name for p in folder.iterdir()}
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err


def test_two_formats_in_one_folder_keep_their_own_cards_and_match_model_keras(run_and_images, tmp_path):
    run, images, expected = run_and_images
    out = tmp_path / "served"
    for fmt in ("savedmodel", "tflite"):
        assert main(["export", "--run", str(run), "--format", fmt, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["savedmodel", "tflite"]  # no temp folder left
    saved, lite = _card(out / "savedmodel"), _card(out / "tflite")
    assert (saved["format"], saved["file"], lite["format"], lite["file"]) == (
        "savedmodel", "saved_model", "tflite", "model.tflite")

    loaded = tf.saved_model.load(str(out / "savedmodel" / "saved_model"))  # held: its functions use its variables
    serve = loaded.signatures[saved["signature"]]
    probs = serve(**{saved["input"]["tensor"]["key"]: tf.constant(images)})[saved["output"]["tensor"]["key"]]
    assert np.abs(probs.numpy() - expected).max() < 1e-4
    _assert_checked_on_testing(saved, 1e-4)

    interpreter = Interpreter(model_path=str(out / "tflite" / "model.tflite"))  # LiteRT, as on a device
    interpreter.allocate_tensors()
    assert lite["input"]["tensor"]["shape"] == [1, 32, 32, 3] and "fixed at 1" in lite["batch"]
    probs = []
    for image in images:  # one at a time, as the card says
        interpreter.set_tensor(lite["input"]["tensor"]["index"], image[None])
        interpreter.invoke()
        probs.append(interpreter.get_tensor(lite["output"]["tensor"]["index"])[0])
    assert np.abs(np.array(probs) - expected).max() < 1e-4
    _assert_checked_on_testing(lite, 1e-4)


def test_without_the_run_data_the_card_says_the_export_is_unchecked(run_and_images, tmp_path):
    run = shutil.copytree(run_and_images[0], tmp_path / "moved", ignore=shutil.ignore_patterns("export"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["root"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["export", "--run", str(run), "--format", "tflite"]) == 0
    check = _card(run / "export" / "tflite")["check"]
    assert not check["checked"] and "gone not found" in check["reason"]


@pytest.mark.parametrize(("fmt", "module"), [("onnx", "tf2onnx"), ("tflite", "ai_edge_litert")])
def test_without_the_export_extra_a_one_line_error_names_it(fmt, module, run_and_images, monkeypatch, capsys,
                                                            tmp_path):
    run, _, _ = run_and_images
    monkeypatch.setitem(sys.modules, module, None)  # what Python does when a package is not installed
    assert main(["export", "--run", str(run), "--format", fmt, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and module in err and "pip install 'braintumor[export]'" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_an_export_killed_before_its_card_leaves_no_export_and_the_next_cleans_up(run_and_images, tmp_path):
    """SIGKILL at the moment the model file is written but the card is not: nothing lands; the next export works."""
    run, _, _ = run_and_images
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from braintumor.apps import export
        from braintumor.core.run import Run
        def kill_instead(path, obj):  # the card is the export's last file
            if path.name == export.CARD:
                os.kill(os.getpid(), signal.SIGKILL)
        export.write_json = kill_instead
        export.export_run(Run(Path({str(run)!r})), "tflite", Path({str(out)!r}))
        """)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (partial,) = out.iterdir()
    assert partial.name.startswith(".tflite.partial-") and (partial / "model.tflite").is_file()
    assert not (partial / export.CARD).exists()
    live = out / f".tflite.partial-{os.getpid()}-00000000"  # an export still running (this process) is left alone
    live.mkdir()
    assert main(["export", "--run", str(run), "--format", "tflite", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [live.name, "tflite"]
    assert _card(out / "tflite")["format"] == "tflite"


@pytest.mark.slow
def test_a_bfloat16_run_s_card_says_how_far_its_float32_export_is(write_config, capsys):
    pytest.importorskip("tf2onnx", reason="needs the [export] extra")
    from braintumor.core.config import load_config
    from braintumor.engine.train import run as train

    # no TensorBoard logs: nothing here reads them, and writing them costs a run seconds
    run = train(load_config(write_config("bf16", train={"precision": "mixed_bfloat16", "tensorboard": False})))
    assert main(["export", "--run", str(run), "--format", "onnx"]) == 0
    card = _card(run / "export" / "onnx")
    check = card["check"]
    assert card["model"]["trained_in"] == "mixed_bfloat16" and "mixed_bfloat16" in check["compared_with"]
    assert "float32" in check["note"] and 0 < check["max_abs_probability_difference"] < 0.1
    assert f"{check['max_abs_probability_difference']:.2g}" in capsys.readouterr().out


ISOLATED = """
import importlib.util, runpy, sys
stubs, script, *files = sys.argv[1:]
sys.path.insert(0, stubs)
for name in ("braintumor", "keras", "tensorflow", "scipy"):
    assert importlib.util.find_spec(name) is None, f"{name} is importable"
sys.argv = [script, *files]
runpy.run_path(script, run_name="__main__")
"""


def _only_onnxruntime_numpy_pillow(folder):
    """A folder on which Python finds onnxruntime, numpy and Pillow (with their bundled libraries), nothing else."""
    import numpy
    import onnxruntime
    import PIL

    folder.mkdir()
    for module in (numpy, onnxruntime, PIL):
        package = os.path.dirname(module.__file__)
        (folder / os.path.basename(package)).symlink_to(package)
    site = os.path.dirname(os.path.dirname(numpy.__file__))
    for libs in ("numpy.libs", "pillow.libs"):
        if os.path.isdir(os.path.join(site, libs)):
            (folder / libs).symlink_to(os.path.join(site, libs))
    return folder


@needs_real_data
@pytest.mark.slow
@pytest.mark.realdata
def test_the_onnx_export_folder_alone_reproduces_braintumor_predict_on_real_images(
        run_and_images, write_config, tmp_path, capsys):
    """Acceptance 4: `python -I -S` with only onnxruntime, numpy and Pillow importable, reading the export folder."""
    pytest.importorskip("tf2onnx", reason="needs the [export] extra")
    from braintumor.core.config import load_config
    from braintumor.engine.train import run as train

    files = [str(f) for name in CLASSES for f in sorted((REAL_DATA / "Testing" / name).iterdir())[:5]]
    preprocessed = [train(load_config(write_config(step, data={"image_size": 64, "preprocess": ["brain_crop", step]},
                                                   train={"tensorboard": False})))  # as above: unread
                    for step in ("standardize", "equalize")]
    stubs = _only_onnxruntime_numpy_pillow(tmp_path / "stubs")
    wrapper = tmp_path / "isolated.py"
    wrapper.write_text(ISOLATED)
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not an image")
    for run in (*preprocessed, run_and_images[0]):
        out = tmp_path / run.name
        assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(out)]) == 0
        folder = out / "onnx"
        card = _card(folder)
        spec = importlib.util.spec_from_file_location("exported_decode", folder / "decode.py")
        copied = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(copied)
        size, steps = card["input"]["image_size"], card["input"]["preprocessing"]
        for file in files:
            assert np.array_equal(copied.decode_image(file, size, steps), decode_image(file, size, steps))
        capsys.readouterr()
        assert main(["predict", "--run", str(run), "--json", *files]) == 0
        expected = json.loads(capsys.readouterr().out)
        alone = subprocess.run([sys.executable, "-I", "-S", str(wrapper), str(stubs), str(folder / "predict.py"),
                                *files, str(not_an_image)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert alone.returncode == 0, alone.stderr
        assert f"skipped {not_an_image}: UnidentifiedImageError" in alone.stderr  # as braintumor predict skips it
        got = json.loads(alone.stdout)
        assert [g["file"] for g in got] == files and [g["predicted"] for g in got] == [e["predicted"] for e in expected]
        difference = max(abs(g["probabilities"][c] - e["probabilities"][c])
                         for g, e in zip(got, expected, strict=True) for c in CLASSES)
        with capsys.disabled():  # the acceptance figure, shown with -s
            print(f"\n{run.name}: largest probability difference to braintumor predict {difference:.2g}")
        assert difference < 1e-3
