"""`braintumor calibrate`: fit a run's temperature and out-of-distribution detector (again), e.g. for a run
trained before they existed."""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.apps.commands.shared import add_run_dir, start_tensorflow

HELP = "fit a run's calibrated probabilities and its out-of-distribution detector"
DESCRIPTION = ("Fit temperature scaling on the run's validation images and the out-of-distribution detector on its "
               "training images' features (threshold: 95 % of validation images pass), from the run's own data; "
               "writes calibration.npz and calibration.json into the run folder, and the run's own reports on its test "
               "part again with them (calibrated probabilities and the detector's verdicts in predictions.csv, ECE/NLL "
               "before and after and the flagged share in metrics.json). Training does this itself; use it for runs "
               "trained before, or after adapt.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)


def run(args: argparse.Namespace) -> None:
    from braintumor.core.run import Run

    run = Run.completed(Path(args.run), "calibrate")  # answered before TensorFlow loads
    start_tensorflow(args.debug)
    from braintumor.engine.evaluate import calibrate_run

    calibrate_run(run)
