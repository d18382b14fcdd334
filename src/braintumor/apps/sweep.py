"""`braintumor sweep`: configs × seeds (× `--set` values) as ordinary training runs, on this machine or as one
SLURM job array.

The plan is fixed when the sweep starts: `manifest.json` in the sweep folder lists every planned run with its
config, seed, overrides and the exact folder it trains into. So one task (a local child process or a SLURM array
task) always finds its run there: completed runs are skipped, interrupted ones continue with `train --resume`,
and running the sweep again over the same folder does only what is left.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from braintumor.core import rundir
from braintumor.core.atomic import write_json, write_text
from braintumor.core.config import WITHIN_CONFIGURATION, load_config, read_listing
from braintumor.core.errors import UserError
from braintumor.core.logs import get_logger
from braintumor.core.run import Run

log = get_logger(__name__)

MANIFEST = "manifest.json"
SCRIPT = "sweep.sbatch"
SUBMISSIONS = "submissions.json"
STOP_GRACE_S = 60  # after Ctrl-C, how long children get to mark their runs failed before they are killed


@dataclass
class PlannedRun:
    index: int
    id: str
    config: str  # absolute path of the experiment's YAML
    seed: int
    overrides: list[str]  # the sweep's --set values for this run (a grid value included)
    label: str  # the config's label (or name), plus the grid values: runs of one configuration share it
    folder: str  # the run folder's name in the sweep folder, fixed by the plan: the child trains exactly there
    fold: int | None = None  # with --folds: the kfold fold this run tests (its overrides set data.fold)

    def run_in(self, sweep_dir: Path) -> Run:
        return Run(sweep_dir / self.folder)

    def train_overrides(self, sweep_dir: Path) -> list[str]:
        """Everything `braintumor train` needs on top of the config file to make exactly this run."""
        return [*self.overrides, f"seed={self.seed}", f"name={_yaml_str(self.id)}", f"label={_yaml_str(self.label)}",
                f"output.dir={_yaml_str(str(sweep_dir))}"]


def _yaml_str(text: str) -> str:
    """A YAML single-quoted string, so --set reads a label such as '1e-3 run' or 'a: b' as text."""
    return "'" + text.replace("'", "''") + "'"


# ---------------------------------------------------------------- planning

def split_values(text: str) -> list[str]:
    """`a,b` -> ['a', 'b']; commas inside [...] or {...} belong to a YAML value and do not split."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += char
    return [*values, current]


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise UserError(f"--seeds {text!r} must be integers separated by commas, e.g. --seeds 0,1,2") from err
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds {text!r} must list distinct integers, e.g. --seeds 0,1,2")
    return seeds


def expand_configs(paths: list[Path]) -> list[Path]:
    """Experiment config files; a sweep listing (configs/study.yaml) stands for the configs it names."""
    configs = []
    for path in paths:
        listed = read_listing(path)
        configs += [item.resolve() for item in listed] if listed else [path.resolve()]
    return configs


def fold_overrides(folds: int | None) -> list[list[str]]:
    """The overrides of each fold's run with --folds K (kfold, fold 0 .. K-1); one empty entry without."""
    if folds is None:
        return [[]]
    if not 2 <= folds <= 20:
        raise UserError(f"--folds {folds} is not allowed; use an integer from 2 to 20")
    return [["data.protocol=kfold", f"data.folds={folds}", f"data.fold={fold}"] for fold in range(folds)]


def plan(configs: list[Path], seeds: list[int] | None, overrides: list[str],
         folds: int | None = None) -> list[PlannedRun]:
    """Every run of the sweep, in order: config, then grid values, then seed, then fold. Bad configs fail here."""
    fixed, grid = [], []
    for override in overrides:
        key, sep, text = override.partition("=")
        values = split_values(text) if sep else [text]
        if len(values) > 1:
            grid.append([f"{key}={value}" for value in values])
        else:
            fixed.append(override)
    runs: list[PlannedRun] = []
    for path in configs:
        base = load_config(path, fixed)
        for combination in itertools.product(*grid):
            cfg = load_config(path, [*fixed, *combination])  # each grid value must be valid too
            # grid values tell runs apart: train.optimizer=rmsprop -> id ...-optimizer-rmsprop; the label names
            # only those that make another configuration (not data.fold=1,2: folds of one configuration pool)
            varied = [(key, key.split(".")[-1], value) for key, value in (item.split("=", 1) for item in combination)]
            label = " ".join([base.label or base.name, *(f"{short}={value}" for key, short, value in varied
                                                         if key not in WITHIN_CONFIGURATION)])
            for seed in seeds if seeds is not None else [cfg.seed]:
                for fold, per_fold in enumerate(fold_overrides(folds)):
                    if per_fold:
                        load_config(path, [*fixed, *combination, *per_fold])  # each fold's config must be valid too
                    name = "-".join([base.name, *(f"{short}-{value}" for _, short, value in varied),
                                     *([f"f{fold}"] if per_fold else []), f"s{seed}"])
                    run_id = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
                    runs.append(PlannedRun(len(runs), run_id, str(path), seed, [*fixed, *combination, *per_fold],
                                           label, folder=run_id, fold=fold if per_fold else None))
    ids = [run.id for run in runs]
    duplicates = sorted({run_id for run_id in ids if ids.count(run_id) > 1})
    if duplicates:
        raise UserError(f"two planned runs would share the folder name {duplicates[0]}; give the configs "
                        "distinct names (the `name` key or the file name)")
    return runs


