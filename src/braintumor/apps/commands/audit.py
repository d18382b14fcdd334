"""`braintumor data audit`: leakage, label conflicts and Training/Testing shift of a data set."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "leakage, label conflicts and Training/Testing shift of a data set"
DESCRIPTION = ("Audit ROOT/{Training,Testing}/<class>/: exact and near duplicates, label conflicts, shift, "
               "revealing file names.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", metavar="ROOT",
                        help="folder holding Training/ and Testing/, e.g. data/brain-tumor-mri")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: outputs/audit-<time>)")


def run(args: argparse.Namespace) -> None:
    from braintumor.data import audit

    audit.run_audit(Path(args.root), out_dir=Path(args.out) if args.out else None)
