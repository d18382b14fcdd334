"""Command line: parse arguments, call one stage module, turn user errors into exit code 2.

Heavy modules (TensorFlow) are imported inside the commands so `validate` and `--help` stay fast.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from braintumor.core.errors import UserError


def _train(args: argparse.Namespace) -> None:
    from braintumor.engine import train

    if args.resume:
        train.resume(Path(args.resume))
    else:
        if not args.config:
            raise UserError("train needs a CONFIG file or --resume RUN_DIR; "
                            "e.g. braintumor train configs/quickstart.yaml")
        train.train_from_file(Path(args.config), args.set)


def _validate(args: argparse.Namespace) -> None:
    from braintumor.core.config import load_config

    for path in args.configs:
        cfg = load_config(Path(path), args.set)
        print(f"ok  {path}  ({cfg.name}: {cfg.model.backbone}, {cfg.model.mode}, "
              f"{cfg.train.optimizer} {cfg.train.learning_rate:g}, "
              f"augmentation {'on' if cfg.augmentation.enabled else 'off'})")


def _evaluate(args: argparse.Namespace) -> None:
    from braintumor.engine import evaluate

    if args.ensemble:
        evaluate.evaluate_ensemble([Path(run) for run in args.ensemble], split=args.split,
                                   out_dir=Path(args.out) if args.out else None, tta=args.tta)
        return
    evaluate.evaluate_run(
        Path(args.run),
        data_root=Path(args.data) if args.data else None,
        split=args.split,
        out_dir=Path(args.out) if args.out else None,
        tta=args.tta,
        leak_free=args.leak_free,
    )


def _compare(args: argparse.Namespace) -> None:
    from braintumor.results import compare

    compare.compare_runs(
        Path(args.outputs), metric=args.metric, out_dir=Path(args.out) if args.out else None,
        include_eval=args.include_eval,
    )


def _synth(args: argparse.Namespace) -> None:
    from braintumor.data.synth import make_dataset

    dest = make_dataset(args.dest, args.train_per_class, args.test_per_class, args.size, args.seed)
    print(f"wrote synthetic data set to {dest}")


def _audit(args: argparse.Namespace) -> None:
    from braintumor.data import audit

    audit.run_audit(Path(args.root), out_dir=Path(args.out) if args.out else None)


def _download(args: argparse.Namespace) -> None:
    from braintumor.data import download

    download.download(Path(args.dest), archive=Path(args.archive) if args.archive else None, url=args.url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="braintumor", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    # --debug is accepted after the command too; SUPPRESS keeps the subcommand from resetting it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    commands = parser.add_subparsers(dest="command", required=True)
    add_command = functools.partial(commands.add_parser, parents=[debug])
    overrides = {"action": "append", "default": [], "metavar": "KEY=VALUE",
                 "help": "override a config value, e.g. --set train.epochs=2 (YAML-typed; repeatable)"}

    p = add_command("train", help="train one experiment from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config, e.g. configs/inception_rmsprop.yaml")
    p.add_argument("--set", **overrides)
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last saved epoch")
    p.set_defaults(func=_train)

    p = add_command("validate", help="check configs without training")
    p.add_argument("configs", nargs="+", metavar="CONFIG")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=_validate)

    p = add_command("evaluate", help="evaluate a trained run on a split or another folder tree")
    runs = p.add_mutually_exclusive_group(required=True)
    runs.add_argument("--run", metavar="RUN_DIR", help="a run folder made by braintumor train")
    runs.add_argument("--ensemble", nargs="+", metavar="RUN_DIR",
                      help="average the probabilities of these runs (same data, image size and preprocessing), "
                           "e.g. the seeds of one sweep configuration")
    p.add_argument("--data", metavar="ROOT", help="data root (default: the run's data.root)")
    p.add_argument("--split", default="Testing", help="Testing, Training, validation, or a folder name under ROOT")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/eval/<split>-<time>)")
    p.add_argument("--tta", action="store_true", help="also report horizontal-flip test-time augmentation")
    p.add_argument("--leak-free", action="store_true",
                   help="also report metrics on the test images that have no twin in Training")
    p.set_defaults(func=_evaluate)

    p = add_command("compare", help="side-by-side tables of all runs under a folder")
    p.add_argument("outputs", metavar="OUTPUTS_DIR")
    p.add_argument("--metric", default="accuracy", help="rank runs by this metric (default: accuracy)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: OUTPUTS_DIR/comparison-<time>)")
    p.add_argument("--include-eval", action="store_true", help="also compare results under RUN_DIR/eval/")
    p.set_defaults(func=_compare)

    data = add_command("data", help="data set tools").add_subparsers(dest="data_command", required=True)
    add_data_command = functools.partial(data.add_parser, parents=[debug])
    p = add_data_command("synth", help="write a small synthetic MRI-like data set")
    p.add_argument("dest")
    p.add_argument("--train-per-class", type=int, default=60)
    p.add_argument("--test-per-class", type=int, default=20)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_synth)

    p = add_data_command("audit", help="leakage, label conflicts and Training/Testing shift of a data set")
    p.add_argument("root")
    p.add_argument("--out", metavar="DIR", help="output folder (default: outputs/audit-<time>)")
    p.set_defaults(func=_audit)

    p = add_data_command("download", help="fetch and verify the public data set")
    p.add_argument("--dest", default="data/brain-tumor-mri")
    p.add_argument("--archive", metavar="ZIP", help="use a local zip instead of downloading")
    p.add_argument("--url", default=None, help="archive URL (default: the data set's GitHub archive)")
    p.set_defaults(func=_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as err:
        if args.debug:
            raise
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # always one line
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
