"""`braintumor predict` (one line per image, inputs never overwritten, outputs checked before the work), and a
model.keras that plain Keras loads (and old runs that still load)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from braintumor.cli import main
from braintumor.core.backbones import BACKBONES
from braintumor.core.config import ModelConfig
from braintumor.core.run import Run
from braintumor.data.decode import decode_image
from braintumor.engine.scoring import load_scorer
from braintumor.models.build import BackbonePreprocess, build_model, preprocess_layer
from braintumor.models.saved import load_run_model
from braintumor.results.reports import read_predictions


def _predict_json(capsys, *args: str) -> list[dict]:
    assert main(["predict", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_json_agrees_with_the_runs_predictions_csv(trained_run, synth_root, capsys):
    files, _, probs, classes = read_predictions(trained_run / "predictions.csv")
    result = _predict_json(capsys, "--run", str(trained_run), str(synth_root / "Testing"), "--batch-size", "5")
    assert [Path(r["file"]).relative_to(synth_root).as_posix() for r in result] == files
    for row, expected in zip(result, probs, strict=True):
        assert row["predicted"] == classes[int(expected.argmax())]
        assert list(row["probabilities"]) == classes
        assert np.allclose(list(row["probabilities"].values()), expected, atol=1e-5)


def test_unreadable_files_are_reported_and_skipped_exit_2_only_when_nothing_reads(trained_run, synth_root, tmp_path,
                                                                                 capsys):
    good = synth_root / "Testing" / "no_tumor" / "synth_0000.jpg"
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    result = _predict_json(capsys, "--run", str(trained_run), str(good), str(text), str(truncated),
                           str(tmp_path / "missing.png"))
    assert [r["file"] for r in result] == [str(good)]
    capsys.readouterr()
    assert main(["predict", "--run", str(trained_run), str(good), str(text), str(truncated)]) == 0
    err = capsys.readouterr().err
    assert f"skipped {text}" in err and f"skipped {truncated}" in err
    assert main(["predict", "--run", str(trained_run), str(text), str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err
    assert "no such file" in err and "none of the 2 file(s) could be read" in err


def test_csv_has_the_columns_of_predictions_csv(trained_run, synth_root, tmp_path, capsys):
    out = tmp_path / "p.csv"
    folder = synth_root / "Testing" / "meningioma_tumor"
    assert main(["predict", "--run", str(trained_run), str(folder), "--csv", str(out)]) == 0
    files, y_true, probs, classes = read_predictions(out)  # the reader of predictions.csv accepts it
    assert files == [str(p) for p in sorted(folder.glob("*.jpg"))]
    assert set(y_true) == {classes.index("meningioma_tumor")}  # `true` from the class folder
    assert (trained_run / "predictions.csv").read_text().splitlines()[0] == out.read_text().splitlines()[0]


def test_tta_averages_the_flipped_image_like_evaluate(trained_run, synth_root, capsys):
    image = synth_root / "Testing" / "glioma_tumor" / "synth_0003.jpg"
    (plain,) = _predict_json(capsys, "--run", str(trained_run), str(image))
    (tta,) = _predict_json(capsys, "--run", str(trained_run), str(image), "--tta")
    decoded = decode_image(image, 32, [])[None].astype(np.float32)
    flipped = load_scorer(Run(trained_run))(decoded[:, :, ::-1]).probabilities[0]  # calibrated, as predict
    expected = (np.array(list(plain["probabilities"].values())) + flipped) / 2
    assert np.allclose(list(tta["probabilities"].values()), expected, atol=1e-5)


def test_bad_arguments_fail_in_one_line(trained_run, synth_root, capsys):
    image = str(synth_root / "Testing" / "glioma_tumor" / "synth_0000.jpg")
    assert main(["predict", "--run", str(trained_run), image, "--gradcam-class", "nope", "--gradcam", "x"]) == 2
    assert "use one of: glioma_tumor" in capsys.readouterr().err
    assert main(["predict", "--run", str(trained_run), image, "--batch-size", "0"]) == 2
    capsys.readouterr()
    assert main(["predict", "--run", str(trained_run), image, "--batch-size", "100000"]) == 2
    assert "is over 1024, the most images one model call may take" in capsys.readouterr().err
    assert main(["predict", "--run", str(trained_run) + "-missing", image]) == 2


@pytest.mark.parametrize("name", list(BACKBONES))
def test_preprocess_layer_equals_keras_applications_preprocess_input(name):
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    module = BACKBONES[name].preprocess_module
    expected = getattr(keras.applications, module).preprocess_input(images.copy()) if module else images / 255
    assert np.allclose(np.asarray(preprocess_layer(name)(images)), expected, atol=1e-4)


PLAIN_KERAS = """
import sys, keras, numpy as np
for name in sys.argv[1:]:  # NAME.keras, NAME.npy (images) -> NAME-p.npy (probabilities)
    model = keras.models.load_model(f"{name}.keras", safe_mode=True)
    np.save(f"{name}-p.npy", model.predict(np.load(f"{name}.npy"), verbose=0))
