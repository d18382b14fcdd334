"""Runs survive kills, signals, a second writer, a full disk and damaged checkpoints (README, "Crash safety")."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from test_train import CONTRACT

from braintumor.cli import main
from braintumor.core.atomic import write_json
from braintumor.core.run import Run
from braintumor.models.saved import load_run_model
from braintumor.results.reports import read_predictions

STARTED: list[subprocess.Popen] = []


def _train(*args: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "braintumor.cli", "train", *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    STARTED.append(process)
    return process


@pytest.fixture(autouse=True)
def _close_pipes():
    """Close the stderr pipe of each child a test started (a killed child's is never read to its end)."""
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()


def _error_line(process: subprocess.Popen) -> str:
    """Our one error line: the last line of stderr (TensorFlow's start-up noise comes before it)."""
    return process.stderr.read().strip().splitlines()[-1]


def _wait(predicate, process: subprocess.Popen | None = None, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        assert process is None or process.poll() is None, process.stderr.read()
        time.sleep(0.02)
    raise AssertionError("timed out")


def _epochs_done(run_dir: Path) -> int:
    with contextlib.suppress(OSError, ValueError):
        return json.loads((run_dir / "checkpoints" / "state.json").read_text())["epoch"]
    return 0


def _run_dir(outputs: Path) -> Path | None:
    runs = [p for p in outputs.glob("*/status.json")] if outputs.is_dir() else []
    return runs[0].parent if runs else None


def _history_epochs(run_dir: Path) -> list[int]:
    with (run_dir / "history.csv").open() as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def check_contract(run_dir: Path, epochs: int) -> None:
    """Every file of the README's run-directory contract is there, whole and parseable; nothing else is."""
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(CONTRACT)
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    for name in ("env.json", "data.json", "metrics.json"):
        assert isinstance(json.loads((run_dir / name).read_text()), dict)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["epochs"] == epochs
    assert _history_epochs(run_dir) == list(range(1, epochs + 1))
    files, _, probs, _ = read_predictions(run_dir / "predictions.csv")
    assert len(files) == 24 and probs.shape == (24, 4)
    for name in ("confusion_matrix.png", "curves.png"):
        assert (run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "tensorboard" / "train").is_dir() and "done: " in (run_dir / "train.log").read_text()
    load_run_model(Run(run_dir))
    assert Run(run_dir).read_calibration(dict) is not None  # whole: its checksum holds


def _log_count(run_dir: Path, text: str) -> int:
    with contextlib.suppress(OSError):
        return (run_dir / "train.log").read_text().count(text)
    return 0


@pytest.mark.slow
@pytest.mark.extended
def test_sigterm_stops_at_a_safe_point_exits_143_and_the_run_resumes(slow_config, tmp_path):
    process = _train(str(slow_config))
    run_dir = _wait(lambda: _run_dir(tmp_path / "outputs"), process)
    _wait(lambda: _epochs_done(run_dir) >= 1, process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 143
    line = _error_line(process)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and status["error"].startswith("SIGTERM: stopped after epoch")
    assert f"braintumor train --resume {run_dir}" in line and f"braintumor train --resume {run_dir}" in status["error"]
    done = _epochs_done(run_dir)
    assert _history_epochs(run_dir) == list(range(1, done + 1))  # no half epoch recorded
    assert main(["train", "--resume", str(run_dir)]) == 0
    check_contract(run_dir, 6)


@pytest.mark.slow
@pytest.mark.extended
def test_a_live_run_is_not_resumed_and_a_dead_ones_stale_lock_is_taken_over(slow_config, tmp_path, capsys):
    process = _train(str(slow_config))
    run_dir = _wait(lambda: _run_dir(tmp_path / "outputs"), process)
    _wait(lambda: _epochs_done(run_dir) >= 1, process)
    assert main(["train", "--resume", str(run_dir)]) == 2  # the first process still trains it
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"is being trained by pid {process.pid} on " in err
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert f"pid {process.pid}" in Run(run_dir).lock_file.read_text()  # stale: its process is dead
    assert main(["train", "--resume", str(run_dir)]) == 0
    check_contract(run_dir, 6)


@pytest.mark.slow
@pytest.mark.extended
def test_resume_continues_the_same_random_streams(write_config, tmp_path):
    """Online augmentation, shuffle order and dropout: resumed after epoch k = uninterrupted, to float tolerance."""
    config = write_config("streams", augmentation={"enabled": True, "mode": "online"},
                          train={"epochs": 4, "early_stopping_patience": 0, "tensorboard": False})
    assert main(["train", str(config)]) == 0
    (whole,) = [p.parent for p in (tmp_path / "outputs").glob("*/status.json")]
    shutil.move(whole, tmp_path / "whole")
    process = _train(str(config))
    run_dir = _wait(lambda: _run_dir(tmp_path / "outputs"), process)
    _wait(lambda: _epochs_done(run_dir) >= 2, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 2 <= _epochs_done(run_dir) < 4
    seconds_before_kill = json.loads((run_dir / "checkpoints" / "state.json").read_text())["train_seconds"]
    assert main(["train", "--resume", str(run_dir)]) == 0
    # the training time adds the resumed session's epochs to the killed one's
    assert json.loads((run_dir / "metrics.json").read_text())["train_seconds"] > seconds_before_kill > 0

    def history(folder: Path) -> np.ndarray:
        with (folder / "history.csv").open() as handle:
            return np.array([[float(v) for v in row.values()] for row in csv.DictReader(handle)])

    np.testing.assert_allclose(history(run_dir), history(tmp_path / "whole"), rtol=1e-5, atol=1e-6)


def test_a_kill_during_checkpoint_cleanup_only_finishes_the_bookkeeping(trained_run, tmp_path):
    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    (run_dir / "status.json").write_text(json.dumps({"state": "running", "started": "x", "finished": None}))
    leftover = run_dir / ".checkpoints.partial-removing"  # checkpoints/ renamed away, removal cut short
    leftover.mkdir()
    (leftover / "last-epoch2.keras").write_bytes(b"half")
    before = {name: (run_dir / name).read_bytes() for name in ("model.keras", "history.csv", "metrics.json")}
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert {name: (run_dir / name).read_bytes() for name in before} == before  # nothing retrained or re-reported
    assert "finishing the bookkeeping" in (run_dir / "train.log").read_text()
    check_contract(run_dir, 2)


def _unsafe_checkpoint(path: Path) -> None:
    """A .keras archive with a Lambda layer: loading it would run arbitrary code, so safe mode refuses."""
    inputs = keras.Input((32, 32, 3))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(path)


@pytest.mark.slow
def test_a_damaged_or_unsafe_checkpoint_is_one_line_exit_2(slow_config, tmp_path, capsys):
    process = _train(str(slow_config))
    run_dir = _wait(lambda: _run_dir(tmp_path / "outputs"), process)
    _wait(lambda: _epochs_done(run_dir) >= 1, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    path = run_dir / "checkpoints" / json.loads((run_dir / "checkpoints" / "state.json").read_text())["last_checkpoint"]
    intact = path.read_bytes()
    for damage, message in [
        (lambda: path.write_bytes(b""), "cannot be loaded"),  # what SIGKILL during a plain save left
        (lambda: path.write_bytes(intact[:5000]), "cannot be loaded"),
        (lambda: path.write_bytes(intact[:16384] + b"\0" * (len(intact) - 16384)), "cannot be loaded"),
        (lambda: _unsafe_checkpoint(path), "damaged or unsafe"),
        (lambda: path.unlink(), "cannot be loaded"),
    ]:
        damage()
        assert main(["train", "--resume", str(run_dir)]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("error: checkpoint ") and message in err and path.name in err, err
        assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"
    path.write_bytes(intact)
    assert main(["train", "--resume", str(run_dir)]) == 0


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 3 MB filesystem (tmpfs; needs root), grown by `remount` later."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                                           capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_status_is_written_on_a_full_disk(tiny_disk):
    run_dir = tiny_disk / "run"
    run_dir.mkdir()
    run = Run(run_dir)
    run.set_status("running")
    run.reserve_space()
    with pytest.raises(OSError), (tiny_disk / "filler").open("wb") as filler:
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
    with pytest.raises(OSError):
        write_json(tiny_disk / "other.json", {"state": "failed"})  # the disk really is full
    run.set_status("failed", "disk full")
    assert json.loads((run_dir / "status.json").read_text())["state"] == "failed"


@pytest.mark.slow
def test_a_full_disk_fails_in_one_line_leaves_no_half_file_and_resumes_after_space_is_freed(
        write_config, tiny_disk, capsys):
    config = write_config("full", output={"dir": str(tiny_disk / "outputs")},
                          train={"epochs": 2, "early_stopping_patience": 0, "tensorboard": False})
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err.strip()  # progress bars, then our line
    (run_dir,) = (tiny_disk / "outputs").iterdir()
    assert "Traceback" not in err and err.splitlines()[-1].startswith(f"error: cannot write in {run_dir} ")
    assert "No space left" in err.splitlines()[-1]
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "failed" and "--resume" in status["error"]
    leftovers = [p.name for p in run_dir.rglob(".*.partial-*")]
    assert leftovers == []
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())  # names whole files only
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {
        "state.json", state["last_checkpoint"], state["best_weights"]}
    keras.models.load_model(run_dir / "checkpoints" / state["last_checkpoint"])
    assert not (run_dir / "model.keras").exists() or keras.models.load_model(run_dir / "model.keras")
    subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)], check=True)
    assert main(["train", "--resume", str(run_dir)]) == 0
    assert _history_epochs(run_dir) == [1, 2]
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"


def _phase(run_dir: Path) -> str:
    """Where a kill landed, judged from what it left behind."""
    if (run_dir / "status.json").is_file() and '"completed"' in (run_dir / "status.json").read_text():
        return "after completion"
    if any((run_dir / "checkpoints").glob(".*.partial-*")) if (run_dir / "checkpoints").is_dir() else False:
        return "checkpoint write"
    if (run_dir / ".reports.partial-staging").exists() or (run_dir / "metrics.json").exists():
        return "reports"
    if (run_dir / ".checkpoints.partial-removing").exists():
        return "cleanup"
    return "elsewhere"


def _progress(run_dir: Path) -> tuple:
    return _epochs_done(run_dir), (run_dir / "metrics.json").exists(), (run_dir / "checkpoints").exists()


def _writing_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob(".*.partial-*"))


def _writing_reports(run_dir: Path) -> bool:
    return (run_dir / ".reports.partial-staging").exists()


@pytest.mark.slow
@pytest.mark.extended
def test_kill_anywhere_then_resume(write_config, tmp_path):
    """SIGKILL tiny trainings at chosen and random instants, resume each (killing resumes too) until complete.

    The kills take turns: at a uniform random instant of the process's work (counted from when it has
    loaded), in a window that widens whenever a kill made no progress, so that on a slow machine every
    run still gets through its first epoch; while a checkpoint is being written; while the reports are
    being written, where a kill does the most harm. It goes on until each of those three classes of
    instant has been hit (each kill costs a TensorFlow start-up, so no more than that).
    """
    rng = random.Random(0)
    targets = [None, _writing_checkpoint, _writing_reports]
    epochs, wanted, kills, phases, completed = 2, 6, 0, {}, 0
    covered = lambda: {"elsewhere", "checkpoint write", "reports"} <= phases.keys()  # noqa: E731
    while kills < wanted or not covered():
        assert kills < 4 * wanted, f"after {kills} kills some class of instant was never hit: {phases}"
        outputs = tmp_path / f"outputs-{completed}"
        config = write_config(f"anywhere{completed}", output={"dir": str(outputs)},
                              train={"epochs": epochs, "early_stopping_patience": 0})
        process, window = _train(str(config)), 3.0
        run_dir = _wait(lambda: _run_dir(outputs), process)  # noqa: B023
        while True:
            before = _progress(run_dir)
            target = targets[kills % len(targets)]
            if target is None:
                time.sleep(rng.uniform(0, window))
            else:
                with contextlib.suppress(AssertionError):  # the process may finish first
                    _wait(lambda: target(run_dir) or process.poll() is not None, timeout=60)  # noqa: B023
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                phase = _phase(run_dir)
                phases[phase] = phases.get(phase, 0) + 1
                if phase == "after completion":  # killed while exiting: nothing left to resume
                    break
                if _progress(run_dir) == before and target is None:
                    window *= 1.6
            elif process.returncode == 0:
                break
            else:
                raise AssertionError(process.stderr.read())
            resumed = _log_count(run_dir, "resuming")
            process = _train("--resume", str(run_dir))
            _wait(lambda: _log_count(run_dir, "resuming") > resumed or process.poll() is not None)  # noqa: B023
        check_contract(run_dir, epochs)
        completed += 1
    print(f"\nkill-anywhere: {kills} kills in {completed} runs, all resumed and complete; landed in: {phases}")
