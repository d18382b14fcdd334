"""A run folder: every file name of its contract (README, "The run directory (contract)") and how each
file is read and written. Every other module asks a `Run`, or the `Reports` of an evaluation, for a
path; no other module spells these names.

While a process trains a run it holds the run's lock; the status file can still be written on a full
disk because the run keeps a little space in reserve. Commands that use a trained run open it with
`Run.completed`, which says in one line why a folder cannot be used and what to do.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import numpy as np

from braintumor.core import cache
from braintumor.core import config as config_file
from braintumor.core.atomic import write_json, write_text
from braintumor.core.errors import UserError, describe
from braintumor.core.rundir import NO_SPACE, read_json, remove_partials, timestamp, unique_dir

STATUS = "status.json"  # state (running, completed, failed), the error, start and finish times
CONFIG = "config.yaml"  # the resolved config, every key
ENV = "env.json"  # versions, device, precision and XLA with their reasons
DATA = "data.json"  # files per split, skipped files, the validation file list, the protocol
SPLIT = "split.csv"  # every image's side (train, validation, test, excluded) and twin group: the split trained on
HISTORY = "history.csv"  # one row per epoch
MODEL = "model.keras"  # the whole model, with the weights of the best epoch
TRAIN_LOG = "train.log"
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"  # only while training: STATE and the checkpoint files it names
STATE = "state.json"
# the temperature and the out-of-distribution detector (arrays); its checksummed sidecar calibration.json
# (core/cache.py) also says what they are in words
CALIBRATION = "calibration.npz"
# adapted runs only (`braintumor adapt`): where their BatchNorm statistics came from, and what else was carried over
ADAPTATION = "adaptation.json"
EVAL = "eval"  # evaluations by `braintumor evaluate`: eval/<split>-<time>/
LOCK = ".lock"  # pid and host of the process training the run; locked with flock while it runs
RESERVE = ".space-reserve"  # released to write the status on a full disk
RESERVE_BYTES = 256 * 1024
# hidden working folders of the last steps of training; a kill leaves them to `remove_partials`
REPORTS_STAGING = ".reports.partial-staging"  # reports are built here, then renamed in, metrics.json last
CHECKPOINTS_REMOVING = ".checkpoints.partial-removing"  # checkpoints/ renamed here once the reports are in

# the report files of a run (on Testing) and of every evaluation
METRICS = "metrics.json"
CLASSIFICATION_REPORT = "classification_report.txt"
CONFUSION_MATRIX = "confusion_matrix.png"
PREDICTIONS = "predictions.csv"
CURVES = "curves.png"  # training runs only
EVAL_LOG = "eval.log"  # evaluations only

T = TypeVar("T")
GET_A_RUN = "braintumor train CONFIG makes one (braintumor train configs/quickstart.yaml: outputs/quickstart-<time>/)"


@dataclass(frozen=True)
class Reports:
    """A folder of report files: a run's own (Testing), an evaluation's, or a staging folder for either."""

    path: Path

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def classification_report(self) -> Path:
        return self.path / CLASSIFICATION_REPORT

    @property
    def confusion_matrix(self) -> Path:
        return self.path / CONFUSION_MATRIX

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    @property
    def curves(self) -> Path:
        return self.path / CURVES

    def read_metrics(self) -> Any:
        return read_json(self.metrics)

    def add_to_metrics(self, key: str, value: Any) -> None:
        """Set one entry of metrics.json (replaced in one rename)."""
        write_json(self.metrics, {**self.read_metrics(), key: value})


@dataclass(frozen=True)
class Evaluation(Reports):
    """The folder `braintumor evaluate` writes: eval/<split>-<time>/ in a run, --out DIR, or an ensemble's."""

    @property
    def log(self) -> Path:
        return self.path / EVAL_LOG

    @property
    def split(self) -> str:
        """The split evaluated, from the folder name <split>-<YYYYmmdd-HHMMSS> of an evaluation under eval/."""
        return self.path.name.rsplit("-", 2)[0]


