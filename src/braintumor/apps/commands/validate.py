"""`braintumor validate`: check configs against the schema without training (no TensorFlow, about a second)."""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.apps.commands.shared import CONFIG_EPILOG, SHIPPED_HINT, add_overrides
from braintumor.core.config import load_config, read_listing, resolve_config

HELP = "check configs without training (no TensorFlow, about a second)"
DESCRIPTION = ("Check configs against the schema: unknown keys and bad values fail with the key path and what "
               "is allowed. A sweep listing (configs/study.yaml) is checked by checking every config it names.")
EPILOG = CONFIG_EPILOG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="+", metavar="CONFIG",
                        help=f"YAML config files, e.g. configs/*.yaml, {SHIPPED_HINT}")
    add_overrides(parser)


def run(args: argparse.Namespace) -> None:
    for name in args.configs:
        path = resolve_config(name)
        listed = read_listing(path)
        if listed is None:
            _check(path, args.set)
            continue
        print(f"sweep listing {name}: {len(listed)} configs")
        for config in listed:
            _check(config, args.set, indent="  ")


def _check(path: Path, overrides: list[str], indent: str = "") -> None:
    cfg = load_config(path, overrides)
    print(f"{indent}ok  {path}  ({cfg.name}: {cfg.model.backbone}, {cfg.model.mode}, "
          f"{cfg.train.optimizer} {cfg.train.learning_rate:g}, "
          f"augmentation {'on' if cfg.augmentation.enabled else 'off'})")
