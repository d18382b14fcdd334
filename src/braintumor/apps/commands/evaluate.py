"""`braintumor evaluate`: score a trained run (or an ensemble of runs) on a split or another folder tree."""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.apps.commands.shared import start_tensorflow

HELP = "evaluate a trained run on a split or another folder tree"
DESCRIPTION = ("Score a run's model.keras; writes metrics.json, predictions.csv and the report files into a "
               "new folder.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runs = parser.add_mutually_exclusive_group(required=True)
    runs.add_argument("--run", metavar="RUN_DIR",
                      help="a run folder written by `braintumor train`, e.g. outputs/quickstart-20261127-120000")
    runs.add_argument("--ensemble", nargs="+", metavar="RUN_DIR",
                      help="average the probabilities of these runs (same data, image size and preprocessing), "
                           "e.g. the seeds of one sweep configuration")
    parser.add_argument("--data", metavar="ROOT", help="data root holding the split (default: the run's data.root)")
    parser.add_argument("--split",
                        help="test (the run's own test part, from its split.csv), validation (its validation files), "
                             "Testing, Training, or a folder name under ROOT (default: test for a run of a grouped "
                             "protocol, clean or kfold, whose training images come from both folders; Testing "
                             "otherwise)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/eval/<split>-<time>)")
    parser.add_argument("--tta", action="store_true", help="also report horizontal-flip test-time augmentation")
    parser.add_argument("--leak-free", action="store_true",
                        help="also report metrics on the test images that have no twin in Training")


def run(args: argparse.Namespace) -> None:
    from braintumor.core.run import Run

    out_dir = Path(args.out) if args.out else None
    # answered before TensorFlow loads
    if args.ensemble:
        runs = [Run.completed(Path(run), "evaluate --ensemble") for run in args.ensemble]
    else:
        run = Run.completed(Path(args.run), "evaluate")
    start_tensorflow(args.debug)
    from braintumor.engine import evaluate

    if args.ensemble:
        evaluate.evaluate_ensemble(runs, split=args.split, out_dir=out_dir,
                                   tta=args.tta)
        return
    evaluate.evaluate_run(run, data_root=Path(args.data) if args.data else None, split=args.split,
                          out_dir=out_dir, tta=args.tta, leak_free=args.leak_free)