@dataclass(frozen=True)
class Run(Reports):
    """A run folder made by `braintumor train`."""

    # ------------------------------------------------------------ finding and opening runs

    @classmethod
    def new(cls, parent: Path, name: str) -> Run:
        """A new, empty folder <parent>/<name>-<time>; a taken name gets -2, -3, ..."""
        return cls(unique_dir(parent, f"{name}-{timestamp()}"))

    @classmethod
    def planned(cls, path: Path) -> Run:
        """The exact folder a sweep planned for a run: created, or taken over empty (a kill during creation)."""
        try:
            path.mkdir(exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the run folder {path} ({describe(err)}); "
                            "make its sweep folder writable") from err
        if any(path.iterdir()):
            raise UserError(f"{path} already holds a run; continue it with braintumor train --resume {path}")
        return cls(path)

    @classmethod
    def find(cls, folder: Path) -> list[Run]:
        """The run folders at any depth under `folder` (each holds its config)."""
        return [cls(path.parent) for path in sorted(folder.rglob(CONFIG))]

    @classmethod
    def existing(cls, path: Path, command: str) -> Run:
        """The run at `path`, or one line for `command` saying that it is none and how to get one."""
        run = cls(path)
        if run.status.is_file():
            return run
        if not path.is_dir():
            raise UserError(f"{command}: run folder {path} not found; pass a folder made by braintumor train: "
                            f"{GET_A_RUN}")
        inside = sorted(child for child in path.iterdir() if (child / STATUS).is_file())
        if inside:
            raise UserError(f"{command}: {path} is not a run folder but holds {len(inside)} run(s), "
                            f"e.g. {inside[0]}; pass one of them")
        raise UserError(f"{command}: {path} is not a run folder (it has no {STATUS}); pass a folder made by "
                        f"braintumor train: {GET_A_RUN}")

    @classmethod
    def completed(cls, path: Path, command: str) -> Run:
        """The completed run at `path`, or one line for `command`: what the folder is, its state and the fix."""
        run = cls.existing(path, command)
        status = run.read_status()
        state = str(status.get("state", "unknown"))
        if state == "completed":
            return run
        needs = f"{command} needs a completed run, but {path}"
        if state == "running" and (holder := run.holder()) is not None:
            raise UserError(f"{needs} is still being trained by {holder}; wait for it to finish")
        why = {"running": "is marked running in its status, but no process trains it (it was killed)",
               "failed": f"failed ({_short(status.get('error'))})"}.get(state, f"is in state {state!r}")
        raise UserError(f"{needs} {why}; finish it with braintumor train --resume {path}")

    # ------------------------------------------------------------ the files

    @property
    def status(self) -> Path:
        return self.path / STATUS

    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def env(self) -> Path:
        return self.path / ENV

    @property
    def data(self) -> Path:
        return self.path / DATA

    @property
    def split(self) -> Path:
        return self.path / SPLIT

    @property
    def history(self) -> Path:
        return self.path / HISTORY

    @property
    def model(self) -> Path:
        return self.path / MODEL

    @property
    def log(self) -> Path:
        return self.path / TRAIN_LOG

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def training_state(self) -> Path:
        return self.checkpoints / STATE

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK

    @property
    def calibration(self) -> Path:
        return self.path / CALIBRATION

    @property
    def calibration_summary(self) -> Path:
        return cache.sidecar(self.calibration)

    @property
    def adaptation(self) -> Path:
        return self.path / ADAPTATION

    def write_adaptation(self, provenance: dict) -> None:
        write_json(self.adaptation, provenance)

    def copy_training_record(self, source: Run) -> None:
        """Copy what `source`'s training recorded and a model made from it shares (env.json, data.json, split.csv,
        history.csv, those it has) into this (new) run."""
        for name in (ENV, DATA, SPLIT, HISTORY):
            if (source.path / name).is_file():
                shutil.copyfile(source.path / name, self.path / name)

    def how_to_calibrate(self) -> str:
        return f"braintumor calibrate --run {self.path}"

    def write_calibration(self, arrays: dict[str, np.ndarray], summary: dict) -> None:
        """calibration.npz, then its sidecar calibration.json: `summary` and the npz's SHA-256."""
        def fill(tmp: Path) -> dict:
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
            return summary

        try:
            cache.write_checked(self.calibration, fill)
        except OSError as err:
            raise UserError(f"cannot write {self.calibration} ({describe(err)}); make {self.path} writable or free "
                            f"space, then run {self.how_to_calibrate()}") from err

    def read_calibration(self, parse: Callable[[dict[str, np.ndarray]], T]) -> T | None:
        """`parse` of the arrays of calibration.npz, read after its checksum is checked; None for a run that has none
        (trained before calibration existed); one line naming the fix for a damaged or incomplete one, or one whose
        arrays `parse` refuses (ValueError, KeyError)."""
        if not self.calibration.exists() and not self.calibration_summary.exists():
            return None
        try:
            cache.checked(self.calibration)
            with np.load(self.calibration, allow_pickle=False) as npz:
                return parse({key: npz[key] for key in npz.files})
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
            raise UserError(f"{self.calibration} is damaged or incomplete ({describe(err)}); fit it again with "
                            f"{self.how_to_calibrate()}") from err

    def read_config(self) -> config_file.Config:
        if not self.config.is_file():
            raise UserError(f"{self.config} not found; {self.path} is not a complete run folder: {GET_A_RUN}")
        return config_file.load_config(self.config)

    def save_config(self, cfg: config_file.Config) -> None:
        config_file.save_config(cfg, self.config)

    def write_data(self, summary: dict) -> None:
        """data.json: what the data loader found (`Dataset.summary()`)."""
        write_json(self.data, summary)

    def write_split(self, csv_text: str) -> None:
        """split.csv: the split file of the data the run trained on (`Dataset.split_csv`, data/splits.py)."""
        write_text(self.split, csv_text)

    def classes(self) -> list[str]:
        """The class names in the model's output order."""
        return self._data_entry("classes")

    def validation_files(self) -> list[str]:
        return self._data_entry("validation_files")

    def protocol(self) -> str:
        """The split protocol the run trained under (official for a run from before protocols existed)."""
        data = read_json(self.data)
        protocol = data.get("protocol") if isinstance(data, dict) else None
        return str(protocol.get("name", "official")) if isinstance(protocol, dict) else "official"

    def _data_entry(self, key: str) -> Any:
        data = read_json(self.data)
        if not isinstance(data, dict) or key not in data:
            raise UserError(f"{self.data} has no {key!r}; the run folder is damaged: "
                            f"train it again with braintumor train {self.config}")
        return data[key]

    def write_env(self, env: dict) -> None:
        write_json(self.env, env)

    def new_evaluation(self, split: str) -> Evaluation:
        """Where an evaluation of `split` goes by default (not created here)."""
        return Evaluation(self.path / EVAL / f"{split}-{timestamp()}")

    def evaluations(self) -> list[Evaluation]:
        return [Evaluation(folder) for folder in sorted((self.path / EVAL).glob("*")) if folder.is_dir()]

    # ------------------------------------------------------------ status

    def read_status(self) -> dict:
        status = read_json(self.status)
        if not isinstance(status, dict):
            raise UserError(f"{self.status} is not a JSON object; the run folder is damaged: "
                            f"train it again with braintumor train {self.config}")
        return status

    def state(self) -> str | None:
        """The state in status.json (running, completed, failed; unknown if it names none), or None without one."""
        return str(self.read_status().get("state", "unknown")) if self.status.is_file() else None

    def set_status(self, state: str, error: str | None = None) -> None:
        """Replace status.json in one rename; on a full disk, release the reserve first and try again."""
        try:
            status = json.loads(self.status.read_text()) if self.status.is_file() else {}
        except (OSError, ValueError):
            status = {}  # a status we cannot read is rewritten, keeping only what we know
        if not isinstance(status, dict):
            status = {}
        status.setdefault("started", datetime.now().isoformat())
        finished = datetime.now().isoformat() if state in ("completed", "failed") else None
        status = {**status, "state": state, "finished": finished, "error": error}
        reserve = self.path / RESERVE
        try:
            write_json(self.status, status)
        except OSError as err:
            if err.errno not in NO_SPACE or not reserve.exists():
                raise
            reserve.unlink()
            write_json(self.status, status)

    # ------------------------------------------------------------ one writer, disk space, leftovers

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's lock while the block runs; refuse (UserError) if another live process holds it.

        flock ties the lock to the holder's open file: the kernel drops it when the holder dies, even by
        SIGKILL, so a stale lock file left by a dead process is simply taken over.
        """
        try:
            handle = open(self.lock_file, "a+")  # noqa: SIM115  (held open for the whole block: the lock lives as long)
        except OSError as err:
            raise UserError(f"cannot write in {self.path} ({describe(err)}); make it writable or free space") from err
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(f"{self.path} is being trained by {_holder(handle)}; wait for it to finish or stop "
                                "it, then resume with braintumor train --resume RUN_DIR") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
            handle.flush()
            yield
        finally:
            handle.close()

    def holder(self) -> str | None:
        """Who trains the run now ("pid N on HOST"), or None if no live process holds its lock."""
        try:
            handle = open(self.lock_file)  # noqa: SIM115  (closed below; a shared lock only probes)
        except OSError:
            return None
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _holder(handle)
        return None

    def reserve_space(self) -> None:
        """Set aside a little disk space in the run folder (best effort) for the final status."""
        with contextlib.suppress(OSError):
            (self.path / RESERVE).write_bytes(b"\0" * RESERVE_BYTES)

    def release(self) -> None:
        """Remove the lock file and the space reserve of a completed run (its contract lists neither)."""
        for name in (RESERVE, LOCK):
            (self.path / name).unlink(missing_ok=True)

    def remove_partials(self) -> None:
        """Delete the temp files and folders a killed process left in the run folder."""
        remove_partials(self.path)

    # ------------------------------------------------------------ the last steps of training

    def reports_staging(self) -> Reports:
        """An empty hidden folder to build the Testing reports in (emptied if a killed writer left one)."""
        staging = self.path / REPORTS_STAGING
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        return Reports(staging)

    def adopt_reports(self, staging: Reports) -> None:
        """Rename each report into the run folder, metrics.json last: once it is there, all are."""
        for path in sorted(staging.path.iterdir(), key=lambda p: p.name == METRICS):
            os.replace(path, self.path / path.name)
        staging.path.rmdir()

    def complete(self) -> None:
        """Remove the checkpoints and mark the run completed.

        checkpoints/ is renamed away first, in one step: a kill from here on leaves a run whose resume
        sees no checkpoints but complete reports, and only finishes this bookkeeping.
        """
        removing = self.path / CHECKPOINTS_REMOVING
        if self.checkpoints.exists():
            os.replace(self.checkpoints, removing)
        shutil.rmtree(removing, ignore_errors=True)
        self.release()  # before the status: a completed run's folder holds its contract files only
        self.set_status("completed")


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "another process"


def _short(error: object, limit: int = 200) -> str:
    """The first line of a stored error, cut to `limit` characters (a status error can be a long traceback line)."""
    lines = str(error or "").strip().splitlines()
    text = lines[0] if lines else "no reason recorded"
    return text if len(text) <= limit else text[:limit] + "..."
