"""Run folders and the one atomic-output helper: unique names, nothing half-written, nothing left behind; the Run
type, and the one line every command that uses a trained run gives for a folder it cannot use."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest

from braintumor.cli import main
from braintumor.core.atomic import atomic_output, write_json, write_text
from braintumor.core.errors import UserError
from braintumor.core.run import Run
from braintumor.core.rundir import staged_dir, unique_dir


def test_unique_dir_never_reuses_a_name(tmp_path):
    made = [unique_dir(tmp_path / "outputs", "run-20260101-000000") for _ in range(3)]
    assert [p.name for p in made] == ["run-20260101-000000", "run-20260101-000000-2", "run-20260101-000000-3"]
    assert all(p.is_dir() for p in made)
    (made[1] / "model.keras").write_text("first run's file")
    unique_dir(tmp_path / "outputs", "run-20260101-000000")
    assert (made[1] / "model.keras").read_text() == "first run's file"


def test_unique_dir_under_a_file_is_a_user_error(tmp_path):
    (tmp_path / "blocker").write_text("")
    with pytest.raises(UserError, match="cannot be created"):
        unique_dir(tmp_path / "blocker" / "outputs", "run")


class Boom(Exception):
    pass


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"accuracy": 0.9})
    with pytest.raises(Boom), atomic_output(path) as tmp:
        tmp.write_text('{"accur')
        raise Boom
    assert json.loads(path.read_text()) == {"accuracy": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    write_text(path, "new\n")
    assert path.read_text() == "new\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_staged_folder_leaves_nothing_and_a_finished_one_appears_whole(tmp_path):
    dest = tmp_path / "eval" / "Testing-1"
    with pytest.raises(Boom), staged_dir(dest) as tmp:
        (tmp / "metrics.json").write_text("{}")
        raise Boom
    assert list((tmp_path / "eval").iterdir()) == []
    with staged_dir(dest) as tmp:
        (tmp / "metrics.json").write_text("{}")
        assert not dest.exists()
    assert [p.name for p in dest.iterdir()] == ["metrics.json"]
    with pytest.raises(UserError, match="already exists"), staged_dir(dest):
        pass


# ---------------------------------------------------------------- the Run type and commands on unusable runs

def _run_folder(parent: Path, state: str | None, error: str | None = None) -> Run:
    """A folder shaped like a run in `state` (None: no status file at all)."""
    run = Run(parent / "quickstart-20260101-000000")
    run.path.mkdir(parents=True)
    if state is not None:
        run.set_status(state, error)
    return run


COMMANDS = {  # each command that uses a trained run, as a user types it (PATH stands for the run folder)
    "predict": ["predict", "--run", "PATH", "scan.jpg"],
    "export": ["export", "--run", "PATH", "--format", "onnx"],
    "serve": ["serve", "--run", "PATH"],
    "evaluate": ["evaluate", "--run", "PATH"],
    "evaluate --ensemble": ["evaluate", "--ensemble", "PATH", "PATH"],
    "adapt": ["adapt", "--run", "PATH", "--data", "site"],
}


def _error(capsys, command: str, path: Path) -> str:
    assert main([str(path) if arg == "PATH" else arg for arg in COMMANDS[command]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unfinished_run_names_the_command_its_state_and_the_fix(command, tmp_path, capsys):
    failed = _run_folder(tmp_path / "a", "failed", "KeyboardInterrupt (SIGINT): stopped after epoch 3\nmore")
    err = _error(capsys, command, failed.path)
    assert f"error: {command} needs a completed run, but {failed.path} failed (KeyboardInterrupt (SIGINT): " \
           f"stopped after epoch 3); finish it with braintumor train --resume {failed.path}" in err

    killed = _run_folder(tmp_path / "b", "running")  # its process died: nobody holds the lock
    err = _error(capsys, command, killed.path)
    assert "is marked running in its status, but no process trains it (it was killed)" in err
    assert f"finish it with braintumor train --resume {killed.path}" in err

    with killed.lock():  # a live trainer (this process) holds the run
        err = _error(capsys, command, killed.path)
    assert f"{command} needs a completed run, but {killed.path} is still being trained by pid {os.getpid()} on " in err
    assert "wait for it to finish" in err and "--resume" not in err


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_folder_that_is_no_run_says_so_and_how_to_get_one(command, tmp_path, capsys):
    err = _error(capsys, command, tmp_path / "missing")
    assert f"{command}: run folder {tmp_path / 'missing'} not found" in err and "braintumor train" in err

    plain = tmp_path / "photos"
    plain.mkdir()
    err = _error(capsys, command, plain)
    assert f"{command}: {plain} is not a run folder (it has no status.json)" in err
    assert "braintumor train configs/quickstart.yaml" in err

    outputs = tmp_path / "outputs"  # the parent of the runs, a common slip
    inner = _run_folder(outputs, "completed")
    err = _error(capsys, command, outputs)
    assert f"{outputs} is not a run folder but holds 1 run(s), e.g. {inner.path}; pass one of them" in err


def test_train_resume_on_a_folder_that_is_no_run_says_so(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: train --resume: {tmp_path} is not a run folder") and err.count("\n") == 1


def test_a_completed_run_opens_and_holds_no_lock(tmp_path):
    run = _run_folder(tmp_path, "running")
    run.reserve_space()
    with run.lock():
        assert run.holder() == f"pid {os.getpid()} on {socket.gethostname()}"
    assert run.holder() is None  # released with the process's handle
    run.complete()
    assert Run.completed(run.path, "predict") == run
    assert sorted(p.name for p in run.path.iterdir()) == ["status.json"]  # no lock, no reserve
    assert run.read_status()["finished"] is not None


def test_evaluations_are_named_by_split_and_time(tmp_path):
    run = _run_folder(tmp_path, "completed")
    evaluation = run.new_evaluation("validation")
    assert evaluation.path.parent == run.path / "eval" and evaluation.split == "validation"
    assert re.fullmatch(r"validation-\d{8}-\d{6}", evaluation.path.name)
    evaluation.path.mkdir(parents=True)
    (run.path / "eval" / "notes.txt").write_text("")
    assert run.evaluations() == [evaluation]
    assert Run.find(tmp_path) == []  # a run is found by its config
    run.config.write_text("")
    assert Run.find(tmp_path) == [run]
