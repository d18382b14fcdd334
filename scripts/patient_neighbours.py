"""How far twin groups are from patient groups: the README's table "Twin groups are not patients".

    python scripts/patient_neighbours.py ROOT [--folds 5] [--seed 0]

Adjacent slices of one scan are not twins (the near-twin rule wants pHash distance <= 12 and thumbnail correlation
>= 0.92), yet they come from one patient. Grouping by the audit's own brain thumbnails (data/twins.py) at looser
correlations, this counts the groups, the Testing images that would join a Training group, and, for the grouped
k-fold split that `braintumor data split` writes, the test images with a neighbour in their fold's training part
and how often that neighbour has the same class. Nothing here is used by training; it measures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from braintumor.data.files import scan_tree
from braintumor.data.groups import find_groups, union_find
from braintumor.data.splits import EXCLUDED, kfold_split
from braintumor.data.twins import compute_signatures

THRESHOLDS = (0.85, 0.80, 0.75, 0.70)
CACHE = Path("~/.cache/braintumor").expanduser()  # the signature cache a config's data.cache_dir uses by default


def thumbnail_correlation(files: list[Path]) -> np.ndarray:
    """Pearson correlation of every pair of brain thumbnails (the diagonal set to -1)."""
    vectors = compute_signatures(files, CACHE).thumb.reshape(len(files), -1).astype(np.float32)
    vectors -= vectors.mean(1, keepdims=True)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-6)
    correlation = vectors @ vectors.T
    np.fill_diagonal(correlation, -1)
    return correlation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the data set root (Training/ and Testing/ with class folders)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, _ = scan_tree(args.root)
    groups = find_groups(images, args.root, CACHE)  # in relative-path order, as the files below
    files = [args.root / name for name in groups.files]
    correlation = thumbnail_correlation(files)
    labels, testing = np.array(groups.labels), np.array([origin == "Testing" for origin in groups.origins])
    fold = np.array(kfold_split(groups, args.folds, args.seed).split)

    def testing_with_training(group: np.ndarray) -> int:
        return int(np.isin(group[testing], group[~testing]).sum())

    print(f"{len(files)} images, {groups.group.max() + 1} twin groups; {testing_with_training(groups.group)} Testing "
          f"images share one with Training\n")
    print(f"| thumbnail correlation >= | groups | Testing images grouped with Training | {args.folds}-fold (seed "
          f"{args.seed}) test images with a neighbour in their training part | that neighbour's class is the "
          "test image's |\n|---|---|---|---|---|")
    for threshold in THRESHOLDS:
        i, j = np.nonzero(np.triu(correlation >= threshold, 1))
        looser = union_find(len(files), zip(groups.group[i].tolist(), groups.group[j].tolist(), strict=True))
        merged = looser[groups.group]
        counts, same = [], []
        for k in map(str, range(args.folds)):
            tested, training = np.flatnonzero(fold == k), np.flatnonzero((fold != k) & (fold != EXCLUDED))
            block = correlation[np.ix_(tested, training)]
            near = block.max(1) >= threshold
            counts.append(int(near.sum()))
            same += (labels[tested[near]] == labels[training[block.argmax(1)[near]]]).tolist()
        print(f"| {threshold:.2f} | {merged.max() + 1} | {testing_with_training(merged)} | {min(counts)}–{max(counts)} "
              f"per fold ({np.mean(counts) / np.mean([np.sum(fold == str(k)) for k in range(args.folds)]):.1%}) | "
              f"{np.mean(same):.2f} |")
    share = np.mean(correlation[np.triu_indices(len(files), 1)] >= THRESHOLDS[-1])
    chance = np.sum(np.unique(labels, return_counts=True)[1] ** 2) / len(labels) ** 2
    print(f"\nShare of all image pairs at correlation >= {THRESHOLDS[-1]}: {share:.3%}; "
          f"chance that two images share a class: {chance:.2f}")


if __name__ == "__main__":
    main()
