"""Split protocols over twin groups (data/groups.py): the grouped re-splits `clean` and `kfold`, the group-aware
validation carve every protocol uses, and the split file (`braintumor data split`, a run's split.csv,
`data.split_file`).

Whole groups stay on one side of every cut, so no image has an exact or near twin on the other side. Label
conflicts (groups with two labels) are excluded from the grouped protocols and listed with the reason. Everything
random here draws from the seed after the files are sorted by relative path, so the same seed gives the same split
whatever order the file system lists images in.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from braintumor.core.cache import file_sha256
from braintumor.core.errors import UserError, describe
from braintumor.data.files import scan_tree
from braintumor.data.groups import Groups, find_groups

TRAIN, VALIDATION, TEST, EXCLUDED = "train", "validation", "test", "excluded"
COLUMNS = ("file", "sha256", "class", "group", "split", "reason")
MAX_SPLIT_FILE_ROWS = 1_000_000  # bounded before work: the published data set has 3264


@dataclass
class Assignment:
    """A side per image of `groups`: train, validation, test, a fold number, or excluded (with the reason)."""

    groups: Groups
    split: list[str]
    reason: list[str]

    def to_csv(self) -> str:
        """The split file: one row per image in relative-path order, `\\n` line ends, the same bytes for one split."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        g = self.groups
        for row in zip(g.files, g.sha256, g.labels, g.group.tolist(), self.split, self.reason, strict=True):
            writer.writerow(row)
        return out.getvalue()

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per side and class."""
        found: dict[str, dict[str, int]] = {}
        for side, label in zip(self.split, self.groups.labels, strict=True):
            found.setdefault(side, {}).setdefault(label, 0)
            found[side][label] += 1
        return {side: dict(sorted(labels.items())) for side, labels in sorted(found.items())}


def excluding_conflicts(groups: Groups) -> tuple[list[str], list[str]]:
    conflicts = groups.conflicts()
    split, reason = [], []
    for number in groups.group.tolist():
        labels = conflicts.get(number)
        split.append(EXCLUDED if labels else "")
        reason.append(f"label conflict: twin group {number} holds {' and '.join(labels)}" if labels else "")
    return split, reason


def take_groups(group: np.ndarray, labels: list[str], fraction: float, seed: int, what: str) -> np.ndarray:
    """A mask of items that holds about `fraction` of each class, made of whole groups: per class (in sorted order)
    its groups in a seeded random order, each taken while it fits the class's share; at least one group per class,
    and never every group of a class. A group's class is its most common label (a conflict group in `official`).
    `what` names the cut in the error when a class has too few groups to be cut at all."""
    rng = np.random.default_rng(seed)
    numbers, inverse = np.unique(group, return_inverse=True)
    size = dict(zip(numbers.tolist(), np.bincount(inverse).tolist(), strict=True))
    of_group: dict[int, list[str]] = {}
    for number, label in zip(group.tolist(), labels, strict=True):
        of_group.setdefault(number, []).append(label)
    group_class = {number: max(sorted(set(found)), key=found.count) for number, found in of_group.items()}
    chosen: list[int] = []
    for name in sorted(set(labels)):
        members = [number for number in numbers.tolist() if group_class[number] == name]
        if len(members) < 2:
            raise UserError(f"cannot carve {what}: class {name} has {len(members)} twin group(s) and needs two, one "
                            "on each side; add images of that class or leave it out with data.classes")
        target = max(1, round(fraction * sum(size[number] for number in members)))
        taken, picked = 0, []
        for number in rng.permutation(members).tolist():
            if taken + size[number] <= target and len(picked) < len(members) - 1:
                picked.append(number)
                taken += size[number]
        # every group was larger than the share: the smallest one
        chosen += picked or [min(members, key=lambda number: (size[number], number))]
    return np.isin(group, sorted(chosen))


def carve_validation(assignment: Assignment, fraction: float, seed: int) -> None:
    """Move about `fraction` of the training part, whole twin groups stratified by class, to validation; a split file
    that names its validation part keeps it."""
    if VALIDATION in assignment.split:
        return
    train = np.array([i for i, side in enumerate(assignment.split) if side == TRAIN], int)
    labels = [assignment.groups.labels[i] for i in train]
    chosen = take_groups(assignment.groups.group[train], labels, fraction, seed,
                         f"a stratified validation part of {fraction:g} from {len(train)} training images")
    for i in train[chosen].tolist():
        assignment.split[i] = VALIDATION


def clean_split(groups: Groups, test_fraction: float, seed: int) -> Assignment:
    """The de-duplicated benchmark: a seeded, stratified re-split of all images into train and test, whole groups on
    one side, every class in test in proportion."""
    split, reason = excluding_conflicts(groups)
    kept = np.array([side != EXCLUDED for side in split])
    index = np.flatnonzero(kept)
    test = take_groups(groups.group[index], [groups.labels[i] for i in index], test_fraction, seed,
                       f"a test part of {test_fraction:g}")
    for i, is_test in zip(index.tolist(), test.tolist(), strict=True):
        split[i] = TEST if is_test else TRAIN
    return Assignment(groups, split, reason)


def kfold_split(groups: Groups, folds: int, seed: int) -> Assignment:
    """Stratified group k-fold (scikit-learn's StratifiedGroupKFold, shuffled with `seed`): each image's split is
    the number of the fold it is tested in."""
    split, reason = excluding_conflicts(groups)
    index = np.array([i for i, side in enumerate(split) if side != EXCLUDED], int)
    labels = [groups.labels[i] for i in index]
    if len(np.unique(groups.group[index])) < folds:
        raise UserError(f"cannot make {folds} folds of {len(np.unique(groups.group[index]))} twin groups; "
                        "lower data.folds (or --folds)")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fold, (_, tested) in enumerate(splitter.split(np.zeros(len(index)), labels, groups.group[index])):
        for i in index[tested].tolist():
            split[i] = str(fold)
    return Assignment(groups, split, reason)


def official_split(groups: Groups, train_dir: str) -> Assignment:
    """The published folders: Training trains, Testing tests; label conflicts stay, as published."""
    split = [TRAIN if origin == train_dir else TEST for origin in groups.origins]
    return Assignment(groups, split, [""] * len(split))


def read_split_file(path: Path, root: Path) -> dict[str, tuple[str, str]]:
    """`data.split_file`: (split, reason) by relative file, after checking each listed image still has its sha256."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read split file {path} ({describe(err)}); pass a CSV written by "
                        "braintumor data split") from err
    if not rows or not set(COLUMNS[:5]) <= set(rows[0]):
        raise UserError(f"split file {path} lacks the columns {', '.join(COLUMNS[:5])}; pass a CSV written by "
                        "braintumor data split")
    if len(rows) > MAX_SPLIT_FILE_ROWS:
        raise UserError(f"split file {path} has {len(rows)} rows, over {MAX_SPLIT_FILE_ROWS}; pass a split of "
                        "this data set")
    found = {}
    for number, row in enumerate(rows, start=2):
        file, side = row["file"], row["split"]
        if not (side in (TRAIN, VALIDATION, TEST, EXCLUDED) or side.isdigit()):
            raise UserError(f"split file {path} line {number}: split {side!r} is not train, validation, test, "
                            "excluded or a fold number; write the file with braintumor data split")
        image = root / file
        if Path(file).is_absolute() or ".." in Path(file).parts or not image.is_file():
            raise UserError(f"split file {path} line {number}: {file} is not an image under {root}; "
                            "use the data root the split was written for (data.root)")
        if file_sha256(image) != row["sha256"]:
            raise UserError(f"split file {path} line {number}: {image} no longer matches its sha256 in the "
                            "file; restore the image or write the split again with braintumor data split")
        found[file] = (side, row.get("reason") or "")
    return found


def split_root(root: Path, protocol: str, seed: int, folds: int, test_fraction: float,
               cache_dir: Path | None) -> Assignment:
    """`braintumor data split`: the grouped split of every image under ROOT/{Training,Testing}/<class>/."""
    images, _ = scan_tree(root)
    if not images:
        raise UserError(f"no images under {root}/Training or {root}/Testing; pass the data set root")
    groups = find_groups(images, root, cache_dir)
    return clean_split(groups, test_fraction, seed) if protocol == "clean" else kfold_split(groups, folds, seed)
