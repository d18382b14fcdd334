"""The run directory: unique creation, atomic writes, status marker, environment record.

A run directory is never overwritten: a name clash gets a numeric suffix. Output folders of
evaluate, compare and audit are built next to their destination and renamed into place, so a
failure leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import json
import os
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


def set_status(run_dir: Path, state: str, error: str | None = None) -> None:
    path = run_dir / "status.json"
    status = json.loads(path.read_text()) if path.is_file() else {"started": datetime.now().isoformat()}
    finished = datetime.now().isoformat() if state in ("completed", "failed") else None
    write_json(path, {**status, "state": state, "finished": finished, "error": error})
