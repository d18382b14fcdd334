"""Finding image files: the one folder walker shared by the loader, the audit, download and predict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})  # photographs, read by Pillow
SCAN_EXTENSIONS = (".dcm", ".nii", ".nii.gz")  # DICOM and NIfTI, read with the extra braintumor[medical]
READABLE = " ".join([*sorted(IMAGE_EXTENSIONS), *SCAN_EXTENSIONS])  # for messages: the files an image folder holds
SPLITS = ("Training", "Testing")  # the published layout: ROOT/<split>/<class>/<image>


def _hidden(path: Path, top: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(top).parts)


def subfolders(folder: Path) -> list[str]:
    """Names of the visible subfolders of `folder` (class folders), sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_scan(path: Path) -> bool:
    """A DICOM or NIfTI file by its name (the decoder also recognises a DICOM file by its content)."""
    return path.name.lower().endswith(SCAN_EXTENSIONS)


def walk(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image and scan files (by extension) and other files below `folder`, recursively and sorted; hidden
    files and folders (`.DS_Store`, `.ipynb_checkpoints`) are skipped."""
    images, others = [], []
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not _hidden(path, folder):
            (images if path.suffix.lower() in IMAGE_EXTENSIONS or is_scan(path) else others).append(path)
    return images, others


@dataclass(frozen=True)
class ImageFile:
    split: str
    label: str
    path: Path


def scan_tree(root: Path, splits: tuple[str, ...] = SPLITS) -> tuple[list[ImageFile], list[Path]]:
    """Image files under ROOT/<split>/<class>/, and every other file there."""
    images, others = [], []
    for split in splits:
        if not (root / split).is_dir():
            continue
        for label in subfolders(root / split):
            found, rest = walk(root / split / label)
            images += [ImageFile(split, label, path) for path in found]
            others += rest
    return images, others
