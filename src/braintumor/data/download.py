"""Fetch the public data set (or take a local zip), extract it safely, verify it, move it into place.

Verification = image counts per split and class plus a content manifest hash: SHA-256 over the
sorted lines "<relative/path>\\t<sha256 of the file's bytes>" of every image file under Training/
and Testing/ (see manifest_hash). Other files (README, .DS_Store) are ignored. A verified
destination holds a small marker file with that hash, so a second call only re-counts files.
"""

from __future__ import annotations

import hashlib
import http.client
import shutil
import stat
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from braintumor.core.atomic import atomic_output, write_text
from braintumor.core.errors import UserError
from braintumor.core.logs import get_logger
from braintumor.data.files import SPLITS, scan_tree

log = get_logger(__name__)

DATASET_URL = ("https://github.com/SartajBhuvaji/Brain-Tumor-Classification-DataSet/"
               "archive/refs/heads/master.zip")
# Computed once from ../shared/data/brain-tumor-mri (3264 JPEGs) with count_images() and
# manifest_hash(); both are recomputed for every download.
DATASET_EXPECTED = {
    "counts": {
        "Training": {"glioma_tumor": 826, "meningioma_tumor": 822, "no_tumor": 395, "pituitary_tumor": 827},
        "Testing": {"glioma_tumor": 100, "meningioma_tumor": 115, "no_tumor": 105, "pituitary_tumor": 74},
    },
    "manifest": "a78cb34d1564c4c0459888efdc535d2bc50901df28119c09949a9846706adad0",
}
MARKER = ".verified"
CHUNK = 1 << 20
# Limits checked from the zip's directory before anything is written (the published archive: about
# 160 MB unpacked, JPEGs that barely compress). zipfile never writes more than an entry's declared
# size, so a directory that lies about sizes cannot get past them either.
MAX_UNPACKED_BYTES = 4 << 30
MAX_RATIO = 100  # unpacked / packed, per entry and in total: a zip bomb reaches thousands
FREE_SPACE_MARGIN = 256 << 20


def count_images(root: Path) -> dict[str, dict[str, int]]:
    """Image files per split and class under ROOT/{Training,Testing}/<class>/."""
    counts: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for image in scan_tree(root)[0]:
        counts[image.split][image.label] = counts[image.split].get(image.label, 0) + 1
    return counts


def manifest_hash(root: Path) -> str:
    """SHA-256 over sorted "relative/path<TAB>sha256(bytes)" lines of the image files."""
    lines = sorted(f"{image.path.relative_to(root).as_posix()}\t{hashlib.sha256(image.path.read_bytes()).hexdigest()}"
                   for image in scan_tree(root)[0])
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _is_verified(dest: Path, expected: dict) -> bool:
    marker = dest / MARKER
    return (marker.is_file() and marker.read_text().strip() == expected["manifest"]
            and count_images(dest) == expected["counts"])


