"""`braintumor sweep`: planning, the local launcher (parallel runs, Ctrl-C, resume), a real one-node SLURM
cluster (job array, a killed task completed by re-running the sweep), status, and compare over a sweep."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from braintumor.apps import sweep
from braintumor.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_states(sweep_dir: Path) -> dict[str, str]:
    return {run.id: sweep.run_state(sweep_dir, run)[0] for run in sweep.read_manifest(sweep_dir)}


def only_sweep(outputs: Path) -> Path:
    (found,) = outputs.glob("sweep-*")
    return found


def cli(*args: str, cwd: Path | None = None, **kwargs) -> subprocess.Popen:
    """The CLI in a child process (own session, so a signal reaches only it), importing this tree."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.Popen([sys.executable, "-m", "braintumor.cli", *args], cwd=cwd or REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kwargs)


def test_plan_expands_configs_seeds_and_set_values(write_config, tmp_path, capsys):
    first, second = write_config("alpha"), write_config("beta", label="Beta-I")
    assert main(["sweep", str(first), str(second), "--seeds", "0,1", "--set", "train.optimizer=adam,rmsprop",
                 "--set", "data.preprocess=[brain_crop,standardize]", "--name", "grid", "--dry-run"]) == 0
    sweep_dir = only_sweep(tmp_path / "outputs")
    assert sweep_dir.name.startswith("sweep-grid-")
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    runs = manifest["runs"]
    assert len(runs) == 2 * 2 * 2  # configs x optimizers x seeds
    assert [run["id"] for run in runs[:4]] == ["alpha-optimizer-adam-s0", "alpha-optimizer-adam-s1",
                                               "alpha-optimizer-rmsprop-s0", "alpha-optimizer-rmsprop-s1"]
    assert runs[4]["label"] == "Beta-I optimizer=adam" and runs[0]["label"] == "alpha optimizer=adam"
    assert runs[0]["config"] == str(first.resolve()) and runs[1]["seed"] == 1
    # a comma inside [...] belongs to a YAML list: one value, applied to every run
    assert all("data.preprocess=[brain_crop,standardize]" in run["overrides"] for run in runs)
    assert set(run_states(sweep_dir).values()) == {"planned"}
    printed = capsys.readouterr().out
    assert "8 planned (of 8)" in printed and "train.optimizer=rmsprop" in printed


def test_folds_listed_with_set_share_one_label_so_compare_pools_them(write_config, tmp_path):
    from braintumor.apps import sweep

    runs = sweep.plan([write_config("alpha")], [0], ["data.protocol=kfold", "data.fold=0,2",
                                                     "train.optimizer=adam,rmsprop"])
    assert [run.id for run in runs] == ["alpha-fold-0-optimizer-adam-s0", "alpha-fold-0-optimizer-rmsprop-s0",
                                        "alpha-fold-2-optimizer-adam-s0", "alpha-fold-2-optimizer-rmsprop-s0"]
    assert [run.label for run in runs] == ["alpha optimizer=adam", "alpha optimizer=rmsprop"] * 2


def test_study_listing_names_the_nine_headline_experiments(tmp_path, capsys):
    listed = sweep.expand_configs([REPO / "configs" / "study.yaml"])
    assert len(listed) == 9
    runs = sweep.plan(listed, [0, 1, 2], [])
    labels = sorted({run.label for run in runs})
    assert labels == sorted(f"{b}-{e}" for b in ("VGG16", "ResNet50", "InceptionV3") for e in ("I", "II", "III"))
    assert len(runs) == 27
    assert main(["train", str(REPO / "configs" / "study.yaml")]) == 2  # `validate` checks each config it names
    assert "is a sweep listing" in capsys.readouterr().err


