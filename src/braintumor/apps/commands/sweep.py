"""`braintumor sweep`: configs × seeds (× --set values) as ordinary training runs, here or as a SLURM job array.

This module picks the mode (plan a new sweep, --resume, --status, one --task) and checks the arguments;
planning, launching and the manifest are apps/sweep.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from braintumor.apps import sweep
from braintumor.apps.commands.shared import SHIPPED_HINT, add_overrides, start_tensorflow
from braintumor.core.config import resolve_config
from braintumor.core.errors import UserError

HELP = "train configs × seeds (× folds × --set values) here or as a SLURM job array"
DESCRIPTION = ("Each run is an ordinary `braintumor train` run in outputs/sweep-NAME-TIME/, listed in its "
               "manifest.json. Running a sweep again (--resume) does only what is not completed.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("configs", nargs="*", metavar="CONFIG",
                        help=f"experiment configs, or a listing such as configs/study.yaml, {SHIPPED_HINT}")
    parser.add_argument("--seeds", metavar="S,S,...",
                        help="one run per seed, e.g. 0,1,2 (default: each config's seed)")
    add_overrides(parser, "override for every run; a comma list (train.optimizer=adam,rmsprop) adds one run per "
                          "value (repeatable)")
    parser.add_argument("--folds", type=int, metavar="K",
                        help="k-fold cross-validation: one run per fold (x seeds) under data.protocol kfold, "
                             "twin groups kept within a fold; compare pools the folds (2 to 20)")
    parser.add_argument("--name", help="sweep name in the folder name (default: the config's file name)")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="runs at a time: local processes (default 1) or SLURM array throttle %%K (default 4)")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local",
                        help="local: processes on this machine; slurm: one job array (sbatch)")
    parser.add_argument("--dry-run", action="store_true",
                        help="write the plan (and the sbatch script) without running")
    parser.add_argument("--resume", metavar="SWEEP_DIR",
                        help="run or submit what is not completed in an existing sweep")
    parser.add_argument("--status", metavar="SWEEP_DIR", help="show planned / running / completed / failed per run")
    slurm = parser.add_argument_group("SLURM (with --launcher slurm)")
    slurm.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    slurm.add_argument("--time", metavar="HH:MM:SS", help="time limit per task")
    slurm.add_argument("--cpus-per-task", type=int, default=2, metavar="C", help="CPU cores per task")
    slurm.add_argument("--gpus-per-task", type=int, metavar="G", help="GPUs per task (default: none)")
    slurm.add_argument("--account", help="SLURM account to charge")
    slurm.add_argument("--wait", action="store_true", help="block until the job array has finished")
    # one array task (a local child process or a SLURM task); not for users
    parser.add_argument("--task", nargs=2, metavar=("SWEEP_DIR", "INDEX"), help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> None:
    if args.jobs is not None and args.jobs < 1:
        raise UserError(f"--jobs {args.jobs} must be at least 1")
    if args.status:
        sweep.status(Path(args.status))
    elif args.task:
        _run_task(args)
    else:
        _launch(_sweep_dir(args), args)


def _run_task(args: argparse.Namespace) -> None:
    sweep_dir, index = args.task
    if not index.isdigit():
        raise UserError(f"--task INDEX must be a run number, got {index!r}")
    start_tensorflow(args.debug)  # the task trains in this process
    sweep.run_task(Path(sweep_dir), int(index))


def _sweep_dir(args: argparse.Namespace) -> Path:
    """The sweep to run: the one --resume names, or a new one planned from CONFIG..."""
    if args.resume:
        if args.configs or args.seeds or args.set or args.folds:
            raise UserError("--resume continues the plan in the sweep's manifest.json; drop CONFIG, --seeds, "
                            "--folds and --set, or start a new sweep")
        sweep_dir = Path(args.resume).resolve()
        sweep.read_manifest(sweep_dir)
        return sweep_dir
    if not args.configs:
        raise UserError("sweep needs CONFIG files, --resume SWEEP_DIR or --status SWEEP_DIR; "
                        "e.g. braintumor sweep quickstart --seeds 0,1,2")
    return sweep.create_sweep([resolve_config(name) for name in args.configs], args.seeds, args.set, args.name,
                              args.folds)


def _launch(sweep_dir: Path, args: argparse.Namespace) -> None:
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
