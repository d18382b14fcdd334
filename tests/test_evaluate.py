"""`braintumor evaluate`: exact reproduction, other splits and trees, TTA, bad input."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from braintumor.cli import main
from braintumor.data.synth import make_dataset

# stored by a run or an evaluation only
RUN_ONLY_KEYS = {"split", "best_epoch", "train_seconds", "protocol", "data_root", "run"}


@pytest.fixture
def run_copy(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / trained_run.name)


def _metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_evaluating_testing_reproduces_training_time_metrics_exactly(run_copy):
    assert main(["evaluate", "--run", str(run_copy), "--leak-free"]) == 0
    (result,) = (run_copy / "eval").iterdir()
    assert result.name.startswith("Testing-")
    again, original = _metrics(result), _metrics(run_copy)
    assert {k: v for k, v in again.items() if k not in RUN_ONLY_KEYS} == \
        {k: v for k, v in original.items() if k not in RUN_ONLY_KEYS}
    assert (result / "predictions.csv").read_text() == (run_copy / "predictions.csv").read_text()
    assert {p.name for p in result.iterdir()} == {"metrics.json", "classification_report.txt",
                                                  "confusion_matrix.png", "predictions.csv", "eval.log"}


def test_validation_split_tta_and_out(run_copy, tmp_path):
    out = tmp_path / "val-eval"
    assert main(["evaluate", "--run", str(run_copy), "--split", "validation", "--tta", "--out", str(out)]) == 0
    metrics = _metrics(out)
    validation_files = json.loads((run_copy / "data.json").read_text())["validation_files"]
    assert metrics["n"] == len(validation_files) == 16
    assert metrics["tta"]["n"] == 16 and 0 <= metrics["tta"]["accuracy"] <= 1
    assert main(["evaluate", "--run", str(run_copy), "--out", str(out)]) == 2  # never overwrite


def test_another_tree_with_the_same_classes_and_a_mismatched_one(run_copy, tmp_path, capsys):
    other = make_dataset(tmp_path / "other", train_per_class=2, test_per_class=3, size=64, seed=9)
    assert main(["evaluate", "--run", str(run_copy), "--data", str(other), "--out", str(tmp_path / "o")]) == 0
    assert _metrics(tmp_path / "o")["n"] == 12
    shutil.rmtree(other / "Testing" / "no_tumor")
    (other / "Testing" / "astrocytoma").mkdir()
    assert main(["evaluate", "--run", str(run_copy), "--data", str(other), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "no_tumor" in err and "glioma_tumor" in err and not (tmp_path / "m").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda run: shutil.rmtree(run), "evaluate: run folder .* not found"),
    (lambda run: (run / "model.keras").unlink(), "model.keras not found"),
    (lambda run: (run / "model.keras").write_bytes(b"PK\x03\x04 truncated"), "model.keras cannot be loaded"),
    (lambda run: (run / "config.yaml").write_text("model: [unclosed"), "config.yaml: invalid YAML at line 1"),
    (lambda run: (run / "data.json").write_text("{broken"), "data.json is corrupt"),
])
def test_bad_run_directories_exit_2_naming_the_file(run_copy, capsys, damage, message):
    damage(run_copy)
    assert main(["evaluate", "--run", str(run_copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert re.search(message, err), err
    assert not (run_copy / "eval").exists()


def test_leak_free_metrics_leave_out_test_images_with_a_training_twin(run_copy, synth_root, tmp_path):
    training_metrics = _metrics(run_copy)
    assert training_metrics["leak_free"]["excluded"] == 0 and training_metrics["leak_free"]["n"] == 24
    leaky = shutil.copytree(synth_root, tmp_path / "leaky")
    shutil.copy(leaky / "Training" / "glioma_tumor" / "synth_0003.jpg", leaky / "Testing" / "glioma_tumor" / "twin.jpg")
    out = tmp_path / "leak-eval"
    assert main(["evaluate", "--run", str(run_copy), "--data", str(leaky), "--leak-free", "--out", str(out)]) == 0
    leak_free = _metrics(out)["leak_free"]
    assert leak_free["excluded_files"] == ["Testing/glioma_tumor/twin.jpg"]
    assert (leak_free["n"], _metrics(out)["n"]) == (24, 25)
    assert main(["evaluate", "--run", str(run_copy), "--split", "Training", "--leak-free"]) == 2


def test_exclude_test_twins_drops_training_duplicates(write_config, synth_root, tmp_path):
    leaky = shutil.copytree(synth_root, tmp_path / "leaky")
    source = leaky / "Training" / "no_tumor" / "synth_0001.jpg"
    shutil.copy(source, leaky / "Testing" / "no_tumor" / "copy.jpg")
    assert main(["train", str(write_config("twins", data={"root": str(leaky), "exclude_test_twins": True}))]) == 0
    (run_dir,) = (tmp_path / "outputs").iterdir()
    data = json.loads((run_dir / "data.json").read_text())
    assert data["dropped_test_twins"] == {"count": 1, "files": ["Training/no_tumor/synth_0001.jpg"]}
    assert data["counts"]["train"]["total"] + data["counts"]["validation"]["total"] == 63
    assert _metrics(run_dir)["leak_free"]["excluded"] == 1
