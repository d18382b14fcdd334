"""The one way to write an output: build it at a hidden temp sibling, then rename it into place.

A reader (or a resumed run) sees either the old file or the complete new one, never half a file;
a failure, including a full disk or Ctrl-C, removes the temp sibling and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _partial_prefix(dest: Path) -> str:
    return f".{dest.name}.partial-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead_partials(dest: Path) -> None:
    """Remove the temp siblings of `dest` whose process died without cleaning up (SIGKILL, power cut).

    A temp sibling names its process; one of a process still alive on this host is left alone.
    """
    prefix = _partial_prefix(Path(dest))
    for tmp in Path(dest).parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(tmp)


@contextlib.contextmanager
def atomic_output(dest: Path, folder: bool = False) -> Iterator[Path]:
    """Yield a temp path next to `dest`; on success it is renamed to `dest`, on any failure removed.

    `folder=True` creates the temp path as a folder to fill (`dest` must not exist yet); otherwise
    the caller writes a file there, and it replaces `dest` if `dest` exists.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{_partial_prefix(dest)}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    if folder:
        tmp.mkdir()
    try:
        yield tmp
        if not folder:
            with open(tmp, "rb") as handle:  # on disk before the rename, so a power cut keeps old or new
                os.fsync(handle.fileno())
        os.replace(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


def check_writable_folder(folder: Path) -> None:
    """Raise the OSError that writing into `folder` (its missing parents created, as atomic_output does) would
    meet, so a command can refuse before its work instead of after it: an unnamed temp file is created and
    closed in the nearest existing ancestor, which must be a folder (a path under a regular file fails here)."""
    existing = Path(folder)
    while not os.path.lexists(existing):
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(existing))
    with tempfile.TemporaryFile(dir=existing, prefix=".probe-"):
        pass


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    """UTF-8; a file name that is not valid UTF-8 (surrogate escapes) is written as visible \\udcXX."""
    write_bytes(path, text.encode("utf-8", "backslashreplace"))


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
