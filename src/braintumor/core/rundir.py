"""The run directory: unique creation, atomic writes, status marker, one-writer lock.

A run directory is never overwritten: a name clash gets a numeric suffix. Output folders of
evaluate, compare and audit are built next to their destination and renamed into place, so a
failure leaves nothing half-written. While a process trains a run it holds the run's lock; the
status file can still be written on a full disk because the run keeps a little space in reserve.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from braintumor.core.atomic import atomic_output, write_json
from braintumor.core.errors import UserError, describe


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def ensure_writable(parent: Path) -> None:
    """Create `parent` if needed; fail with the fix if runs cannot be written there."""
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"output folder {parent} cannot be created ({describe(err)}); "
                        "set output.dir (or --out) to a writable folder") from err
    if not os.access(parent, os.W_OK):
        raise UserError(f"output folder {parent} is not writable; set output.dir (or --out) to a writable folder")


def unique_dir(parent: Path, name: str) -> Path:
    """`parent/name`, or `parent/name-2`, `-3`, ... if taken; created."""
    ensure_writable(parent)
    for attempt in range(1, 1000):
        path = parent / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"too many runs named {name} in {parent}; choose another name")


@contextlib.contextmanager
def staged_dir(dest: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of `dest`, renamed to `dest` on success and removed on failure."""
    if dest.exists():
        raise UserError(f"{dest} already exists; choose another output folder")
    try:
        with atomic_output(dest, folder=True) as tmp:
            yield tmp
    except PermissionError as err:
        raise UserError(f"cannot write in {dest.parent}; choose a writable output folder") from err


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise UserError(f"{path} not found; is this a complete braintumor run directory?") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is corrupt ({err}); re-run the step that writes it") from err


RESERVE = ".space-reserve"  # released to write the status on a full disk
RESERVE_BYTES = 256 * 1024
LOCK = ".lock"  # pid and host of the process training the run; locked with flock while it runs
NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def reserve_space(run_dir: Path) -> None:
    """Set aside a little disk space in the run directory (best effort) for the final status."""
    with contextlib.suppress(OSError):
        (run_dir / RESERVE).write_bytes(b"\0" * RESERVE_BYTES)


def set_status(run_dir: Path, state: str, error: str | None = None) -> None:
    """Replace status.json in one rename; on a full disk, release the reserve first and try again."""
    path = run_dir / "status.json"
    try:
        status = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        status = {}  # a status we cannot read is rewritten, keeping only what we know
    status.setdefault("started", datetime.now().isoformat())
    finished = datetime.now().isoformat() if state in ("completed", "failed") else None
    status = {**status, "state": state, "finished": finished, "error": error}
    try:
        write_json(path, status)
    except OSError as err:
        if err.errno not in NO_SPACE or not (run_dir / RESERVE).exists():
            raise
        (run_dir / RESERVE).unlink()
        write_json(path, status)


def no_space(err: BaseException | None) -> OSError | None:
    """The full-disk or read-only error behind `err` (libraries wrap it), if that is what it is."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return err
        err = err.__cause__ or err.__context__
    return None


@contextlib.contextmanager
def lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock while the block runs; refuse (UserError) if another live process holds it.

    flock ties the lock to the holder's open file: the kernel drops it when the holder dies, even by
    SIGKILL, so a stale lock file left by a dead process is simply taken over.
    """
    path = run_dir / LOCK
    try:
        handle = open(path, "a+")  # noqa: SIM115  (held open for the whole block: the lock lives as long as it)
    except OSError as err:
        raise UserError(f"cannot write in {run_dir} ({describe(err)}); make it writable or free space") from err
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(f"{run_dir} is being trained by {holder}; wait for it to finish or stop it, "
                            "then resume with braintumor train --resume RUN_DIR") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def release(run_dir: Path) -> None:
    """Remove the lock file and the space reserve of a completed run (its contract lists neither)."""
    for name in (RESERVE, LOCK):
        (run_dir / name).unlink(missing_ok=True)


def remove_partials(folder: Path) -> None:
    """Delete temp siblings (`.NAME.partial-*`) that a killed process had no chance to clean up."""
    for path in folder.glob(".*.partial-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