def create_sweep(config_paths: list[Path], seeds: str | None, overrides: list[str], name: str | None,
                 folds: int | None = None) -> Path:
    """Plan the sweep and write its folder with manifest.json; returns the folder."""
    configs = expand_configs(config_paths)
    runs = plan(configs, parse_seeds(seeds), overrides, folds)
    name = name or (config_paths[0].stem if len(config_paths) == 1 else "sweep")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise UserError(f"--name {name!r} may hold only letters, digits, '.', '_' and '-'")
    parent = Path(load_config(Path(runs[0].config), runs[0].overrides).output.dir).expanduser()
    sweep_dir = rundir.unique_dir(parent, f"sweep-{name}-{rundir.timestamp()}").resolve()
    (sweep_dir / "logs").mkdir()
    write_json(sweep_dir / MANIFEST, {
        "name": name, "created": rundir.timestamp(), "workdir": os.getcwd(),
        "command": sys.argv, "folds": folds, "runs": [asdict(run) for run in runs],
    })
    log.info(f"sweep {name}: {len(runs)} runs ({len(configs)} configs) in {sweep_dir}")
    return sweep_dir


def read_manifest(sweep_dir: Path) -> list[PlannedRun]:
    path = sweep_dir / MANIFEST
    if not path.is_file():
        raise UserError(f"{path} not found; pass a folder made by braintumor sweep")
    manifest = rundir.read_json(path)
    try:
        runs = [PlannedRun(**run) for run in manifest["runs"]]
    except (KeyError, TypeError) as err:
        raise UserError(f"{path} is not a sweep manifest of this version ({err}); start a new sweep") from err
    if not runs:
        raise UserError(f"{path} plans no runs; start a new sweep with braintumor sweep CONFIG...")
    for run in runs:  # the folder is a name in the sweep folder, never a path out of it
        if not isinstance(run.folder, str) or run.folder in ("", ".", "..") or Path(run.folder).name != run.folder:
            raise UserError(f"{path}: run {run.index} has the folder {str(run.folder)[:80]!r}, which is not a "
                            "folder name; start a new sweep")
    return runs


# ---------------------------------------------------------------- one run

def run_state(sweep_dir: Path, run: PlannedRun) -> tuple[str, Path | None]:
    """The planned run's state from its status, and its folder; ("planned", None) before it started."""
    folder = run.run_in(sweep_dir)
    state = folder.state()
    return ("planned", None) if state is None else (state, folder.path)


def run_task(sweep_dir: Path, index: int) -> None:
    """Make planned run `index` completed: skip it if it is, resume it if it started, train it otherwise."""
    from braintumor.engine import train  # TensorFlow loads only in the process that trains

    runs = read_manifest(sweep_dir)
    if not 0 <= index < len(runs):
        raise UserError(f"{sweep_dir} plans runs 0 to {len(runs) - 1}; task {index} does not exist")
    run = runs[index]
    state, folder = run_state(sweep_dir, run)
    if state == "completed":
        print(f"{run.id}: already completed in {folder}; nothing to do")
    elif folder is not None:
        log.info(f"{run.id}: {state} in {folder}; resuming")
        train.resume(folder)
    else:
        train.run(load_config(Path(run.config), run.train_overrides(sweep_dir)), run.run_in(sweep_dir).path)


# ---------------------------------------------------------------- launchers

def unfinished(sweep_dir: Path, runs: list[PlannedRun]) -> list[PlannedRun]:
    return [run for run in runs if run_state(sweep_dir, run)[0] != "completed"]


def _task_command(sweep_dir: Path, index: str) -> list[str]:
    return [sys.executable, "-m", "braintumor.cli", "sweep", "--task", str(sweep_dir), index]


