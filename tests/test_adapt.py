"""`braintumor adapt`: AdaBN changes BatchNorm's moving statistics and nothing else, into a new complete run."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from braintumor.cli import main
from braintumor.core.run import Run
from braintumor.engine.callbacks import batchnorm_layers


def _hashes(folder: Path) -> dict[str, str]:
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _brighter_site(synth_root: Path, dest: Path) -> Path:
    """The synthetic Testing images, twice as bright, under class folders (whose labels adapt ignores)."""
    for source in sorted((synth_root / "Testing").rglob("*.jpg"))[::2]:
        target = dest / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = np.asarray(Image.open(source).convert("RGB"), np.float32)
        Image.fromarray(np.clip(pixels * 2 + 20, 0, 255).astype(np.uint8)).save(target)
    return dest


def _weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    """Every variable that model.keras saves, by layer path and name."""
    return {variable.path: np.asarray(variable) for variable in model.weights}


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def site(synth_root, tmp_path) -> Path:
    return _brighter_site(synth_root, tmp_path / "site")


def test_adapt_changes_batchnorm_statistics_only_and_writes_a_complete_run(trained_run, site, tmp_path, caplog):
    runs = tmp_path / "runs"  # the source and its adapted run side by side, for compare
    source = Path(shutil.copytree(trained_run, runs / trained_run.name))
    before = _hashes(source)
    new = runs / "adapted"
    assert main(["adapt", "--run", str(source), "--data", str(site), "--out", str(new)]) == 0
    assert f"fit one with braintumor calibrate --run {new}" in caplog.text
    assert f"only {len(list(site.rglob('*.jpg')))} image(s) of {site} were used" in caplog.text  # under 64: noisy
    assert _hashes(source) == before  # the source run is only read

    old_model = keras.models.load_model(source / "model.keras", compile=False)
    new_model = keras.models.load_model(new / "model.keras", compile=False)
    old, adapted = _weights(old_model), _weights(new_model)
    assert old.keys() == adapted.keys()
    statistics = {path for path in old if path.endswith(("moving_mean", "moving_variance"))}
    assert len(statistics) == 2 * 3  # the three BatchNorm layers of the tiny simple CNN
    for path in old.keys() - statistics:  # gamma, beta, every kernel and bias: bit for bit
        assert np.array_equal(old[path], adapted[path]), path
    changed = [path for path in statistics if not np.allclose(old[path], adapted[path], rtol=1e-3)]
    assert len(changed) == len(statistics), sorted(statistics - set(changed))
    assert all((adapted[path] > 0).all() for path in statistics if path.endswith("moving_variance"))

    provenance = json.loads((new / "adaptation.json").read_text())
    assert provenance["source_run"] == str(source.resolve()) and provenance["data"] == str(site.resolve())
    assert provenance["images"] == provenance["images_found"] == len(list(site.rglob("*.jpg")))
    assert provenance["batchnorm_layers"] == 3 and len(provenance["images_sha256"]) == 64
    assert not (new / "calibration.npz").exists() and "calibrate" in provenance["calibration"]
    run = Run.completed(new, "evaluate")
    assert run.read_config().label == f"shared-run + AdaBN {site.name}"
    assert run.read_metrics()["adapted_from"] == str(source)

    assert main(["evaluate", "--run", str(new), "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["accuracy"] == run.read_metrics()["accuracy"]
    assert main(["compare", str(runs), "--out", str(tmp_path / "compare")]) == 0
    configurations = (tmp_path / "compare" / "configurations.csv").read_text()
    assert "shared-run + AdaBN site" in configurations  # its own row: not pooled with the source as a seed


def test_frozen_batchnorm_layers_are_adapted_too_and_stay_frozen(trained_run, site, tmp_path):
    """A feature-extraction model's BatchNorm layers are frozen, and Keras then ignores training=True in them."""
    source = Path(shutil.copytree(trained_run, tmp_path / "frozen"))
    model = keras.models.load_model(source / "model.keras", compile=False)
    model.get_layer("simple_cnn").trainable = False
    model.save(source / "model.keras")
    assert main(["adapt", "--run", str(source), "--data", str(site), "--max-images", "5"]) == 0
    (new,) = tmp_path.glob("frozen-adapted-*")  # the default: beside the source, named after it
    assert re.fullmatch(r"frozen-adapted-\d{8}-\d{6}", new.name)
    provenance = json.loads(Run(new).adaptation.read_text())  # a sample of 5, drawn with the run's seed
    assert provenance["images"] == 5 and provenance["images_found"] == len(list(site.rglob("*.jpg"))) > 5
    adapted = keras.models.load_model(new / "model.keras", compile=False)
    bn = batchnorm_layers(adapted)
    assert bn and not any(layer.trainable for layer in bn)
    for layer in bn:
        old = model.get_layer("simple_cnn").get_layer(layer.name)
        assert not np.allclose(np.asarray(old.moving_mean), np.asarray(layer.moving_mean), rtol=1e-3), layer.name


