"""The one decoder: an input file → the model's (size, size, 3) uint8 RGB images, used by training, evaluation,
prediction, the demo and the audit; and an on-disk cache of decoded splits.

Photographs (JPEG, PNG, BMP) are `pixels.decode_image`, which every export also carries as its decode.py.
DICOM and NIfTI scans are read by `medical.read_scan` (its windowing policy gives 8-bit gray slices) and
then take the same steps as a photograph's pixels (`pixels.prepare`: gray copied into R, G and B, the
optional brain crop, resize, the optional standardization).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from braintumor.core import cache
from braintumor.core.config import DataConfig
from braintumor.core.errors import UserError, describe
from braintumor.core.logs import get_logger
from braintumor.data import medical, pixels
from braintumor.data.files import is_scan
from braintumor.data.pixels import UNREADABLE

log = get_logger(__name__)
DECODE_VERSION = 2  # bump when decoding or preprocessing changes, to invalidate caches (2: 16-bit scaling)


@dataclass(frozen=True)
class Decoded:
    """One input decoded: its images for the model, each with its slice number (None for a 2-D image)."""

    images: list[tuple[int | None, np.ndarray]]
    window: str | None = None  # how a scan's values became gray levels (medical.py); None for a photograph
    orientation: str | None = None  # how a volume was cut into slices (medical.py); None for a 2-D image
    empty_slices: int = 0  # of the slices asked for, those skipped as near-empty (no brain)
    slices_with_signal: tuple[int, ...] = ()  # a volume's slices that are not near-empty: the ones it can give

    @property
    def volume(self) -> bool:
        """A volume: its slices are listed, and a summary over them is due."""
        return self.orientation is not None


def _is_dicom(path: Path) -> bool:
    """A DICOM file by its content (the DICM magic after the 128-byte preamble), whatever its name."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def decode_scan(path: Path, size: int, preprocess: list[str], slices: str | int = "middle") -> Decoded:
    """A photograph, a DICOM or NIfTI file, or a folder holding one DICOM series → the model's images.

    Of a volume, `slices` "middle" gives its middle slice, "all" every slice and a number that slice; slices
    without signal (`medical.has_signal`) are left out and counted. Raises an UNREADABLE error (medical.ScanRefused
    with the whole reason for a refused scan, or a slice number outside the volume)."""
    path = Path(path)
    if not (path.is_dir() or is_scan(path) or _is_dicom(path)):
        return Decoded([(None, pixels.decode_image(path, size, preprocess))])
    scan = medical.read_scan(path)
    if not scan.volume:
        return Decoded([(None, pixels.prepare(scan.slices[0], size, preprocess))], scan.window)
    count = len(scan.slices)
    if isinstance(slices, int):
        if not 0 <= slices < count:
            raise medical.ScanRefused(f"no slice {slices}: the volume's slices are 0 to {count - 1}")
        chosen, which = [slices], f"slice {slices}"
    else:
        chosen, which = ([scan.middle], f"the middle slice (of {count})") if slices == "middle" else (
            range(count), f"all {count} slices")
    with_signal = tuple(n for n in range(count) if medical.has_signal(scan.slices[n]))
    kept = [n for n in chosen if n in with_signal]
    if not kept:
        raise medical.ScanRefused(f"{which} near-empty (no brain) after windowing ({scan.window})")
    return Decoded([(n, pixels.prepare(scan.slices[n], size, preprocess)) for n in kept], scan.window,
                   scan.orientation, len(chosen) - len(kept), with_signal)


def decode_image(path: Path, size: int, preprocess: list[str]) -> np.ndarray:
    """The one image a file gives where one file is one image (training, evaluation, the demo): a
    photograph, a 2-D scan, or a volume's middle slice."""
    return decode_scan(path, size, preprocess).images[0][1]


def skip_reason(err: Exception) -> str:
    """Why a file was skipped, on one line: a refused scan's own reason, else the error's type and first line."""
    return str(err) if isinstance(err, medical.ScanRefused) else f"{type(err).__name__}: {describe(err)}"


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
                raise UserError(f"cannot read image {root / relative} ({skip_reason(err)}); remove or replace it, "
                                "or set data.strict: false to skip unreadable images") from err
            skipped.append({"file": relative, "reason": skip_reason(err)})
    array = np.stack(images) if images else np.zeros((0, cfg.image_size, cfg.image_size, 3), np.uint8)

    def fill(tmp: Path) -> dict:
        with open(tmp, "wb") as handle:  # a path would get ".npy" appended
            np.save(handle, array)
        return {"skipped": skipped}

    cache.write(path, fill)
    return array, skipped
