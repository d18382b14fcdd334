"""Decoding: one image file → a (size, size, 3) uint8 RGB array, with the optional preprocessing,
and an on-disk cache of decoded splits. The same function serves training, evaluation and prediction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from braintumor.core import cache
from braintumor.core.config import DataConfig
from braintumor.core.errors import UserError, describe
from braintumor.core.logs import get_logger

log = get_logger(__name__)
DECODE_VERSION = 2  # bump when decoding or preprocessing changes, to invalidate caches (2: 16-bit scaling)
# what a damaged, hostile or unsupported image file raises while it is opened or decoded
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def brain_mask(gray: np.ndarray) -> np.ndarray:
    """The largest bright connected region: the brain against the dark MRI background."""
    threshold = max(10.0, 0.1 * float(np.percentile(gray, 99)))
    labelled, count = ndimage.label(gray > threshold)
    if count == 0:
        return np.ones_like(gray, dtype=bool)
    sizes = np.bincount(labelled.ravel())[1:]
    return ndimage.binary_fill_holes(labelled == 1 + int(np.argmax(sizes)))


def _brain_crop(rgb: np.ndarray) -> np.ndarray:
    mask = brain_mask(rgb.mean(axis=2))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    margin = int(0.03 * max(mask.shape))
    top, bottom = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, mask.shape[0])
    left, right = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, mask.shape[1])
    crop = rgb[top:bottom, left:right]
    side = max(crop.shape[:2])
    square = np.zeros((side, side, 3), dtype=rgb.dtype)
    y, x = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
    square[y:y + crop.shape[0], x:x + crop.shape[1]] = crop
    return square


def _standardize(rgb: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance over the brain, mapped back to [0, 255] (±3 σ) for the backbones."""
    gray = rgb.mean(axis=2)
    mask = brain_mask(gray)
    mean, std = gray[mask].mean(), gray[mask].std() + 1e-6
    z = (rgb.astype(np.float32) - mean) / std
    out = np.clip(127.5 + 42.5 * z, 0, 255)
    out[~mask] = 0
    return out.astype(np.uint8)


@contextlib.contextmanager
def open_image(source: Path | IO[bytes]) -> Iterator[Image.Image]:
    """PIL's Image.open, with images above PIL's pixel limit refused (DecompressionBombWarning raised,
    not just printed) so a decompression bomb is skipped like any unreadable file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            yield image


def to_8bit(image: Image.Image, mode: str) -> Image.Image:
    """`image.convert(mode)` ("RGB" or "L"), with 16-bit and 32-bit gray images scaled into 0-255 by their
    own maximum (PIL would clip them, saturating almost every pixel of a 16-bit scan)."""
    if image.mode.startswith(("I", "F")):
        values = np.asarray(image, dtype=np.float64)
        values = values - min(float(values.min()), 0.0)
        peak = float(values.max())
        gray = np.round(values * (255.0 / peak)) if peak > 0 else np.zeros_like(values)
        image = Image.fromarray(gray.astype(np.uint8))
    return image.convert(mode)


def decode_image(path: Path, size: int, preprocess: list[str]) -> np.ndarray:
    """One file → (size, size, 3) uint8 RGB; the same function serves training, evaluation, prediction."""
    with open_image(path) as image:
        image.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at reduced scale, much faster
        rgb = np.asarray(to_8bit(image, "RGB"))
    if "brain_crop" in preprocess:
        rgb = _brain_crop(rgb)
    rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BILINEAR))
    if "standardize" in preprocess:
        rgb = _standardize(rgb)
    return rgb


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
