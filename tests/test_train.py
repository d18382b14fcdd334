"""End-to-end training: the run-directory contract, bad input, failure marker, resume, quickstart."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from braintumor.cli import main
from braintumor.results.reports import read_predictions

CONTRACT = ["status.json", "config.yaml", "env.json", "data.json", "split.csv", "history.csv", "model.keras",
            "metrics.json", "classification_report.txt", "confusion_matrix.png", "curves.png", "predictions.csv",
            "train.log", "tensorboard", "calibration.npz",
            "calibration.json"]
ROOT = Path(__file__).resolve().parents[1]


def _runs(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.iterdir() if p.is_dir()) if output_dir.exists() else []


def test_run_directory_contract(trained_run):
    assert sorted(p.name for p in trained_run.iterdir()) == sorted(CONTRACT)
    assert json.loads((trained_run / "status.json").read_text())["state"] == "completed"
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["train"]["epochs"] == 2 and config["augmentation"]["brightness"] == [0.8, 2.0]  # resolved
    env = json.loads((trained_run / "env.json").read_text())
    assert {"tensorflow", "keras", "keras_backend", "device", "precision", "seed", "git_commit"} <= set(env)
    data = json.loads((trained_run / "data.json").read_text())
    assert data["on_disk"]["Training"]["total"] == 64 and data["counts"]["test"]["total"] == 24
    assert len(data["validation_files"]) == data["counts"]["validation"]["total"] == 16
    with (trained_run / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2"] and {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(rows[0])
    files, y_true, probs, classes = read_predictions(trained_run / "predictions.csv")
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert len(files) == 24 and files[0].startswith("Testing/") and classes == data["classes"]
    assert metrics["accuracy"] == pytest.approx((probs.argmax(1) == y_true).mean())
    assert metrics["best_epoch"] in (1, 2)


def test_train_log_keeps_what_the_console_showed_and_tensorboard_has_the_run(trained_run):
    log = (trained_run / "train.log").read_text()
    assert "run directory: " in log and "Testing: accuracy" in log and "━" not in log  # no progress bars
    assert "decoding" not in log
    events = {p.parent.name for p in (trained_run / "tensorboard").rglob("events.out.tfevents.*")}
    assert events == {"train", "validation", "test"}  # scalars per epoch; the confusion matrix under test


def test_a_random_frozen_backbone_warns(write_config, caplog):
    """(train.tensorboard false is checked by test_sweep's local sweep, whose runs turn it off.)"""
    from braintumor.core.config import load_config
    from braintumor.engine.train import _prepare

    _prepare(load_config(write_config("random-vgg", model={"backbone": "vgg16", "mode": "feature-extraction"})))
    assert "random, frozen weights, so expect accuracy near chance (25 %)" in caplog.text


@pytest.mark.parametrize("sections, message", [
    ({"data": {"root": "/nonexistent/brain-mri"}}, "data root /nonexistent/brain-mri not found"),
    ({"model": {"weights": "/nonexistent/vgg.h5"}}, "model.weights file /nonexistent/vgg.h5 not found"),
    ({"model": {"backbone": "alexnet"}}, "model.backbone = 'alexnet' is not allowed"),
    ({"train": {"learning_rate": -1}}, "train.learning_rate = -1.0 is not allowed"),
    ({"tain": {"epochs": 1}}, "unknown key 'tain'; did you mean 'train'?"),
    ({"model": {"backbone": "inceptionv3"}}, "data.image_size = 32 is below inceptionv3's minimum"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(write_config, tmp_path, capsys, sections, message):
    assert main(["train", str(write_config("bad", **sections))]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert _runs(tmp_path / "outputs") == []


def test_unwritable_output_dir_exits_2(write_config, tmp_path, capsys):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("")
    assert main(["train", str(write_config("bad", output={"dir": str(blocker / "outputs")}))]) == 2
    assert "cannot be created" in capsys.readouterr().err


def _start(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "braintumor.cli", "train", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_first_epoch(process: subprocess.Popen, output_dir: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = list(output_dir.glob("*/checkpoints/state.json"))
        if states:
            return states[0].parent.parent
        assert process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    raise AssertionError("no epoch finished in time")


@pytest.mark.slow
def test_resume_after_sigkill_completes_the_run(slow_config, tmp_path):
    with _start(slow_config) as process:  # closes its stderr pipe
        run_dir = _wait_for_first_epoch(process, tmp_path / "outputs")
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert json.loads((run_dir / "status.json").read_text())["state"] == "running"
        done = json.loads((run_dir / "checkpoints" / "state.json").read_text())["epoch"]
        assert 1 <= done < 6, "the kill must land mid-run"
        assert main(["train", "--resume", str(run_dir)]) == 0
        assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
        with (run_dir / "history.csv").open() as handle:
            assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2, 3, 4, 5, 6]
        assert sorted(p.name for p in run_dir.iterdir()) == sorted(CONTRACT)
        assert main(["train", "--resume", str(run_dir)]) == 2  # a completed run is not resumed again


@pytest.mark.slow
def test_interrupted_run_is_marked_failed(slow_config, tmp_path):
    with _start(slow_config) as process:  # closes its stderr pipe
        run_dir = _wait_for_first_epoch(process, tmp_path / "outputs")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        status = json.loads((run_dir / "status.json").read_text())
        assert status["state"] == "failed" and "KeyboardInterrupt" in status["error"]
