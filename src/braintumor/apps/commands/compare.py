"""`braintumor compare`: side-by-side tables of the completed runs under a folder (no TensorFlow)."""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.results.metrics import METRICS

HELP = "side-by-side tables of all runs under a folder (a sweep folder too)"
DESCRIPTION = ("Rank the completed runs under OUTPUTS_DIR (only runs scored on the same test files against each "
               "other) with bootstrap intervals and McNemar tests; runs that differ only in seed are pooled into "
               "one configuration (mean ± std).")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("outputs", metavar="OUTPUTS_DIR",
                        help="folder holding run folders, e.g. outputs/ or a sweep folder")
    parser.add_argument("--metric", default="accuracy", metavar="NAME",
                        help="rank runs by one of: " + "; ".join(metric.choice_help for metric in METRICS))
    parser.add_argument("--out", metavar="DIR", help="output folder (default: OUTPUTS_DIR/comparison-<time>)")
    parser.add_argument("--include-eval", action="store_true", help="also compare results under RUN_DIR/eval/")
    parser.add_argument("--study", action="store_true",
                        help="print the study's published figures beside ours (runs labelled VGG16-I ... "
                             "InceptionV3-III)")


def run(args: argparse.Namespace) -> None:
    from braintumor.results import compare

    compare.compare_runs(Path(args.outputs), metric=args.metric, out_dir=Path(args.out) if args.out else None,
                         include_eval=args.include_eval, study=args.study)
