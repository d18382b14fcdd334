"""`braintumor train`: one experiment from a YAML config into a new run folder, or --resume an interrupted run."""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.apps.commands.shared import CONFIG_EPILOG, SHIPPED_HINT, add_overrides, start_tensorflow
from braintumor.core.config import load_config, resolve_config
from braintumor.core.errors import UserError

HELP = "train one experiment from a YAML config"
DESCRIPTION = "Train one experiment into a new run folder <output.dir>/<name>-<time>/."
EPILOG = CONFIG_EPILOG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", metavar="CONFIG",
                        help=f"YAML config, e.g. configs/quickstart.yaml, {SHIPPED_HINT}")
    add_overrides(parser)
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue an interrupted run from its last saved epoch (CONFIG is then not needed)")


def run(args: argparse.Namespace) -> None:
    if args.resume:
        start_tensorflow(args.debug)
        from braintumor.engine import train

        train.resume(Path(args.resume))
        return
    if not args.config:
        raise UserError("train needs a CONFIG file or --resume RUN_DIR; e.g. braintumor train quickstart")
    cfg = load_config(resolve_config(args.config), args.set)  # a typo answers here, before anything heavy loads
    from braintumor.data.dataset import find_classes

    find_classes(cfg.data)  # a missing data root fails here, before TensorFlow loads
    start_tensorflow(args.debug)
    from braintumor.engine import train

    train.run(cfg)
