"""The one way a checksummed file is written and read: the caches (decoded images, image signatures, prefix
outputs) and the run folder's calibration.

Each cache file has a JSON sidecar (its name with `.json`) holding the SHA-256 of the file's bytes and what
its reader needs. Both are written through core/atomic.py (hidden temp sibling, fsync, rename), the file first
and the sidecar last, so a file without its sidecar is incomplete. Every load checks the SHA-256 before
anything reads the file: a damaged or incomplete cache entry is reported in one warning line, deleted, and
built again by the caller (a damaged calibration is an error instead: core/run.py). A cache folder that cannot
be written (read-only, full) only costs speed: one warning per folder, and the caller goes on without caching.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from braintumor.core.atomic import atomic_output, write_json
from braintumor.core.errors import describe
from braintumor.core.logs import get_logger

log = get_logger(__name__)

_unwritable_warned: set[Path] = set()


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checked(path: Path) -> dict:
    """The sidecar's metadata of `path`, after checking the file's SHA-256 against it; OSError or ValueError (a
    missing, unreadable or non-JSON sidecar, a file that does not match) for a damaged or incomplete entry."""
    try:
        meta = json.loads(sidecar(path).read_text())
        if file_sha256(path) != meta["sha256"]:
            raise ValueError(f"{path.name} does not match its checksum")
    except (KeyError, TypeError) as err:
        raise ValueError(f"{sidecar(path).name} holds no checksum ({describe(err)})") from err
    return meta


def verified(path: Path, kind: str) -> dict | None:
    """The sidecar's metadata when `path` has the SHA-256 it was written with; None when there is no entry, or
    when it was damaged or incomplete: then it is reported in one line (`kind` names the cache) and deleted."""
    if not path.exists() and not sidecar(path).exists():
        return None
    try:
        return checked(path)
    except (OSError, ValueError) as err:  # JSON and UTF-8 errors are ValueErrors
        log.warning(f"{kind}: {path} is damaged or incomplete ({describe(err)}); deleting it and building it again")
        _delete(path)
        return None


def write_checked(path: Path, fill: Callable[[Path], dict]) -> None:
    """Write `path`: `fill(tmp)` writes its bytes at a temp path and returns the metadata its reader needs, then
    the sidecar (that metadata and the SHA-256) goes next to it. An OSError leaves no entry behind."""
    with atomic_output(path) as tmp:
        meta = {**fill(tmp), "sha256": file_sha256(tmp)}
    try:
        write_json(sidecar(path), meta)
    except OSError:
        _delete(path)  # else the next load would report the sidecar-less file as damaged
        raise


def write(path: Path, fill: Callable[[Path], dict]) -> bool:
    """Write the cache file `path` (see `write_checked`). False, after one warning per folder, when the folder
    cannot be written; the caller then goes on without caching."""
    try:
        write_checked(path, fill)
    except OSError as err:
        _warn_unwritable(path.parent, err)
        return False
    return True


def _delete(path: Path) -> None:
    for each in (path, sidecar(path)):
        with contextlib.suppress(OSError):  # a read-only folder: the entry is just not rebuilt on disk
            each.unlink(missing_ok=True)


def _warn_unwritable(where: Path, err: BaseException) -> None:
    if where not in _unwritable_warned:
        _unwritable_warned.add(where)
        log.warning(f"cannot write the cache in {where} ({describe(err)}); continuing without caching, so later "
                    "runs compute it again (set data.cache_dir to a writable folder)")
