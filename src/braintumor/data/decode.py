"""An on-disk cache of decoded splits. Decoding itself (one image file → a (size, size, 3) uint8 RGB
array, with the optional preprocessing) is `pixels.decode_image`, which serves training, evaluation
and prediction, and which every export carries as its decode.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from braintumor.core.atomic import atomic_output, write_json
from braintumor.core.config import DataConfig
from braintumor.core.errors import UserError, describe
from braintumor.core.logs import get_logger
from braintumor.data.pixels import UNREADABLE, decode_image

log = get_logger(__name__)
DECODE_VERSION = 2  # bump when decoding or preprocessing changes, to invalidate caches (2: 16-bit scaling)


def _cache_key(root: Path, files: list[str], size: int, preprocess: list[str]) -> str:
    digest = hashlib.sha256(json.dumps([DECODE_VERSION, size, preprocess]).encode())
    for relative in files:
        stat = (root / relative).stat()
        # fsencode: a file name that is not valid UTF-8 arrives as surrogate escapes and goes back to its bytes
        digest.update(os.fsencode(relative) + f"\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


_unwritable_warned: set[Path] = set()


def warn_cache_unwritable(where: Path, err: BaseException) -> None:
    """A read-only or full cache folder only costs speed: say so once per folder and go on."""
    if where not in _unwritable_warned:
        _unwritable_warned.add(where)
        log.warning(f"cannot write the cache in {where} ({describe(err)}); continuing without caching, "
                    "so later runs decode again (set data.cache_dir to a writable folder)")


def _read_cache(cache: Path) -> tuple[np.ndarray, list[dict]] | None:
    """The cached images if the folder is whole and images.npy still has the checksum it was written with.

    Anything else (truncated, zeroed, garbage, short, a missing file) is reported, deleted and rebuilt.
    """
    if not cache.exists():
        return None
    try:
        index = json.loads((cache / "index.json").read_text())
        images_file = cache / "images.npy"
        if file_sha256(images_file) != index["sha256"]:
            raise ValueError("images.npy does not match its checksum")
        images = np.load(images_file, mmap_mode="r", allow_pickle=False)
        if list(images.shape) != index["shape"] or images.dtype != np.uint8:
            raise ValueError(f"images.npy holds {images.shape} {images.dtype}, expected {index['shape']} uint8")
        return images, index["skipped"]
    except (OSError, ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
        log.warning(f"image cache {cache} is damaged ({describe(err)}); deleting it and decoding again")
        shutil.rmtree(cache, ignore_errors=True)
        return None


def decode_files(root: Path, files: list[str], cfg: DataConfig, desc: str) -> tuple[np.ndarray, list[dict]]:
    """Decode (or read from the verified cache) the images; returns the array and the skipped files.

    Unreadable files are dropped from the array in order, and listed with the reason.
    """
    cache = Path(cfg.cache_dir).expanduser() / f"decoded-{_cache_key(root, files, cfg.image_size, cfg.preprocess)}"
    cached = _read_cache(cache)
    if cached is not None:
        return cached
    images, skipped = [], []
    for relative in tqdm(files, desc=f"decoding {desc}", unit="img", leave=False):
        try:
            images.append(decode_image(root / relative, cfg.image_size, cfg.preprocess))
        except UNREADABLE as err:
            if cfg.strict:
                raise UserError(f"cannot read image {root / relative} ({describe(err)}); remove or replace it, "
                                "or set data.strict: false to skip unreadable images") from err
            skipped.append({"file": relative, "reason": f"{type(err).__name__}: {describe(err)}"})
    array = np.stack(images) if images else np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)
    _write_cache(cache, array, skipped)
    return array, skipped


def _write_cache(cache: Path, images: np.ndarray, skipped: list[dict]) -> None:
    try:
        with atomic_output(cache, folder=True) as tmp:
            np.save(tmp / "images.npy", images)
            write_json(tmp / "index.json", {"sha256": file_sha256(tmp / "images.npy"),
                                            "shape": list(images.shape), "skipped": skipped})
    except OSError as err:
        if not cache.is_dir():  # else another process wrote the same cache first, which is fine
            warn_cache_unwritable(cache.parent, err)
