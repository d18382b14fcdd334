"""Image twins: per-image signatures (content hash, brain-normalised thumbnail, perceptual hash) and
exact / near-duplicate matching, used by the audit, training (`data.exclude_test_twins`) and the
leak-free metrics.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn
from tqdm import tqdm

from braintumor.core import cache
from braintumor.core.logs import get_logger
from braintumor.data import medical
from braintumor.data.decode import skip_reason
from braintumor.data.files import is_scan
from braintumor.data.pixels import UNREADABLE, open_image, to_8bit

log = get_logger(__name__)

DECODE_SIZE = 128  # JPEG draft decoding to >= 128 px: fast, and plenty for statistics and thumbnails


THUMB_SIZE = 64


SPREAD = 1.4  # thumbnail box half-width in standard deviations of the brain's intensity mass


DARK_LEVEL = 16  # gray level below which a pixel counts as background


HAMMING_MAX = 12


CORRELATION_MIN = 0.92


@dataclass
class Signatures:
    """Per-image arrays, one row per file; an unreadable file has error != "" and zeros elsewhere."""

    sha256: np.ndarray  # (N,) str, hash of the file's bytes
    size: np.ndarray  # (N, 2) width, height
    mode: np.ndarray  # (N,) str, PIL colour mode
    stats: np.ndarray  # (N, 3) gray mean, gray std, fraction of pixels below DARK_LEVEL
    bits: np.ndarray  # (N, 64) bool perceptual hash
    thumb: np.ndarray  # (N, THUMB_SIZE, THUMB_SIZE) uint8 brain-normalised thumbnail
    error: np.ndarray  # (N,) str


FIELDS = tuple(Signatures.__dataclass_fields__)


def _brain_thumbnail(gray: np.ndarray) -> np.ndarray:
    weight = np.maximum(gray - np.percentile(gray, 5), 0.0)
    total = weight.sum()
    if total <= 0:
        return np.zeros((THUMB_SIZE, THUMB_SIZE), np.uint8)
    ys, xs = np.arange(gray.shape[0]) + 0.5, np.arange(gray.shape[1]) + 0.5
    py, px = weight.sum(1) / total, weight.sum(0) / total
    cy, cx = py @ ys, px @ xs
    sy, sx = np.sqrt(py @ (ys - cy) ** 2), np.sqrt(px @ (xs - cx) ** 2)
    affine = (2 * SPREAD * sx / THUMB_SIZE, 0, cx - SPREAD * sx, 0, 2 * SPREAD * sy / THUMB_SIZE, cy - SPREAD * sy)
    thumb = np.asarray(Image.fromarray(gray).transform(
        (THUMB_SIZE, THUMB_SIZE), Image.Transform.AFFINE, affine, resample=Image.Resampling.BILINEAR))
    low, high = thumb.min(), thumb.max()
    return np.round(255 * (thumb - low) / max(high - low, 1e-6)).astype(np.uint8)


def _perceptual_hash(thumb: np.ndarray) -> np.ndarray:
    half = thumb.astype(np.float32).reshape(32, THUMB_SIZE // 32, 32, THUMB_SIZE // 32).mean((1, 3))
    low = dctn(half, norm="ortho")[:8, :8].ravel()
    return low > np.median(low[1:])  # median without the DC term, as in the usual pHash


def _signature(path: Path) -> tuple:
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        if is_scan(path):  # DICOM or NIfTI: the gray slice the decoder classifies, as windowed by medical.py
            scan = medical.read_scan(path)
            gray = scan.slices[scan.middle].astype(np.float32)
            size, mode = (gray.shape[1], gray.shape[0]), "scan"
        else:
            with open_image(io.BytesIO(data)) as image:
                size, mode = image.size, image.mode
                image.draft("L", (DECODE_SIZE, DECODE_SIZE))
                gray = np.asarray(to_8bit(image, "L"), dtype=np.float32)
    except UNREADABLE as err:
        return (digest, (0, 0), "", np.zeros(3, np.float32), np.zeros(64, bool),
                np.zeros((THUMB_SIZE, THUMB_SIZE), np.uint8), skip_reason(err))
    stats = np.array([gray.mean(), gray.std(), (gray < DARK_LEVEL).mean()], np.float32)
    thumb = _brain_thumbnail(gray)
    return digest, size, mode, stats, _perceptual_hash(thumb), thumb, ""


def _cache_key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}\t{stat.st_size}\t{stat.st_mtime_ns}"


def _load_cache(cache_file: Path | None) -> dict[str, tuple]:
    """Cached rows by key; a damaged file is reported, deleted and rebuilt (core/cache.py)."""
    if cache_file is None or cache.verified(cache_file, "signature cache") is None:
        return {}
    with np.load(cache_file, allow_pickle=False) as saved:
        columns = {name: saved[name] for name in ("keys", *FIELDS)}
    return dict(zip(columns["keys"].tolist(), zip(*(columns[n] for n in FIELDS), strict=True), strict=True))


def _save_cache(cache_file: Path, rows: dict[str, tuple]) -> None:
    columns = {"keys": np.array(list(rows)),
               **{name: np.array([row[i] for row in rows.values()]) for i, name in enumerate(FIELDS)}}

    def fill(tmp: Path) -> dict:
        with open(tmp, "wb") as handle:  # a path would get ".npz" appended
            np.savez(handle, **columns)
        return {}

    cache.write(cache_file, fill)


def compute_signatures(files: Sequence[Path], cache_dir: Path | None = None) -> Signatures:
    """Read each file once: content hash, size, mode, intensity statistics, hash and thumbnail.

    With ``cache_dir``, signatures are kept in ``cache_dir/signatures.npz`` keyed by
    (path, size, mtime), so a changed file is read again.
    """
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("compute_signatures needs at least one file")
    cache_file = Path(cache_dir) / "signatures.npz" if cache_dir is not None else None
    rows = _load_cache(cache_file)
    keys = [_cache_key(f) for f in files]
    missing = [i for i, key in enumerate(keys) if key not in rows]
    for i in tqdm(missing, desc="reading images", unit="img", disable=not missing, leave=False):
        rows[keys[i]] = _signature(files[i])
    if cache_file is not None and missing:
        _save_cache(cache_file, rows)
    wanted = [rows[key] for key in keys]
    return Signatures(*(np.array([row[i] for row in wanted]) for i in range(len(FIELDS))))


def match_pairs(sigs: Signatures, rows: np.ndarray, cols: np.ndarray, within: bool) -> list[tuple]:
    """(i, j, kind, hamming, correlation) for exact ("exact": same bytes) and near ("near") duplicates.

    i comes from ``rows`` and j from ``cols`` (indices into ``sigs``); with ``within`` the two are
    the same set and each unordered pair appears once.
    """
    bits = sigs.bits.astype(np.float32)
    readable = sigs.error == ""
    codes = np.unique(sigs.sha256, return_inverse=True)[1]
    vectors = sigs.thumb.reshape(len(sigs.thumb), -1).astype(np.float32)
    vectors -= vectors.mean(1, keepdims=True)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
    found = []
    for start in range(0, len(rows), 1024):
        block = rows[start:start + 1024]
        hamming = bits[block] @ (1 - bits[cols]).T + (1 - bits[block]) @ bits[cols].T
        exact = codes[block][:, None] == codes[cols][None, :]
        candidate = exact | ((hamming <= HAMMING_MAX) & readable[block][:, None] & readable[cols][None, :])
        if within:
            candidate &= block[:, None] < cols[None, :]
        a, b = np.nonzero(candidate)
        i, j = block[a], cols[b]
        correlation = np.empty(len(i), np.float32)
        for s in range(0, len(i), 4096):  # bounded memory when many pairs are candidates
            correlation[s:s + 4096] = np.einsum("nk,nk->n", vectors[i[s:s + 4096]], vectors[j[s:s + 4096]])
        for n in np.flatnonzero(exact[a, b] | (correlation >= CORRELATION_MIN)):
            kind = "exact" if exact[a[n], b[n]] else "near"
            found.append((int(i[n]), int(j[n]), kind, int(hamming[a[n], b[n]]), float(correlation[n])))
    return found


def find_test_twins(
    train_files: Sequence[Path], test_files: Sequence[Path], cache_dir: Path | None = None
) -> dict[Path, list[Path]]:
    """Map each Testing file that has an exact or near duplicate in Training to those Training files."""
    train, test = [Path(p) for p in train_files], [Path(p) for p in test_files]
    if not train or not test:
        return {}
    sigs = compute_signatures(test + train, cache_dir)
    n_test = len(test)
    twins: dict[Path, list[Path]] = defaultdict(list)
    for i, j, *_ in match_pairs(sigs, np.arange(n_test), np.arange(n_test, n_test + len(train)), within=False):
        twins[test[i]].append(train[j - n_test])
    return {test_file: sorted(found) for test_file, found in twins.items()}