def test_slurm_dry_run_writes_a_plain_job_array_script(write_config, tmp_path, capsys):
    config = write_config("tiny")
    assert main(["sweep", str(config), "--seeds", "0,1,2", "--launcher", "slurm", "--jobs", "2",
                 "--partition", "gpu", "--time", "01:00:00", "--gpus-per-task", "1", "--account", "lab",
                 "--dry-run"]) == 0
    sweep_dir = only_sweep(tmp_path / "outputs")
    script = (sweep_dir / "sweep.sbatch").read_text()
    for line in ("#SBATCH --array=0-2%2", f"#SBATCH --output={sweep_dir}/logs/%A_%a.out",
                 "#SBATCH --partition=gpu", "#SBATCH --time=01:00:00", "#SBATCH --gpus-per-task=1",
                 "#SBATCH --account=lab", f"sweep --task {sweep_dir} \"$SLURM_ARRAY_TASK_ID\""):
        assert line in script
    assert not (sweep_dir / "submissions.json").exists()  # nothing submitted
    assert "dry run" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0,x"], "--seeds '0,x' must be integers"),
    (["--seeds", "1,1"], "must list distinct integers"),
    (["--set", "train.optimizer=adam,lion"], "train.optimizer = 'lion' is not allowed"),
    (["--name", "a/b"], "--name 'a/b' may hold only"),
])
def test_bad_sweep_arguments_exit_2_before_anything_is_written(write_config, tmp_path, capsys, args, message):
    config = write_config("tiny")
    assert main(["sweep", str(config), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_status_of_a_folder_without_manifest_is_a_user_error(tmp_path, capsys):
    assert main(["sweep", "--status", str(tmp_path)]) == 2
    assert "manifest.json not found" in capsys.readouterr().err


def test_status_of_a_manifest_without_runs_is_one_line(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "empty", "workdir": str(tmp_path), "runs": []}))
    for mode in ("--status", "--resume"):
        assert main(["sweep", mode, str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "plans no runs; start a new sweep" in err and "Traceback" not in err


def test_a_run_is_found_in_the_folder_its_manifest_names_and_nowhere_else(write_config, tmp_path, capsys):
    sweep_dir = sweep.create_sweep([write_config("tiny")], "0,1", [], None)
    first, second = sweep.read_manifest(sweep_dir)
    assert (first.folder, second.folder) == ("tiny-s0", "tiny-s1")
    # folders that merely look like the run's (an older naming, a copy, a -2 suffix) are not the run
    for decoy in ("tiny-s0-20260101-000000", "tiny-s0-2", "tiny-s1-copy"):
        (sweep_dir / decoy).mkdir()
        (sweep_dir / decoy / "status.json").write_text(json.dumps({"state": "completed"}))
    assert sweep.run_state(sweep_dir, first) == ("planned", None)
    (sweep_dir / "tiny-s0").mkdir()
    (sweep_dir / "tiny-s0" / "status.json").write_text(json.dumps({"state": "failed", "error": "x"}))
    assert sweep.run_state(sweep_dir, first) == ("failed", sweep_dir / "tiny-s0")
    assert sweep.status(sweep_dir) == {"failed": 1, "planned": 1}
    assert re.search(r"^tiny-s0\s+0\s+-\s+failed\s+tiny-s0$", capsys.readouterr().out, re.MULTILINE)


def test_a_manifest_folder_outside_the_sweep_is_refused(write_config, tmp_path, capsys):
    sweep_dir = sweep.create_sweep([write_config("tiny")], "0", [], None)
    manifest = json.loads((sweep_dir / "manifest.json").read_text())
    manifest["runs"][0]["folder"] = "../elsewhere"
    (sweep_dir / "manifest.json").write_text(json.dumps(manifest))
    assert main(["sweep", "--status", str(sweep_dir)]) == 2
    assert "is not a folder name; start a new sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_local_sweep_runs_in_parallel_and_compare_pools_the_seeds(write_config, tmp_path):
    config = write_config("tiny", train={"tensorboard": False})  # its logs cost each run 4 s CPU; none is read here
    assert main(["sweep", str(config), "--seeds", "0,1", "--jobs", "2"]) == 0
    sweep_dir = only_sweep(tmp_path / "outputs")
    assert set(run_states(sweep_dir).values()) == {"completed"}
    # each run trained into the folder its manifest entry names
    assert sorted(p.name for p in sweep_dir.glob("tiny-s*")) == [run.folder for run in sweep.read_manifest(sweep_dir)]
    env = json.loads((sweep_dir / "tiny-s0" / "env.json").read_text())
    assert env["devices"] and env["distribution"] == "none"
    # train.tensorboard false: no TensorBoard folder, the log file still written
    assert not list(sweep_dir.glob("tiny-s*/tensorboard")) and len(list(sweep_dir.glob("tiny-s*/train.log"))) == 2
    # a second pass finds everything done and trains nothing
    assert main(["sweep", "--resume", str(sweep_dir)]) == 0
    assert len(list(sweep_dir.glob("tiny-s*"))) == 2

    out = sweep_dir / "cmp"
    assert main(["compare", str(sweep_dir), "--out", str(out), "--metric", "leak_free"]) == 0
    with (out / "configurations.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["runs"] == "2" and row["seeds"] == "0 1"
    assert float(row["accuracy_min"]) <= float(row["accuracy_mean"]) <= float(row["accuracy_max"])
    # each run's training time (its epochs, validation included) is stored and pooled
    seconds = [json.loads(path.read_text())["train_seconds"] for path in sweep_dir.glob("tiny-s*/metrics.json")]
    assert len(seconds) == 2 and all(s > 0 for s in seconds)
    assert float(row["train_minutes_mean"]) == pytest.approx(sum(seconds) / len(seconds) / 60, abs=1e-6)
    assert "training minutes" in (out / "comparison.md").read_text()


@pytest.mark.slow
@pytest.mark.extended
def test_ctrl_c_stops_every_child_marks_runs_failed_and_resume_finishes_them(write_config, tmp_path):
    config = write_config("long", train={"epochs": 60, "early_stopping_patience": 0, "batch_size": 8})
    parent = cli("sweep", str(config), "--seeds", "0,1", "--jobs", "2")
    outputs = tmp_path / "outputs"
    deadline = time.monotonic() + 300
    while not list(outputs.glob("sweep-*/long-s*/checkpoints/state.json")):  # training is under way
        assert parent.poll() is None and time.monotonic() < deadline, parent.stdout.read()
        time.sleep(0.2)
    parent.send_signal(signal.SIGINT)
    assert parent.wait(120) == 130
    parent.stdout.close()
    sweep_dir = only_sweep(outputs)
    states = run_states(sweep_dir)
    assert "completed" not in states.values() and "failed" in states.values()
    assert "running" not in states.values()  # no child left behind still marked running

    assert main(["sweep", "--resume", str(sweep_dir), "--jobs", "2"]) == 0
    assert set(run_states(sweep_dir).values()) == {"completed"}
    assert len(list(sweep_dir.glob("long-s*"))) == 2  # resumed in place, no second folder per run


# ---------------------------------------------------------------- SLURM

@pytest.fixture(scope="module")
def slurm() -> None:
    """The one-node cluster of scripts/slurm_local.sh (CI starts it; here we start it if we can)."""
    started = subprocess.run([str(REPO / "scripts" / "slurm_local.sh"), "start"], capture_output=True, text=True)
    if started.returncode:
        pytest.skip("SLURM cannot be started here (scripts/slurm_local.sh start needs root and "
                    f"apt-get install slurm-wlm munge): {(started.stderr or started.stdout).strip()[-200:]}")


def squeue_empty(job_ids: list[str]) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", ",".join(job_ids)], capture_output=True, text=True).stdout
    return not out.strip()


@pytest.mark.slow
@pytest.mark.extended
def test_slurm_job_array_trains_every_run_and_a_killed_task_is_completed_by_resubmitting(
        slurm, tmp_path, capsys):
    started = time.monotonic()
    config = REPO / "configs" / "quickstart.yaml"
    tiny = ["data.root=" + str(tmp_path / "synthetic"), "data.image_size=32", "train.epochs=40",
            "train.early_stopping_patience=0", "data.cache_dir=" + str(tmp_path / "cache"),
            "output.dir=" + str(tmp_path / "outputs"), "train.precision=float32"]
    subprocess.run([sys.executable, "-m", "braintumor.cli", "data", "synth", str(tmp_path / "synthetic"),
                    "--train-per-class", "12", "--test-per-class", "5", "--size", "48"],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    args = ["sweep", str(config), "--seeds", "0,1", "--set", "train.optimizer=adam,rmsprop", "--launcher", "slurm",
            "--jobs", "2", "--cpus-per-task", "1", *(f"--set={item}" for item in tiny)]
    assert main(args) == 0
    sweep_dir = only_sweep(tmp_path / "outputs")
    (submission,) = json.loads((sweep_dir / "submissions.json").read_text())
    assert submission["tasks"] == [0, 1, 2, 3]

    # kill the first task that has finished an epoch (SIGTERM, then SIGKILL, as on a real cluster)
    deadline = time.monotonic() + 600
    while not (states := list(sweep_dir.glob("quickstart-*/checkpoints/state.json"))):
        assert time.monotonic() < deadline, "no SLURM task finished an epoch"
        time.sleep(0.2)
    victim = states[0].parents[1].name
    index = next(run.index for run in sweep.read_manifest(sweep_dir) if run.folder == victim)
    subprocess.run(["scancel", f"{submission['job_id']}_{index}"], check=True)
    while not squeue_empty([submission["job_id"]]):
        assert time.monotonic() < deadline, "the job array did not end"
        time.sleep(1)
    states = run_states(sweep_dir)
    assert list(states.values()).count("completed") == 3, states

    capsys.readouterr()
    assert main(["sweep", "--resume", str(sweep_dir), "--launcher", "slurm", "--wait",
                 "--cpus-per-task", "1"]) == 0
    assert set(run_states(sweep_dir).values()) == {"completed"}
    resubmitted = json.loads((sweep_dir / "submissions.json").read_text())[1]
    assert resubmitted["tasks"] == [index]  # only what was not done
    assert len(list(sweep_dir.glob(f"{victim}*"))) == 1  # resumed in its own folder
    assert list((sweep_dir / "logs").glob(f"{resubmitted['job_id']}_{index}.out"))

    out = sweep_dir / "cmp"
    assert main(["compare", str(sweep_dir), "--out", str(out)]) == 0
    with (out / "configurations.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["label"] for row in rows) == ["quickstart optimizer=adam", "quickstart optimizer=rmsprop"]
    assert all(row["runs"] == "2" and row["seeds"] == "0 1" for row in rows)
    print(f"SLURM sweep of 4 runs (one killed and resubmitted): {time.monotonic() - started:.0f} s")


def test_manifest_lists_config_seed_and_overrides(write_config, tmp_path):
    config = write_config("tiny")
    sweep_dir = sweep.create_sweep([config], "3", ["train.epochs=2"], None)
    (run,) = yaml.safe_load((sweep_dir / "manifest.json").read_text())["runs"]
    assert (run["config"], run["seed"], run["overrides"]) == (str(config.resolve()), 3, ["train.epochs=2"])
    assert sweep.index_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
