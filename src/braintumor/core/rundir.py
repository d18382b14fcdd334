"""Output folders in general: unique creation, staged folders, JSON reading, leftovers of killed writers.

An output folder is never overwritten: a name clash gets a numeric suffix. Output folders of
evaluate, compare and audit are built next to their destination and renamed into place, so a
failure leaves nothing half-written. A run folder's own files are core/run.py's business.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from braintumor.core.atomic import atomic_output
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


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def no_space(err: BaseException | None) -> OSError | None:
    """The full-disk or read-only error behind `err` (libraries wrap it), if that is what it is."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            return err
        err = err.__cause__ or err.__context__
    return None


def remove_partials(folder: Path) -> None:
    """Delete temp siblings (`.NAME.partial-*`) that a killed process had no chance to clean up."""
    for path in folder.glob(".*.partial-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
