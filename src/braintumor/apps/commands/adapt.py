"""`braintumor adapt`: recompute a run's BatchNorm statistics on unlabeled images of a new site (AdaBN) into a new
run."""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.apps.commands.shared import add_run_dir, positive, start_tensorflow
from braintumor.data.medical import SLICES

MAX_IMAGES = 4096  # engine/adapt.py holds them decoded at once: 4096 at 299 px is about 1.1 GB
HELP = "adapt a run's BatchNorm statistics to unlabeled images of a new site or scanner (AdaBN), as a new run"
DESCRIPTION = ("Recompute the moving mean and variance of every BatchNorm layer of a run's model as the average of "
               "their batch statistics over unlabeled images of another site or scanner (AdaBN); every other weight "
               "stays the same. Writes a new complete run (never touching the source): its model, its own reports "
               "on the run's test part, and adaptation.json, saying where its statistics came from. The source's "
               "calibration is not carried over (fit one with braintumor calibrate --run NEW_RUN). Models without "
               "BatchNorm (VGG16) are refused.")


def max_images(text: str) -> int:
    """An argparse type: 1 to MAX_IMAGES images (checked before any work)."""
    value = positive(text)
    if value > MAX_IMAGES:
        raise argparse.ArgumentTypeError(f"{text!r} is over {MAX_IMAGES}, the most images adapt holds at once")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)
    parser.add_argument("--data", required=True, metavar="FOLDER",
                        help="unlabeled images of the new site (walked recursively; labels of class subfolders are "
                             "ignored), decoded as the run decodes its own")
    parser.add_argument("--max-images", type=max_images, default=512, metavar="N",
                        help=f"use at most N images, 1 to {MAX_IMAGES}, drawn with the run's seed if the folder "
                             "holds more (a volume counts as one), and at most N of the images they give")
    parser.add_argument("--slices", choices=SLICES, default="middle",
                        help="of a volume (NIfTI, multi-frame DICOM, a folder holding one DICOM series): its middle "
                             "slice (the default, what predict classifies by default) or every slice with signal; "
                             "where they give more than --max-images, that many are drawn with the run's seed")
    parser.add_argument("--out", metavar="DIR",
                        help="the new run folder, which must not exist (default: beside RUN_DIR, "
                             "<run name>-adapted-<time>)")


def run(args: argparse.Namespace) -> None:
    from braintumor.core.run import Run

    run = Run.completed(Path(args.run), "adapt")  # answered before TensorFlow loads
    start_tensorflow(args.debug)
    from braintumor.engine.adapt import adapt_run

    adapt_run(run, Path(args.data), args.max_images, Path(args.out) if args.out else None, args.slices)
