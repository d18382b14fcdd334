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
        include_eval=args.include_eval, study=args.study,
    )


def _sweep(args: argparse.Namespace) -> None:
    from braintumor.apps import sweep
    from braintumor.core.logs import setup_console

    setup_console(args.debug)
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs} must be at least 1")
    if args.status:
        sweep.status(Path(args.status))
        return
    if args.task:
        if not args.task[1].isdigit():
            raise UserError(f"--task INDEX must be a run number, got {args.task[1]!r}")
        sweep.run_task(Path(args.task[0]), int(args.task[1]))
        return
    if args.resume:
        if args.configs or args.seeds or args.set:
            raise UserError("--resume continues the plan in the sweep's manifest.json; drop CONFIG, --seeds and "
                            "--set, or start a new sweep")
        sweep_dir = Path(args.resume).resolve()
        sweep.read_manifest(sweep_dir)
    elif args.configs:
        sweep_dir = sweep.create_sweep([Path(c) for c in args.configs], args.seeds, args.set, args.name)
    else:
        raise UserError("sweep needs CONFIG files, --resume SWEEP_DIR or --status SWEEP_DIR; "
                        "e.g. braintumor sweep configs/quickstart.yaml --seeds 0,1,2")
    if args.launcher == "slurm":
        options = sweep.SlurmOptions(jobs=args.jobs or 4, partition=args.partition, time=args.time,
                                     cpus_per_task=args.cpus_per_task, gpus_per_task=args.gpus_per_task,
                                     account=args.account)
        sweep.run_slurm(sweep_dir, options, dry_run=args.dry_run, wait=args.wait)
    elif args.dry_run:
        sweep.status(sweep_dir)
        print(f"dry run: planned {sweep_dir}; run it with braintumor sweep --resume {sweep_dir}")
    else:
        sweep.run_local(sweep_dir, jobs=args.jobs or 1)


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
    p.add_argument("--run", required=True, metavar="RUN_DIR")
    p.add_argument("--data", metavar="ROOT", help="data root (default: the run's data.root)")
    p.add_argument("--split", default="Testing", help="Testing, Training, validation, or a folder name under ROOT")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/eval/<split>-<time>)")
    p.add_argument("--tta", action="store_true", help="also report horizontal-flip test-time augmentation")
    p.add_argument("--leak-free", action="store_true",
                   help="also report metrics on the test images that have no twin in Training")
    p.set_defaults(func=_evaluate)

    p = add_command("compare", help="side-by-side tables of all runs under a folder (a sweep folder too)")
    p.add_argument("outputs", metavar="OUTPUTS_DIR")
    p.add_argument("--metric", default="accuracy",
                   help="rank runs by this metric (default: accuracy; leak_free: leak-free accuracy)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: OUTPUTS_DIR/comparison-<time>)")
    p.add_argument("--include-eval", action="store_true", help="also compare results under RUN_DIR/eval/")
    p.add_argument("--study", action="store_true",
                   help="print the study's published figures beside ours (runs labelled VGG16-I ... InceptionV3-III)")
    p.set_defaults(func=_compare)

    p = add_command("sweep", help="train configs × seeds (× --set values) here or as a SLURM job array",
                    description="Each run is an ordinary `braintumor train` run in outputs/sweep-NAME-TIME/, "
                                "listed in its manifest.json. Running a sweep again (--resume) does only what "
                                "is not completed.")
    p.add_argument("configs", nargs="*", metavar="CONFIG",
                   help="experiment configs, or a listing such as configs/study.yaml")
    p.add_argument("--seeds", metavar="S,S,...", help="one run per seed, e.g. 0,1,2 (default: each config's seed)")
    p.add_argument("--set", **{**overrides, "help": "override for every run; a comma list (train.optimizer="
                                                     "adam,rmsprop) adds one run per value (repeatable)"})
    p.add_argument("--name", help="sweep name in the folder name (default: the config's file name)")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="runs at a time: local processes (default 1) or SLURM array throttle %%K (default 4)")
    p.add_argument("--launcher", choices=("local", "slurm"), default="local")
    p.add_argument("--dry-run", action="store_true", help="write the plan (and the sbatch script) without running")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="run or submit what is not completed in an existing sweep")
    p.add_argument("--status", metavar="SWEEP_DIR", help="show planned / running / completed / failed per run")
    slurm = p.add_argument_group("SLURM (with --launcher slurm)")
    slurm.add_argument("--partition")
    slurm.add_argument("--time", metavar="HH:MM:SS", help="time limit per task")
    slurm.add_argument("--cpus-per-task", type=int, default=2, metavar="C")
    slurm.add_argument("--gpus-per-task", type=int, metavar="G")
    slurm.add_argument("--account")
    slurm.add_argument("--wait", action="store_true", help="block until the job array has finished")
    p.add_argument("--task", nargs=2, metavar=("SWEEP_DIR", "INDEX"), help=argparse.SUPPRESS)  # one array task
    p.set_defaults(func=_sweep)

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
