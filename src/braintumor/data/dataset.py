"""The data set: class folders, decoded splits, the protocol's train / validation / test parts (data/splits.py),
Testing twins dropped.

Images are kept as uint8 RGB arrays in [0, 255] at `image_size`; each model applies its own
backbone preprocessing, so one cache serves every backbone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from braintumor.core.cache import file_sha256
from braintumor.core.config import SYNTHETIC_ROOT, Config, DataConfig
from braintumor.core.errors import UserError
from braintumor.core.logs import get_logger
from braintumor.data import splits
from braintumor.data.decode import decode_files
from braintumor.data.files import READABLE, ImageFile, subfolders, walk
from braintumor.data.groups import Groups, find_groups
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

    def __add__(self, other: Split) -> Split:
        return Split(self.files + other.files, np.concatenate([self.labels, other.labels]),
                     np.concatenate([self.images, other.images]))

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
    protocol: dict = field(default_factory=dict)  # name (official, clean, kfold, split_file) and its settings
    split_csv: str = ""  # the split file of this data set: every image's side (train, validation, test, excluded)

    def summary(self) -> dict:
        """The content of data.json."""
        splits = {"train": self.train, "validation": self.val, "test": self.test}
        return {
            "root": str(self.root),
            "classes": self.classes,
            "protocol": self.protocol,
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
    """The train, validation and test parts the config's protocol makes of the images under data.root."""
    data = cfg.data
    root = Path(data.root).expanduser()
    classes = classes or find_classes(data)
    # a stale split file fails before any image is decoded
    listed = splits.read_split_file(Path(data.split_file).expanduser(), root) if data.split_file else None
    train, train_on_disk, skipped_train, ignored_train = load_split(data, data.train_dir, classes)
    test, test_on_disk, skipped_test, ignored_test = load_split(data, data.test_dir, classes)
    everything = train + test
    groups = find_groups([ImageFile(origin, classes[label], root / file)
                          for files, labels, origin in ((train.files, train.labels, data.train_dir),
                                                        (test.files, test.labels, data.test_dir))
                          for file, label in zip(files, labels.tolist(), strict=True)],
                         root, Path(data.cache_dir).expanduser())
    assignment, protocol = _assign(cfg, groups, listed)
    dropped: list[str] = []
    if data.exclude_test_twins:
        dropped = _drop_test_twins(root, train, test, data)
        twins = set(dropped)
        for i, file in enumerate(groups.files):
            if file in twins:
                assignment.split[i] = splits.EXCLUDED
                assignment.reason[i] = "twin of a Testing image (exclude_test_twins)"
    splits.carve_validation(assignment, data.val_fraction, cfg.seed)
    side = dict(zip(groups.files, assignment.split, strict=True))
    parts = {name: everything.subset(np.array([i for i, f in enumerate(everything.files) if side[f] == name], int))
             for name in (splits.TRAIN, splits.VALIDATION, splits.TEST)}
    on_disk = {data.train_dir: train_on_disk, data.test_dir: test_on_disk}
    counts = ", ".join(f"{name} {len(part.files)}" for name, part in parts.items())
    log.info(f"protocol {protocol['name']}: {counts} images, {assignment.split.count(splits.EXCLUDED)} excluded")
    return Dataset(root, classes, parts[splits.TRAIN], parts[splits.VALIDATION], parts[splits.TEST], on_disk,
                   skipped_train + skipped_test, ignored_train + ignored_test, dropped, protocol,
                   assignment.to_csv())


def _assign(cfg: Config, groups: Groups, listed: dict[str, tuple[str, str]] | None) -> tuple[splits.Assignment, dict]:
    """Each image's side, train or test (or excluded), as data.split_file (`listed`) or data.protocol says; and the
    protocol."""
    data = cfg.data
    if listed is not None:
        path = Path(str(data.split_file)).expanduser()
        sides = [listed.get(file, (splits.EXCLUDED, ""))[0] for file in groups.files]
        reasons = [listed[file][1] if file in listed else "not in data.split_file" for file in groups.files]
        folds = sorted({int(side) for side in sides if side.isdigit()})
        if folds and data.fold not in folds:
            raise UserError(f"data.split_file {path} has folds {folds[0]} to {folds[-1]}; set data.fold to one of them")
        assignment = splits.Assignment(groups, sides, reasons)
        protocol = {"name": "split_file", "split_file": str(path), "sha256": file_sha256(path),
                    **({"fold": data.fold, "folds": len(folds)} if folds else {})}
    elif data.protocol == "official":
        assignment = splits.official_split(groups, data.train_dir)
        protocol = {"name": "official"}
    elif data.protocol == "clean":
        assignment = splits.clean_split(groups, data.test_fraction, cfg.seed)
        protocol = {"name": "clean", "test_fraction": data.test_fraction, "seed": cfg.seed}
    else:
        assignment = splits.kfold_split(groups, data.folds, cfg.seed)
        protocol = {"name": "kfold", "folds": data.folds, "fold": data.fold, "seed": cfg.seed}
    # a fold number becomes a side: the chosen fold tests, the others train
    assignment.split = [(splits.TEST if int(side) == data.fold else splits.TRAIN) if side.isdigit() else side
                        for side in assignment.split]
    protocol["groups"] = int(groups.group.max()) + 1 if len(groups.files) else 0
    return assignment, protocol


def _drop_test_twins(root: Path, train: Split, test: Split, cfg: DataConfig) -> list[str]:
    twins = find_test_twins([root / f for f in train.files], [root / f for f in test.files],
                            cache_dir=Path(cfg.cache_dir).expanduser())
    twin_files = sorted({p.relative_to(root).as_posix() for paths in twins.values() for p in paths})
    log.info(f"exclude_test_twins: dropped {len(twin_files)} Training image(s) with a twin in Testing")
    return twin_files
