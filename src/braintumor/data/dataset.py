"""The data set: class folders, decoded splits, the stratified validation split, Testing twins dropped.

Images are kept as uint8 RGB arrays in [0, 255] at `image_size`; each model applies its own
backbone preprocessing, so one cache serves every backbone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from braintumor.core.config import SYNTHETIC_ROOT, Config, DataConfig
from braintumor.core.errors import UserError
from braintumor.core.logs import get_logger
from braintumor.data.decode import decode_files
from braintumor.data.files import READABLE, subfolders, walk
from braintumor.data.synth import make_dataset
from braintumor.data.twins import find_test_twins

log = get_logger(__name__)


@dataclass
class Split:
    files: list[str]  # relative to the data root, e.g. "Testing/glioma_tumor/image(1).jpg"
    labels: np.ndarray  # int class indices
    images: np.ndarray  # (N, size, size, 3) uint8

    def subset(self, index: np.ndarray) -> Split:
        return Split([self.files[i] for i in index], self.labels[index], self.images[index])

    def counts(self, classes: list[str]) -> dict[str, int]:
        tally = Counter(self.labels.tolist())
        return {name: tally.get(i, 0) for i, name in enumerate(classes)}


@dataclass
class Dataset:
    root: Path
    classes: list[str]
    train: Split
    val: Split
    test: Split
    on_disk: dict[str, dict[str, int]] = field(default_factory=dict)  # image files per split and class
    skipped: list[dict] = field(default_factory=list)  # unreadable images: file, reason
    ignored: list[str] = field(default_factory=list)  # files that are not images
    dropped_twins: list[str] = field(default_factory=list)  # Training files with a twin in Testing

    def summary(self) -> dict:
        """The content of data.json."""
        splits = {"train": self.train, "validation": self.val, "test": self.test}
        return {
            "root": str(self.root),
            "classes": self.classes,
            "on_disk": {split: {**counts, "total": sum(counts.values())} for split, counts in self.on_disk.items()},
            "counts": {name: {**split.counts(self.classes), "total": len(split.files)}
                       for name, split in splits.items()},
            "skipped": self.skipped,
            "ignored_non_image_files": self.ignored,
            "dropped_test_twins": {"count": len(self.dropped_twins), "files": self.dropped_twins},
            "validation_files": self.val.files,
        }


# ---------------------------------------------------------------- finding files

def discover_classes(cfg: DataConfig) -> list[str]:
    train_root = _split_root(cfg, cfg.train_dir)
    found = subfolders(train_root)
    if cfg.classes is None:
        if len(found) < 2:
            raise UserError(f"{train_root} has {len(found)} class folder(s); it needs one subfolder per class")
        return found
    missing = [c for c in cfg.classes if c not in found]
    if missing:
        raise UserError(f"class folder {train_root / missing[0]} not found; "
                        f"fix data.classes (found: {', '.join(found)})")
    return list(cfg.classes)


def _split_root(cfg: DataConfig, split_dir: str) -> Path:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data root {root} not found; set data.root (e.g. --set data.root=PATH) "
                        "or fetch the data set with `braintumor data download`")
    path = root / split_dir
    if not path.is_dir():
        raise UserError(f"split folder {path} not found; data.root must hold {cfg.train_dir}/ and "
                        f"{cfg.test_dir}/ with one subfolder per class")
    return path


def list_split(cfg: DataConfig, split_dir: str, classes: list[str]) -> tuple[list[str], list[int], list[str]]:
    """Image files (relative to root) and labels of one split, plus the ignored non-image files."""
    split_root = _split_root(cfg, split_dir)
    present = subfolders(split_root)
    extra, missing = set(present) - set(classes), set(classes) - set(present)
    if missing or (extra and cfg.classes is None):
        problem = (f"lacks class folder {sorted(missing)[0]}" if missing
                   else f"has class folder {sorted(extra)[0]}, which {cfg.train_dir} lacks")
        raise UserError(f"{split_root} {problem}; every split needs the same class folders "
                        f"({', '.join(classes)})")
    root = Path(cfg.root).expanduser()
    files, labels, ignored = [], [], []
    for index, name in enumerate(classes):
        found, others = walk(split_root / name)
        class_files = [path.relative_to(root).as_posix() for path in found]
        ignored += [path.relative_to(root).as_posix() for path in others]
        if not class_files:
            raise UserError(f"{split_root / name} has no images ({READABLE}); "
                            "add images or leave the class out with data.classes")
        files += class_files
        labels += [index] * len(class_files)
    return files, labels, ignored


def load_split(cfg: DataConfig, split_dir: str, classes: list[str]) -> tuple[Split, dict, list[dict], list[str]]:
    """The decoded split, its image-file count per class on disk, and the skipped and ignored files."""
    root = Path(cfg.root).expanduser()
    files, labels, ignored = list_split(cfg, split_dir, classes)
    on_disk = {name: labels.count(i) for i, name in enumerate(classes)}
    images, skipped = decode_files(root, files, cfg, split_dir)
    bad = {s["file"] for s in skipped}
    keep = np.array([i for i, f in enumerate(files) if f not in bad], dtype=int)
    if skipped:
        log.warning(f"skipped {len(skipped)} unreadable image(s) in {split_dir}, e.g. {skipped[0]['file']} "
                    f"({skipped[0]['reason']}); all are listed in data.json")
    split = Split([files[i] for i in keep], np.asarray(labels, np.int32)[keep], images)
    return split, on_disk, skipped, ignored


# ---------------------------------------------------------------- the whole data set

def find_classes(cfg: DataConfig) -> list[str]:
    """The class names (writing the synthetic data set first where the config asks for it).

    Data is never invented at a path the user typed: make_synthetic_if_missing acts only at the
    quickstart's own folder SYNTHETIC_ROOT, so a mistyped data.root stays an error.
    """
    root = Path(cfg.root).expanduser()
    if cfg.make_synthetic_if_missing and not root.exists():
        if Path(cfg.root) != Path(SYNTHETIC_ROOT):
            raise UserError(f"data root {root} not found (data.make_synthetic_if_missing writes synthetic data only "
                            f"at {SYNTHETIC_ROOT}, never elsewhere); fix data.root, or create a synthetic set there "
                            f"with `braintumor data synth {root}`")
        log.info(f"data root {cfg.root} is absent: writing the synthetic quickstart data set there")
        make_dataset(root)
    return discover_classes(cfg)


def load_dataset(cfg: Config, classes: list[str] | None = None) -> Dataset:
    """Training (minus a stratified validation split) and Testing, as the config says."""
    data = cfg.data
    classes = classes or find_classes(data)
    train, train_on_disk, skipped_train, ignored_train = load_split(data, data.train_dir, classes)
    test, test_on_disk, skipped_test, ignored_test = load_split(data, data.test_dir, classes)
    dropped: list[str] = []
    if data.exclude_test_twins:
        train, dropped = _drop_test_twins(Path(data.root).expanduser(), train, test, data)
    try:
        train_index, val_index = train_test_split(
            np.arange(len(train.files)), test_size=data.val_fraction, random_state=cfg.seed,
            stratify=train.labels)
    except ValueError as err:
        raise UserError(f"cannot carve a stratified validation split of {data.val_fraction:g} from "
                        f"{len(train.files)} Training images ({err}); add images or raise data.val_fraction") from err
    on_disk = {data.train_dir: train_on_disk, data.test_dir: test_on_disk}
    return Dataset(Path(data.root).expanduser(), classes, train.subset(np.sort(train_index)),
                   train.subset(np.sort(val_index)), test, on_disk, skipped_train + skipped_test,
                   ignored_train + ignored_test, dropped)


def _drop_test_twins(root: Path, train: Split, test: Split, cfg: DataConfig) -> tuple[Split, list[str]]:
    twins = find_test_twins([root / f for f in train.files], [root / f for f in test.files],
                            cache_dir=Path(cfg.cache_dir).expanduser())
    twin_files = {p.relative_to(root).as_posix() for paths in twins.values() for p in paths}
    keep = np.array([i for i, f in enumerate(train.files) if f not in twin_files], dtype=int)
    log.info(f"exclude_test_twins: dropped {len(train.files) - len(keep)} Training image(s) with a twin in Testing")
    return train.subset(keep), sorted(twin_files)
