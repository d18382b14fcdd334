"""Run folders and the one atomic-output helper: unique names, nothing half-written, nothing left behind."""

from __future__ import annotations

import json

import pytest

from braintumor.core.atomic import atomic_output, write_json, write_text
from braintumor.core.errors import UserError
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