assert not any(name.startswith("braintumor") for name in sys.modules), "braintumor was imported"
"""


@pytest.mark.slow
@pytest.mark.parametrize("backbones", [
    # one fresh interpreter for both: importing TensorFlow there costs more than the two models together
    pytest.param([("vgg16", 32), ("simple_cnn", 32)], id="vgg16+simple_cnn"),
    pytest.param([("inceptionv3", 75)], id="inceptionv3", marks=pytest.mark.extended),
])
def test_saved_model_loads_in_plain_keras_with_the_same_probabilities(backbones, tmp_path):
    models = {}
    for name, size in backbones:
        models[name] = build_model(ModelConfig(backbone=name, weights="none", mode="full"), size, 4)
        models[name].save(tmp_path / f"{name}.keras")
        images = np.random.default_rng(1).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
        np.save(tmp_path / f"{name}.npy", images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no way to import our package
    subprocess.run([sys.executable, "-c", PLAIN_KERAS, *models], check=True, env=env, cwd=tmp_path, capture_output=True)
    for name, model in models.items():
        expected = model.predict(np.load(tmp_path / f"{name}.npy"), verbose=0)
        assert np.allclose(np.load(tmp_path / f"{name}-p.npy"), expected, atol=1e-6), name


def test_runs_saved_with_the_old_custom_preprocessing_layer_still_load(tmp_path):
    inputs = keras.Input((32, 32, 3), name="image")
    x = BackbonePreprocess("vgg16", name="preprocess")(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    old = keras.Model(inputs, keras.layers.Dense(4, activation="softmax")(x))
    (tmp_path / "run").mkdir()
    old.save(tmp_path / "run" / "model.keras")
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    loaded = load_run_model(Run(tmp_path / "run"))
    assert np.allclose(loaded.predict(images, verbose=0), old.predict(images, verbose=0), atol=1e-6)


def _one_line_error(capsys, *args: str) -> str:
    assert main(["predict", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured.err
    return captured.err


def test_gradcam_never_overwrites_an_input_scan(trained_run, synth_root, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for jpg in sorted((synth_root / "Testing" / "glioma_tumor").glob("*.jpg"))[:3]:
        with Image.open(jpg) as image:
            image.save(scans / f"{jpg.stem}.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.link(scans / "synth_0001.png", elsewhere / "synth_0001.png")  # the same file under another name
    before = {path: path.read_bytes() for path in [*scans.iterdir(), *elsewhere.iterdir()]}
    run = ["--run", str(trained_run)]
    for folder in (scans, scans / "overlays"):  # the input folder, or a folder inside it
        assert "is inside the input folder" in _one_line_error(capsys, *run, str(scans), "--gradcam", str(folder))
    for image, out in ((scans / "synth_0000.png", scans), (scans / "synth_0001.png", elsewhere)):
        err = _one_line_error(capsys, *run, str(image), "--gradcam", str(out))
        assert f"would overwrite the input image {image}" in err
    assert {path: path.read_bytes() for path in [*scans.rglob("*"), *elsewhere.iterdir()]} == before


def test_a_file_name_cannot_forge_a_result_line(trained_run, synth_root, tmp_path, capsys):
    folder = tmp_path / "odd names"
    folder.mkdir()
    scan = synth_root / "Testing" / "no_tumor" / "synth_0000.jpg"
    forged = "scan.jpg  glioma_tumor 1.000  (x)\n\x1b[2Kforged"
    (folder / f"{forged}.jpg").write_bytes(scan.read_bytes())
    (folder / "text\nnot an image.jpg").write_text("not an image")
    assert main(["predict", "--run", str(trained_run), str(folder), "--csv", str(tmp_path / "p.csv")]) == 0
    captured = capsys.readouterr()
    (line,) = captured.out.splitlines()
    assert line.startswith(f"{folder}/scan.jpg  glioma_tumor 1.000  (x)\\n\\x1b[2Kforged.jpg  ")
    (skipped,) = [line for line in captured.err.splitlines() if line.startswith("skipped")]
    assert skipped.startswith(f"skipped {folder}/text\\nnot an image.jpg: ")
    with (tmp_path / "p.csv").open(newline="") as handle:
        assert [row[0] for row in csv.reader(handle)] == ["file", str(folder / f"{forged}.jpg")]  # kept exactly
    (result,) = _predict_json(capsys, "--run", str(trained_run), str(folder / f"{forged}.jpg"))
    assert result["file"] == str(folder / f"{forged}.jpg")


def test_an_unwritable_csv_or_gradcam_path_fails_before_the_model_is_loaded(trained_run, synth_root, tmp_path,
                                                                            capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "model.keras").write_bytes(b"damaged")  # loading it would fail with another message
    image = str(synth_root / "Testing" / "glioma_tumor" / "synth_0000.jpg")
    a_file = tmp_path / "a-file"
    a_file.write_text("a regular file")
    for option, path in (("--csv", a_file / "p.csv"), ("--gradcam", a_file / "cams"), ("--gradcam", a_file)):
        err = _one_line_error(capsys, "--run", str(run), image, option, str(path))
        assert f"cannot write {option} {path} ([Errno 20] not a folder: '{a_file}')" in err
    assert "is a folder" in _one_line_error(capsys, "--run", str(run), image, "--csv", str(tmp_path))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file", "run"]  # nothing written
    assert "model.keras cannot be loaded" in _one_line_error(capsys, "--run", str(run), image)