def _fetch(url: str, target: Path) -> Path:
    fix = "download the zip by hand and pass it with --archive FILE"
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="download") as bar:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    except (OSError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts are OSErrors
        raise UserError(f"could not download {url} ({err}); {fix}") from err
    return target


def _check_entry(info: zipfile.ZipInfo, dest: Path) -> None:
    name = info.filename.replace("\\", "/")
    parts = PurePosixPath(name).parts
    escapes = (name.startswith("/") or ".." in parts or (parts and ":" in parts[0])
               or not (dest / name).resolve().is_relative_to(dest.resolve()))
    if escapes or stat.S_ISLNK(info.external_attr >> 16):
        raise UserError(f"archive entry {info.filename!r} is a link or would escape the destination; "
                        "refusing to extract it (use the data set's original archive)")


def _check_sizes(archive: Path, entries: list[zipfile.ZipInfo], dest: Path, max_bytes: int, max_ratio: float) -> None:
    fix = "refusing to extract it (use the data set's original archive)"
    unpacked = sum(info.file_size for info in entries)
    if unpacked > max_bytes:
        raise UserError(f"{archive} would unpack to {unpacked / 2**20:.0f} MiB, more than the limit of "
                        f"{max_bytes / 2**20:.0f} MiB; {fix}")
    totals = [(str(archive), unpacked, sum(info.compress_size for info in entries))]
    for name, size, packed in totals + [(info.filename, info.file_size, info.compress_size) for info in entries]:
        if size > CHUNK and size > max_ratio * max(packed, 1):  # small files may compress well
            raise UserError(f"{name} unpacks to {size / max(packed, 1):.0f} times its packed size "
                            f"(limit {max_ratio:g}), like a zip bomb; {fix}")
    free = shutil.disk_usage(dest).free
    if free < unpacked + FREE_SPACE_MARGIN:
        raise UserError(f"not enough free space in {dest}: unpacking needs {unpacked / 2**20:.0f} MiB plus "
                        f"{FREE_SPACE_MARGIN >> 20} MiB, {free / 2**20:.0f} MiB are free; "
                        "free some space or choose another --dest")


def _check_clashes(entries: list[zipfile.ZipInfo]) -> None:
    """A name that is both a file and a folder (or a file twice) would overwrite or fail half-way."""
    files: set[str] = set()
    folders: set[str] = set()
    for info in entries:
        name = info.filename.replace("\\", "/").rstrip("/")
        parts = PurePosixPath(name).parts
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if info.is_dir():
            folders.add(name)
        elif name in files:
            raise UserError(f"archive entry {name!r} appears twice; refusing to extract an ambiguous archive "
                            "(use the data set's original archive)")
        else:
            files.add(name)
    clash = sorted(files & folders)
    if clash:
        raise UserError(f"archive entry {clash[0]!r} is both a file and a folder; refusing to extract it "
                        "(use the data set's original archive)")


def _extract(archive: Path, dest: Path, max_bytes: int = MAX_UNPACKED_BYTES, max_ratio: float = MAX_RATIO) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = zf.infolist()
            for info in entries:
                _check_entry(info, dest)
            _check_clashes(entries)
            dest.mkdir(parents=True, exist_ok=True)
            _check_sizes(archive, entries, dest, max_bytes, max_ratio)
            for info in tqdm(entries, desc="extract", unit="file", leave=False):
                zf.extract(info, dest)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise UserError(f"{archive} is truncated or not a valid zip ({err}); download it again") from err


def _find_data_root(tree: Path) -> Path:
    for candidate in sorted(tree.rglob("Training"), key=lambda p: len(p.parts)):
        if candidate.is_dir() and (candidate.parent / "Testing").is_dir():
            return candidate.parent
    raise UserError("the archive has no folder holding Training/ and Testing/; "
                    "pass the brain tumour data set's zip")


def _verify(root: Path, expected: dict) -> None:
    fix = "the archive is not the expected data set; download it again or check --archive/--url"
    counts = count_images(root)
    for split, per_class in expected["counts"].items():
        for label in sorted(set(per_class) | set(counts.get(split, {}))):
            found, wanted = counts.get(split, {}).get(label, 0), per_class.get(label, 0)
            if found != wanted:
                raise UserError(f"verification failed: {split}/{label} has {found} images, expected {wanted}; {fix}")
    if manifest_hash(root) != expected["manifest"]:
        raise UserError(f"verification failed: the content manifest hash differs (same counts, other bytes); {fix}")


def download(dest: Path, archive: Path | None = None, url: str | None = None, *,
             expected: dict | None = None, max_bytes: int = MAX_UNPACKED_BYTES, max_ratio: float = MAX_RATIO) -> Path:
    """Put a verified copy of the data set at DEST (Training/ and Testing/) and return DEST.

    ``archive`` is a local zip used instead of downloading ``url`` (default: DATASET_URL).
    ``expected`` ({"counts": ..., "manifest": ...}) replaces DATASET_EXPECTED, e.g. for a
    synthetic archive in tests; ``max_bytes`` and ``max_ratio`` bound what the zip may unpack to.
    """
    dest, expected = Path(dest), expected or DATASET_EXPECTED
    if _is_verified(dest, expected):
        log.info(f"{dest} is already there and verified; nothing to do")
        return dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} exists but is not a verified copy of the data set; remove it or choose another --dest")
    if archive is not None and not Path(archive).is_file():
        raise UserError(f"archive {archive} not found; pass the path of a downloaded zip")
    with atomic_output(dest, folder=True) as tmp:  # a sibling of dest, so the final rename is atomic
        work = tmp / ".work"
        work.mkdir()
        source = Path(archive) if archive is not None else _fetch(url or DATASET_URL, work / "archive.zip")
        _extract(source, work / "extracted", max_bytes, max_ratio)
        data_root = _find_data_root(work / "extracted")
        _verify(data_root, expected)
        for split in SPLITS:
            (data_root / split).rename(tmp / split)
        write_text(tmp / MARKER, expected["manifest"] + "\n")
        shutil.rmtree(work)
    log.info(f"data set verified and written to {dest}")
    return dest
