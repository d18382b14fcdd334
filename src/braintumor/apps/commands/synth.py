"""`braintumor data synth`: write a small synthetic MRI-like data set (the quickstart's data)."""

from __future__ import annotations

import argparse

from braintumor.apps.commands.shared import positive

HELP = "write a small synthetic MRI-like data set"
DESCRIPTION = ("Write DEST/{Training,Testing}/<class>/*.jpg: a small, learnable, deterministic MRI-like data set "
               "(the quickstart's data).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dest", metavar="DEST", help="new or empty folder to write, e.g. data/synthetic")
    parser.add_argument("--train-per-class", type=positive, default=60, metavar="N", help="Training images per class")
    parser.add_argument("--test-per-class", type=positive, default=20, metavar="N", help="Testing images per class")
    parser.add_argument("--size", type=positive, default=128, metavar="PX", help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same arguments give the same bytes")


def run(args: argparse.Namespace) -> None:
    from braintumor.data.synth import make_dataset

    dest = make_dataset(args.dest, args.train_per_class, args.test_per_class, args.size, args.seed)
    print(f"wrote synthetic data set to {dest}")
