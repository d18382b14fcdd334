"""Twin groups: the connected sets of images joined by exact or near twins (the matcher of data/twins.py),
found by union-find over every image of a data root, Training and Testing together.

A group whose images carry two labels is a label conflict: the grouped protocols (data/splits.py) exclude it and
list it. Files are sorted by their path relative to the root before anything else, and groups are numbered by
their first file in that order, so the groups do not depend on the order the file system lists images in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from braintumor.data.files import ImageFile
from braintumor.data.twins import compute_signatures, match_pairs


def union_find(n: int, pairs: Iterable[tuple[int, int]]) -> np.ndarray:
    """Group number per item 0..n-1: items joined by a pair share one; groups are numbered by their smallest item."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = root(i), root(j)
        if a != b:
            parent[max(a, b)] = min(a, b)  # the smaller index stays the root: numbering independent of pair order
    roots = np.array([root(i) for i in range(n)], int)
    return np.unique(roots, return_inverse=True)[1]  # roots are smallest members, so this keeps their order


@dataclass
class Groups:
    """Every image of a data root with its twin group, in the order of the relative paths."""

    files: list[str]  # relative to the root, posix
    labels: list[str]  # class folder per file
    origins: list[str]  # official split folder per file (Training, Testing)
    sha256: list[str]
    group: np.ndarray  # (N,) group number per file

    def labels_of(self) -> dict[int, list[str]]:
        """The sorted classes of each group."""
        found: dict[int, set[str]] = {}
        for number, label in zip(self.group.tolist(), self.labels, strict=True):
            found.setdefault(number, set()).add(label)
        return {number: sorted(labels) for number, labels in found.items()}

    def conflicts(self) -> dict[int, list[str]]:
        """Groups whose images carry two or more labels, with those labels."""
        return {number: labels for number, labels in self.labels_of().items() if len(labels) > 1}

    def summary(self) -> dict:
        """What `data audit` reports: group counts, sizes, groups spanning both official splits, conflicts."""
        sizes = np.bincount(self.group)
        origins: dict[int, set[str]] = {}
        for number, origin in zip(self.group.tolist(), self.origins, strict=True):
            origins.setdefault(number, set()).add(origin)
        conflicts = self.conflicts()
        return {
            "images": len(self.files),
            "groups": len(sizes),
            "multi_image_groups": int((sizes > 1).sum()),
            "images_in_multi_image_groups": int(sizes[sizes > 1].sum()),
            "size_distribution": {str(size): count for size, count in sorted(Counter(sizes.tolist()).items())},
            "largest": int(sizes.max()) if len(sizes) else 0,
            "spanning_splits": sum(len(found) > 1 for found in origins.values()),
            "label_conflicts": [{"group": number, "classes": labels,
                                 "files": [f for f, g in zip(self.files, self.group, strict=True) if g == number]}
                                for number, labels in sorted(conflicts.items())],
        }


def groups_from_pairs(images: Sequence[ImageFile], root: Path, sha256: Sequence[str],
                      pairs: Iterable[tuple]) -> Groups:
    """Groups of `images` joined by the matcher's `pairs` (i, j, ...: indices into `images`), in relative-path order."""
    relative = [image.path.relative_to(root).as_posix() for image in images]
    order = sorted(range(len(images)), key=relative.__getitem__)
    position = np.empty(len(images), int)
    position[order] = np.arange(len(images))
    group = union_find(len(images), ((position[pair[0]], position[pair[1]]) for pair in pairs))
    return Groups([relative[i] for i in order], [images[i].label for i in order], [images[i].split for i in order],
                  [str(sha256[i]) for i in order], group)


def find_groups(images: Sequence[ImageFile], root: Path, cache_dir: Path | None = None) -> Groups:
    """The twin groups of `images` under `root` (signatures read once, cached in `cache_dir` as data/twins.py does)."""
    images = sorted(images, key=lambda image: image.path.relative_to(root).as_posix())
    sigs = compute_signatures([image.path for image in images], cache_dir)
    every = np.arange(len(images))
    return groups_from_pairs(images, root, sigs.sha256, match_pairs(sigs, every, every, within=True))
