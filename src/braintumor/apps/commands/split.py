"""`braintumor data split`: write a twin-group-aware split of a data set (clean or k-fold) as a CSV file."""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.apps.commands.shared import positive
from braintumor.core.config import DataConfig
from braintumor.core.errors import UserError

HELP = "write a twin-group-aware split (clean or k-fold) of a data set as CSV"
DESCRIPTION = ("Group the images of ROOT/{Training,Testing}/<class>/ by exact and near twins and split whole groups: "
               "clean (train / test) or kfold (a fold number per image). Label-conflict groups are excluded, with "
               "the reason. Columns: file, sha256, class, group, split, reason. The same arguments give the same "
               "bytes. Train on it with --set data.split_file=FILE.csv.")
EPILOG = "The defaults match a config's: --seed 42, --test-fraction 0.2, --folds 5."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="ROOT", help="folder holding Training/ and Testing/, e.g. data/brain-tumor-mri")
    parser.add_argument("--protocol", choices=("clean", "kfold"), required=True,
                        help="clean: one train / test split; kfold: stratified group k-fold")
    parser.add_argument("--folds", type=positive, default=DataConfig.folds, metavar="K", help="kfold: folds (2 to 20)")
    parser.add_argument("--test-fraction", type=float, default=DataConfig.test_fraction, metavar="F",
                        help="clean: share of the images in test (above 0, below 0.5)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (a config's `seed` gives the same split)")
    parser.add_argument("--cache-dir", default=DataConfig.cache_dir, metavar="DIR",
                        help="where image signatures are cached")
    parser.add_argument("--out", required=True, metavar="FILE.csv", help="the split file to write (must not exist)")


def run(args: argparse.Namespace) -> None:
    from braintumor.core.atomic import write_text
    from braintumor.data.audit import check_root
    from braintumor.data.splits import split_root

    if not 2 <= args.folds <= 20:
        raise UserError(f"--folds {args.folds} is not allowed; use an integer from 2 to 20")
    if not 0 < args.test_fraction < 0.5:
        raise UserError(f"--test-fraction {args.test_fraction:g} is not allowed; use a number above 0 and below 0.5")
    out, root = Path(args.out), Path(args.root)
    if out.exists():
        raise UserError(f"{out} exists; choose a new --out file (a split file is never overwritten)")
    check_root(root)
    assignment = split_root(root, args.protocol, args.seed, args.folds, args.test_fraction,
                            Path(args.cache_dir).expanduser())
    write_text(out, assignment.to_csv())
    counts = ", ".join(f"{side} {sum(labels.values())}" for side, labels in assignment.counts().items())
    print(f"wrote {out}: {counts} images in {int(assignment.groups.group.max()) + 1} twin groups")
