"""An on-disk cache of decoded splits. Decoding itself (one image file → a (size, size, 3) uint8 RGB
array, with the optional preprocessing) is `pixels.decode_image`, which serves training, evaluation
and prediction, and which every export carries as its decode.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from braintumor.core import cache
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


def decode_files(root: Path, files: list[str], cfg: DataConfig, desc: str) -> tuple[np.ndarray, list[dict]]:
    """Decode (or read from the verified cache) the images; returns the array and the skipped files.

    Unreadable files are dropped from the array in order, and listed with the reason.
    """
    path = Path(cfg.cache_dir).expanduser() / f"decoded-{_cache_key(root, files, cfg.image_size, cfg.preprocess)}.npy"
    meta = cache.verified(path, "image cache")
    if meta is not None:
        return np.load(path, mmap_mode="r", allow_pickle=False), meta["skipped"]
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

    def fill(tmp: Path) -> dict:
        with open(tmp, "wb") as handle:  # a path would get ".npy" appended
            np.save(handle, array)
        return {"skipped": skipped}

    cache.write(path, fill)
    return array, skipped
