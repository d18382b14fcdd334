"""`braintumor serve`: the web demo (Gradio) of one trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.apps.commands.shared import add_run_dir, start_tensorflow

HELP = "web demo of a run: upload a scan, see probabilities and Grad-CAM"
DESCRIPTION = "Serve a web page where a scan can be uploaded: class probabilities and the Grad-CAM overlay."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_dir(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="TCP port to listen on")


def run(args: argparse.Namespace) -> None:
    start_tensorflow(args.debug)
    from braintumor.apps import serve

    serve.serve(Path(args.run), host=args.host, port=args.port)
