"""Folds that hold out whole sources: a yardstick for new scans that grouped k-fold is not.

    python scripts/source_folds.py DATA_ROOT OUT.csv [--folds 3] [--seed 0]
    braintumor train configs/scratch.yaml --set data.split_file=OUT.csv --set data.fold=0

Grouped k-fold (`data.protocol: kfold`) keeps twins together, but a fold's training part still holds other slices
of the sources its test part comes from, so new scanners and sites are never tested. This data set was put together
from several published and scraped collections, and an image's pixel size is the best trace of its collection that
it carries (all 826 Training gliomas and most tumour images are 512 × 512; the rest come in some 440 sizes). Here an
image's source group joins its twin group and every image of its pixel size, and folds are made of whole source
groups (stratified, as grouped k-fold). A source group too large for one fold (over 1 / folds of the images: the
512 × 512 collection) trains in every fold, so the test parts hold only the other collections. Label conflicts (twin
groups with two labels) are excluded, as in grouped k-fold. The output is a split file in the format of
`braintumor data split`: its `group` column is the source group.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold

from braintumor.core.atomic import write_text
from braintumor.data.files import scan_tree
from braintumor.data.groups import Groups, find_groups, union_find
from braintumor.data.splits import EXCLUDED, TRAIN, Assignment, excluding_conflicts


def source_groups(twins: Groups, sizes: list[tuple[int, int]]) -> np.ndarray:
    """Per image, the group joining its twin group and every image of its pixel size."""
    first: dict[object, int] = {}
    pairs = []
    for i, key in enumerate(zip(twins.group.tolist(), sizes, strict=True)):
        for part in key:
            pairs.append((first.setdefault(part, i), i))
    return union_find(len(sizes), pairs)


def source_folds(twins: Groups, sizes: list[tuple[int, int]], folds: int, seed: int) -> Assignment:
    """Each image's fold (its split, as a number), `train` for a source too large for a fold, or excluded."""
    source = source_groups(twins, sizes)
    split, reason = excluding_conflicts(twins)
    too_large = np.flatnonzero(np.bincount(source) > len(source) / folds)
    for i in np.flatnonzero(np.isin(source, too_large)).tolist():
        if split[i] != EXCLUDED:
            split[i], reason[i] = TRAIN, f"source group {source[i]} is too large for a fold: trains in every fold"
    index = np.array([i for i, side in enumerate(split) if side == ""], int)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    labels = [twins.labels[i] for i in index]
    for fold, (_, tested) in enumerate(splitter.split(np.zeros(len(index)), labels, source[index])):
        for i in index[tested].tolist():
            split[i] = str(fold)
    return Assignment(Groups(twins.files, twins.labels, twins.origins, twins.sha256, source), split, reason)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the data set root (Training/ and Testing/ class folders)")
    parser.add_argument("out", type=Path, help="the split file to write (must not exist)")
    parser.add_argument("--folds", type=int, default=3, choices=range(2, 11), metavar="2..10")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "braintumor")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists; name a new file")
    images, _ = scan_tree(args.root)
    if not images:
        parser.error(f"no images under {args.root}/Training or {args.root}/Testing; pass the data set root")
    twins = find_groups(images, args.root, args.cache_dir)
    sizes = []
    for file in twins.files:
        with Image.open(args.root / file) as image:
            sizes.append(image.size)
    assignment = source_folds(twins, sizes, args.folds, args.seed)
    write_text(args.out, assignment.to_csv())
    for side, counts in assignment.counts().items():
        print(f"{side or '?'}: {sum(counts.values())} images ({', '.join(f'{k} {v}' for k, v in counts.items())})")


if __name__ == "__main__":
    main()
