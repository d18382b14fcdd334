"""`braintumor export`: a run's model as ONNX, TensorFlow SavedModel or TFLite, with a model card."""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.apps.commands.shared import add_run_dir, start_tensorflow

HELP = "export a run's model as ONNX, TensorFlow SavedModel or TFLite"
DESCRIPTION = "Export a run's model for use without braintumor, with a model card beside it."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)
    parser.add_argument("--format", required=True, choices=("onnx", "savedmodel", "tflite"),
                        help="onnx (needs the [export] extra), savedmodel (TensorFlow Serving) or tflite")
    parser.add_argument("--out", metavar="DIR", help="the export lands in DIR/<format>/: model, model_card.json, "
                        "decode.py (default DIR: RUN_DIR/export)")


def run(args: argparse.Namespace) -> None:
    from braintumor.core.run import Run

    run = Run.completed(Path(args.run), "export")  # answered before TensorFlow loads
    start_tensorflow(args.debug)
    from braintumor.apps import export

    export.export_run(run, args.format, out=Path(args.out) if args.out else None, debug=args.debug)