def thread_env(cpus: int) -> dict[str, str]:
    """TensorFlow (and OpenMP) thread pools sized to a share of the cores, so parallel runs don't oversubscribe."""
    return {"TF_NUM_INTRAOP_THREADS": str(cpus), "TF_NUM_INTEROP_THREADS": str(min(2, cpus)),
            "OMP_NUM_THREADS": str(cpus)}


def run_local(sweep_dir: Path, jobs: int) -> None:
    """Up to `jobs` runs at a time as child processes; Ctrl-C (or SIGTERM) stops them all cleanly."""
    runs = read_manifest(sweep_dir)
    todo = unfinished(sweep_dir, runs)
    workdir = rundir.read_json(sweep_dir / MANIFEST)["workdir"]
    cpus = max(1, (os.cpu_count() or 1) // jobs)
    env = {**os.environ, **thread_env(cpus)}
    log.info(f"{len(todo)} of {len(runs)} runs to do, {jobs} at a time, {cpus} CPU threads each; "
             f"logs in {sweep_dir / 'logs'}")
    waiting, active, failed = list(todo), {}, []
    # SIGTERM (a scheduler, `kill`) stops the sweep like Ctrl-C does
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with tqdm(total=len(todo), desc="sweep", unit="run") as progress:
            while waiting or active:
                while waiting and len(active) < jobs:
                    run = waiting.pop(0)
                    with (sweep_dir / "logs" / f"{run.id}.log").open("a") as handle:
                        # own session: a terminal's Ctrl-C reaches only the sweep, which then stops each child
                        active[subprocess.Popen(_task_command(sweep_dir, str(run.index)), cwd=workdir, env=env,
                                                stdout=handle, stderr=subprocess.STDOUT,
                                                start_new_session=True)] = run
                for child, run in list(active.items()):
                    if child.poll() is not None:
                        del active[child]
                        progress.update()
                        if child.returncode:
                            failed.append(run)
                        outcome = f"failed (exit {child.returncode})" if child.returncode else "done"
                        log.info(f"{run.id}: {outcome}")
                time.sleep(0.5)
    except KeyboardInterrupt:
        _stop(active)
        log.info(f"sweep interrupted: {len(active)} running run(s) stopped and marked failed; "
                 f"continue with braintumor sweep --resume {sweep_dir}")
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise UserError(f"{len(failed)} of {len(todo)} runs failed ({', '.join(run.id for run in failed)}); "
                        f"see {sweep_dir / 'logs'}, then continue with braintumor sweep --resume {sweep_dir}")
    print(f"sweep complete: {len(runs)} runs in {sweep_dir}")


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _stop(active: dict[subprocess.Popen, PlannedRun]) -> None:
    """SIGINT to each child (training marks its run failed and keeps its checkpoint), then wait, then kill."""
    for child in active:
        child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_S
    for child, run in active.items():
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            log.info(f"{run.id}: did not stop within {STOP_GRACE_S} s; killed")


@dataclass
class SlurmOptions:
    jobs: int = 4  # at most this many array tasks at once (%K)
    partition: str | None = None
    time: str | None = None
    cpus_per_task: int = 2
    gpus_per_task: int | None = None
    account: str | None = None


def job_script(sweep_dir: Path, runs: list[PlannedRun], options: SlurmOptions) -> str:
    """A plain sbatch script: one array task per planned run. Readable, and editable by hand."""
    name = rundir.read_json(sweep_dir / MANIFEST)["name"]
    workdir = rundir.read_json(sweep_dir / MANIFEST)["workdir"]
    directives = {
        "job-name": f"braintumor-{name}",
        "array": f"{index_ranges([run.index for run in runs])}%{options.jobs}",
        "output": f"{sweep_dir}/logs/%A_%a.out",
        "cpus-per-task": options.cpus_per_task,
        "partition": options.partition,
        "time": options.time,
        "gpus-per-task": options.gpus_per_task,
        "account": options.account,
    }
    command = " ".join(shlex.quote(part) for part in _task_command(sweep_dir, "IDX")).replace(
        "IDX", '"$SLURM_ARRAY_TASK_ID"')
    return "\n".join([
        "#!/bin/bash",
        f"# braintumor sweep '{name}': {len(runs)} training runs, one array task each (list: manifest.json).",
        *(f"#SBATCH --{key}={value}" for key, value in directives.items() if value is not None),
        "",
        "# A task whose run has completed exits at once; one that was interrupted continues from its last",
        "# finished epoch (braintumor train --resume). So resubmitting this script redoes only what is left:",
        f"#   braintumor sweep --resume {sweep_dir} --launcher slurm",
        "set -euo pipefail",
        f"cd {shlex.quote(workdir)}  # relative paths in the configs (data.root, ...) are read from here",
        'export TF_NUM_INTRAOP_THREADS="${SLURM_CPUS_PER_TASK:-1}" TF_NUM_INTEROP_THREADS=2',
        f"exec {command}",
        "",
    ])


def run_slurm(sweep_dir: Path, options: SlurmOptions, dry_run: bool, wait: bool) -> None:
    """Write sweep.sbatch and submit the unfinished, not already queued runs as one job array."""
    runs = read_manifest(sweep_dir)
    script = sweep_dir / SCRIPT
    write_text(script, job_script(sweep_dir, runs, options))
    queued = _queued_tasks(sweep_dir)
    todo = [run.index for run in unfinished(sweep_dir, runs) if run.index not in queued]
    command = ["sbatch", "--parsable", f"--array={index_ranges(todo)}%{options.jobs}",
               *(["--wait"] if wait else []), str(script)]
    if dry_run:
        print(script.read_text())
        print(f"dry run: wrote {script}; submit with: {shlex.join(command)}")
        return
    if not todo:
        print(f"nothing to submit: every run in {sweep_dir} is completed or queued")
        return
    if shutil.which("sbatch") is None:
        raise UserError(f"sbatch not found; run this on a SLURM login node, or submit {script} there")
    log.info(f"submitting {len(todo)} of {len(runs)} runs as one job array, at most {options.jobs} at a time")
    submitting = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = submitting.stdout.readline().strip().split(";")[0]  # printed at submission, also with --wait
    if job_id:  # recorded before waiting, so --status and a later --resume know what is queued
        submissions = rundir.read_json(sweep_dir / SUBMISSIONS) if (sweep_dir / SUBMISSIONS).is_file() else []
        write_json(sweep_dir / SUBMISSIONS, [*submissions, {"job_id": job_id, "tasks": todo,
                                                                   "submitted": rundir.timestamp()}])
        log.info(f"job array {job_id} submitted" + ("; waiting for it to end" if wait else ""))
    _, errors = submitting.communicate()
    if not job_id or (submitting.returncode and not wait):  # with --wait, a failed task gives a non-zero exit
        raise UserError(f"sbatch failed: {' '.join(errors.split()) or submitting.returncode}; "
                        f"check the options, or submit {script} by hand")
    if not wait:
        print(f"submitted job array {job_id} ({len(todo)} tasks); follow it with braintumor sweep --status {sweep_dir}")
        return
    left = unfinished(sweep_dir, runs)
    if left:
        raise UserError(f"job array {job_id} ended with {len(left)} run(s) not completed "
                        f"({', '.join(run.id for run in left)}); see {sweep_dir / 'logs'}, then resubmit with "
                        f"braintumor sweep --resume {sweep_dir} --launcher slurm")
    print(f"job array {job_id} done: {len(runs)} runs completed in {sweep_dir}")


def index_ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (sbatch --array syntax)."""
    parts = []
    for _, group in itertools.groupby(enumerate(sorted(indices)), key=lambda pair: pair[1] - pair[0]):
        values = [value for _, value in group]
        parts.append(str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}")
    return ",".join(parts)


def _queued_tasks(sweep_dir: Path) -> set[int]:
    """Array task indices of this sweep that SLURM still has pending or running."""
    if not (sweep_dir / SUBMISSIONS).is_file() or shutil.which("squeue") is None:
        return set()
    job_ids = [entry["job_id"] for entry in rundir.read_json(sweep_dir / SUBMISSIONS)]
    result = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(job_ids), "-o", "%i"],
                            capture_output=True, text=True)
    return {int(line.split("_")[1]) for line in result.stdout.split() if "_" in line}


# ---------------------------------------------------------------- status

def status(sweep_dir: Path) -> dict[str, int]:
    """Print each planned run's state; return the count per state."""
    runs = read_manifest(sweep_dir)
    queued = _queued_tasks(sweep_dir)
    counts: dict[str, int] = {}
    rows = []
    shared = set.intersection(*(set(run.overrides) for run in runs))  # shown once, not on every line
    for run in runs:
        state, folder = run_state(sweep_dir, run)
        if state == "planned" and run.index in queued:
            state = "queued"
        counts[state] = counts.get(state, 0) + 1
        rows.append((run.id, str(run.seed), " ".join(o for o in run.overrides if o not in shared) or "-", state,
                     folder.name if folder else "-"))
    widths = [max(len(row[i]) for row in [("run", "seed", "overrides", "state", "folder"), *rows])
              for i in range(5)]
    for row in [("run", "seed", "overrides", "state", "folder"), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if shared:
        print("every run: --set " + " --set ".join(sorted(shared)))
    print(", ".join(f"{count} {state}" for state, count in sorted(counts.items())) + f" (of {len(runs)})")
    return counts