def test_bad_input_is_one_line_and_writes_nothing(trained_run, synth_root, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "notes").mkdir(parents=True)
    (empty / "notes" / "readme.txt").write_text("no images here")
    out = tmp_path / "new"
    base = ["adapt", "--run", str(trained_run), "--out", str(out)]
    assert "holds no image files" in _one_line_error(capsys, [*base, "--data", str(empty)])
    assert "is not a folder" in _one_line_error(capsys, [*base, "--data", str(tmp_path / "missing")])
    (empty / "scan.jpg").write_bytes(b"not a JPEG")
    assert "could be read" in _one_line_error(capsys, [*base, "--data", str(empty)])

    err = _one_line_error(capsys, ["adapt", "--run", str(tmp_path), "--data", str(synth_root)])
    assert f"adapt: {tmp_path} is not a run folder" in err
    out.mkdir()
    assert "already exists" in _one_line_error(capsys, [*base, "--data", str(synth_root)])
    assert main([*base, "--data", str(synth_root), "--max-images", "5000"]) == 2  # argparse: over the bound
    capsys.readouterr()
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["empty", "new"]


def test_a_model_without_batchnorm_is_refused(trained_run, synth_root, tmp_path, capsys):
    from braintumor.core.config import ModelConfig
    from braintumor.models.build import build_model

    source = Path(shutil.copytree(trained_run, tmp_path / "vgg"))
    build_model(ModelConfig(backbone="vgg16", weights="none", mode="feature-extraction"), 32, 4).save(
        source / "model.keras")
    err = _one_line_error(capsys, ["adapt", "--run", str(source), "--data", str(synth_root)])
    assert "has no BatchNormalization layer, and AdaBN only recomputes BatchNorm statistics" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vgg"]


@pytest.mark.slow
def test_a_kill_before_the_last_file_leaves_no_run(trained_run, site, tmp_path):
    """SIGKILL while the adapted run is being written (at its status, the last file): only a hidden sibling is
    left, which no command takes for a run, and adapt to the same folder then works."""
    out = tmp_path / "adapted"
    killed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from braintumor.core.run import Run
        from braintumor.engine.adapt import adapt_run
        Run.set_status = lambda self, state, error=None: os.kill(os.getpid(), signal.SIGKILL)
        adapt_run(Run(Path({str(trained_run)!r})), Path({str(site)!r}), 512, Path({str(out)!r}))
        """)], capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (partial,) = tmp_path.glob(".adapted.partial-*")
    assert (partial / "model.keras").is_file() and not (partial / "status.json").exists()
    assert not out.exists()
    assert main(["adapt", "--run", str(trained_run), "--data", str(site), "--out", str(out)]) == 0
    assert Run.completed(out, "test").read_config().label.endswith(f"+ AdaBN {site.name}")
