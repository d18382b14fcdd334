"""Decoding: one image file → a (size, size, 3) uint8 RGB array, with the optional preprocessing,
and an on-disk cache of decoded splits. The same function serves training, evaluation and prediction.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from tqdm import tqdm

from braintumor.core.config import DataConfig
from braintumor.core.errors import UserError

DECODE_VERSION = 1  # bump when decoding or preprocessing changes, to invalidate caches


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


def decode_image(path: Path, size: int, preprocess: list[str]) -> np.ndarray:
    """One file → (size, size, 3) uint8 RGB; the same function serves training, evaluation, prediction."""
    with Image.open(path) as image:
        image.draft("RGB", (2 * size, 2 * size))  # JPEG: decode at reduced scale, much faster
        rgb = np.asarray(image.convert("RGB"))
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
        digest.update(f"{relative}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def decode_files(root: Path, files: list[str], cfg: DataConfig, desc: str) -> tuple[np.ndarray, list[dict]]:
    """Decode (or read from cache) the images; returns the array and the skipped files.

    Unreadable files are dropped from the array in order, and listed with the reason.
    """
    cache = Path(cfg.cache_dir).expanduser() / f"decoded-{_cache_key(root, files, cfg.image_size, cfg.preprocess)}"
    if (cache / "images.npy").is_file():
        skipped = json.loads((cache / "skipped.json").read_text())
        return np.load(cache / "images.npy", mmap_mode="r"), skipped
    images, skipped = [], []
    for relative in tqdm(files, desc=f"decoding {desc}", unit="img", leave=False):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                images.append(decode_image(root / relative, cfg.image_size, cfg.preprocess))
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombWarning) as err:
            if cfg.strict:
                raise UserError(f"cannot read image {root / relative} ({err}); remove or replace it, "
                                "or set data.strict: false to skip unreadable images") from err
            skipped.append({"file": relative, "reason": str(err) or type(err).__name__})
    array = np.stack(images) if images else np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)
    _write_cache(cache, array, skipped)
    return array, skipped


def _write_cache(cache: Path, images: np.ndarray, skipped: list[dict]) -> None:
    tmp = cache.with_name(f"{cache.name}.partial-{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        np.save(tmp / "images.npy", images)
        (tmp / "skipped.json").write_text(json.dumps(skipped))
        tmp.rename(cache)
    except OSError as err:  # a read-only or full cache folder only costs speed
        warnings.warn(f"could not write the image cache {cache} ({err}); the next run decodes again",
                      stacklevel=2)
        shutil.rmtree(tmp, ignore_errors=True)

