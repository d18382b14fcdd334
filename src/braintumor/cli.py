"""Command line: parse arguments, call one stage module, turn user errors into exit code 2.

Arguments and configs are checked before TensorFlow loads, so a typo answers at once; `validate`
and `--help` never import TensorFlow. TensorFlow's start-up chatter is hidden unless --debug.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from pathlib import Path
from types import ModuleType

from braintumor import __version__
from braintumor.core.errors import UserError
from braintumor.core.logs import native_stderr_filtered, setup_console
from braintumor.results.metrics import METRICS

DESCRIPTION = """\
Train and compare brain MRI tumour classifiers (glioma, meningioma, pituitary, no tumour) with
Keras: every experiment is one YAML config, every run one self-contained folder.

first run (synthetic data, no download, about a minute on a laptop CPU):
  braintumor train configs/quickstart.yaml

the usual path with the real data set:
  braintumor data download            fetch and verify it into data/brain-tumor-mri
  braintumor data audit ROOT          duplicates, label conflicts, Training/Testing shift
  braintumor validate CONFIG...       check configs in a second
  braintumor train CONFIG             train one experiment into outputs/<name>-<time>/
  braintumor evaluate --run RUN_DIR   score a trained run on a split or another folder
  braintumor compare outputs/         side-by-side tables with intervals and McNemar tests
"""
EPILOG = """\
Each command has its own --help. Bad input ends with exit code 2 and one line naming the cause and
the fix; --debug adds the traceback. Config keys: README.md, section "Configs"."""
CONFIG_HELP = """\
Config keys, their defaults and allowed values: README.md, section "Configs" (the schema is
src/braintumor/core/config.py). Check a config without training: braintumor validate CONFIG."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows real defaults (not None, False or [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _load_engine(module: str, debug: bool) -> ModuleType:
    """Import an engine module (TensorFlow loads here), hiding TensorFlow's start-up lines unless --debug."""
    with native_stderr_filtered(enabled=not debug):
        engine = importlib.import_module(f"braintumor.engine.{module}")
        import tensorflow as tf

        tf.config.list_physical_devices()  # CUDA probing, and its `failed call to cuInit` line, happens here once
    return engine


def _train(args: argparse.Namespace) -> None:
    if args.resume:
        _load_engine("train", args.debug).resume(Path(args.resume))
        return
    if not args.config:
        raise UserError("train needs a CONFIG file or --resume RUN_DIR; "
                        "e.g. braintumor train configs/quickstart.yaml")
    from braintumor.core.config import load_config

    cfg = load_config(Path(args.config), args.set)  # a typo answers here, before anything heavy loads
    from braintumor.data.dataset import find_classes

    find_classes(cfg.data)  # a missing data root fails here, before TensorFlow loads
    _load_engine("train", args.debug).run(cfg)


def _validate(args: argparse.Namespace) -> None:
    from braintumor.core.config import load_config

    for path in args.configs:
        cfg = load_config(Path(path), args.set)
        print(f"ok  {path}  ({cfg.name}: {cfg.model.backbone}, {cfg.model.mode}, "
              f"{cfg.train.optimizer} {cfg.train.learning_rate:g}, "
              f"augmentation {'on' if cfg.augmentation.enabled else 'off'})")


def _evaluate(args: argparse.Namespace) -> None:
    if args.ensemble:
        _load_engine("evaluate", args.debug).evaluate_ensemble(
            [Path(run) for run in args.ensemble], split=args.split, out_dir=Path(args.out) if args.out else None,
            tta=args.tta)
        return
    if not Path(args.run).is_dir():  # answered before TensorFlow loads
        raise UserError(f"run directory {args.run} not found; pass a folder made by braintumor train")
    _load_engine("evaluate", args.debug).evaluate_run(
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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _predict(args: argparse.Namespace) -> None:
    from braintumor.apps import predict

    predict.run_predict(
        Path(args.run), [Path(p) for p in args.paths], as_json=args.json,
        csv_path=Path(args.csv) if args.csv else None, gradcam_dir=Path(args.gradcam) if args.gradcam else None,
        gradcam_class=args.gradcam_class, tta=args.tta, batch_size=args.batch_size)


def _export(args: argparse.Namespace) -> None:
    from braintumor.apps import export

    export.export_run(Path(args.run), args.format, out=Path(args.out) if args.out else None)


def _serve(args: argparse.Namespace) -> None:
    from braintumor.apps import serve

    serve.serve(Path(args.run), host=args.host, port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="braintumor", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show tracebacks for errors and TensorFlow's start-up messages")
    # --debug is accepted after the command too; SUPPRESS keeps the subcommand from resetting it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks for errors and TensorFlow's start-up messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_command = functools.partial(commands.add_parser, parents=[debug], formatter_class=_HelpFormatter)
    overrides = {"action": "append", "default": [], "metavar": "KEY=VALUE",
                 "help": "override a config value, e.g. --set train.epochs=2 --set data.root=PATH "
                         "(the value is read as YAML; repeatable)"}

    p = add_command("train", help="train one experiment from a YAML config",
                    description="Train one experiment into a new run folder <output.dir>/<name>-<time>/.",
                    epilog=CONFIG_HELP)
    p.add_argument("config", nargs="?", metavar="CONFIG", help="YAML config, e.g. configs/quickstart.yaml")
    p.add_argument("--set", **overrides)
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue an interrupted run from its last saved epoch (CONFIG is then not needed)")
    p.set_defaults(func=_train)

    p = add_command("validate", help="check configs without training (no TensorFlow, about a second)",
                    description="Check configs against the schema: unknown keys and bad values fail with "
                                "the key path and what is allowed.", epilog=CONFIG_HELP)
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML config files, e.g. configs/*.yaml")
    p.add_argument("--set", **overrides)
    p.set_defaults(func=_validate)

    p = add_command("evaluate", help="evaluate a trained run on a split or another folder tree",
                    description="Score a run's model.keras; writes metrics.json, predictions.csv and the "
                                "report files into a new folder.")
    runs = p.add_mutually_exclusive_group(required=True)
    runs.add_argument("--run", metavar="RUN_DIR",
                      help="a run folder written by `braintumor train`, e.g. outputs/quickstart-20261127-120000")
    runs.add_argument("--ensemble", nargs="+", metavar="RUN_DIR",
                      help="average the probabilities of these runs (same data, image size and preprocessing), "
                           "e.g. the seeds of one sweep configuration")
    p.add_argument("--data", metavar="ROOT", help="data root holding the split (default: the run's data.root)")
    p.add_argument("--split", default="Testing",
                   help="Testing, Training, validation (the run's own validation files), or a folder name under ROOT")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/eval/<split>-<time>)")
    p.add_argument("--tta", action="store_true", help="also report horizontal-flip test-time augmentation")
    p.add_argument("--leak-free", action="store_true",
                   help="also report metrics on the test images that have no twin in Training")
    p.set_defaults(func=_evaluate)

    p = add_command("compare", help="side-by-side tables of all runs under a folder (a sweep folder too)",
                    description="Rank the completed runs under OUTPUTS_DIR (only runs scored on the same "
                                "test files against each other) with bootstrap intervals and McNemar tests; "
                                "runs that differ only in seed are pooled into one configuration (mean ± std).")
    p.add_argument("outputs", metavar="OUTPUTS_DIR", help="folder holding run folders, e.g. outputs/ or a sweep folder")
    p.add_argument("--metric", default="accuracy", metavar="NAME",
                   help="rank runs by one of: " + "; ".join(metric.choice_help for metric in METRICS))
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
    p.add_argument("--launcher", choices=("local", "slurm"), default="local",
                   help="local: processes on this machine; slurm: one job array (sbatch)")
    p.add_argument("--dry-run", action="store_true", help="write the plan (and the sbatch script) without running")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="run or submit what is not completed in an existing sweep")
    p.add_argument("--status", metavar="SWEEP_DIR", help="show planned / running / completed / failed per run")
    slurm = p.add_argument_group("SLURM (with --launcher slurm)")
    slurm.add_argument("--partition", help="SLURM partition (default: the cluster's default)")
    slurm.add_argument("--time", metavar="HH:MM:SS", help="time limit per task")
    slurm.add_argument("--cpus-per-task", type=int, default=2, metavar="C", help="CPU cores per task")
    slurm.add_argument("--gpus-per-task", type=int, metavar="G", help="GPUs per task (default: none)")
    slurm.add_argument("--account", help="SLURM account to charge")
    slurm.add_argument("--wait", action="store_true", help="block until the job array has finished")
    p.add_argument("--task", nargs=2, metavar=("SWEEP_DIR", "INDEX"), help=argparse.SUPPRESS)  # one array task
    p.set_defaults(func=_sweep)

    p = add_command("predict", help="classify image files or folders with a trained run (optionally Grad-CAM)")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a completed run folder made by braintumor train")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (walked for images)")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a JSON list instead of one line per image")
    output.add_argument("--csv", metavar="FILE", help="also write the predictions with predictions.csv's columns")
    p.add_argument("--gradcam", metavar="OUT_DIR", help="write a Grad-CAM overlay PNG per image into OUT_DIR")
    p.add_argument("--gradcam-class", metavar="NAME", help="explain this class instead of the predicted one")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per model call")
    p.set_defaults(func=_predict)

    p = add_command("export", help="export a run's model as ONNX, TensorFlow SavedModel or TFLite")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a completed run folder made by braintumor train")
    p.add_argument("--format", required=True, choices=("onnx", "savedmodel", "tflite"),
                   help="onnx (needs the [export] extra), savedmodel (TensorFlow Serving) or tflite")
    p.add_argument("--out", metavar="PATH", help="the file (folder for savedmodel) to write "
                   "(default: RUN_DIR/export/<format>/...)")
    p.set_defaults(func=_export)

    p = add_command("serve", help="web demo of a run: upload a scan, see probabilities and Grad-CAM")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a completed run folder made by braintumor train")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="TCP port to listen on")
    p.set_defaults(func=_serve)

    data = add_command("data", help="data set tools: synth, audit, download",
                       description="Data set tools.").add_subparsers(dest="data_command", required=True,
                                                                     metavar="DATA_COMMAND")
    add_data_command = functools.partial(data.add_parser, parents=[debug], formatter_class=_HelpFormatter)
    p = add_data_command("synth", help="write a small synthetic MRI-like data set",
                         description="Write DEST/{Training,Testing}/<class>/*.jpg: a small, learnable, "
                                     "deterministic MRI-like data set (the quickstart's data).")
    p.add_argument("dest", metavar="DEST", help="new or empty folder to write, e.g. data/synthetic")
    p.add_argument("--train-per-class", type=_positive, default=60, metavar="N", help="Training images per class")
    p.add_argument("--test-per-class", type=_positive, default=20, metavar="N", help="Testing images per class")
    p.add_argument("--size", type=_positive, default=128, metavar="PX", help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same arguments give the same bytes")
    p.set_defaults(func=_synth)

    p = add_data_command("audit", help="leakage, label conflicts and Training/Testing shift of a data set",
                         description="Audit ROOT/{Training,Testing}/<class>/: exact and near duplicates, "
                                     "label conflicts, shift, revealing file names.")
    p.add_argument("root", metavar="ROOT", help="folder holding Training/ and Testing/, e.g. data/brain-tumor-mri")
    p.add_argument("--out", metavar="DIR", help="output folder (default: outputs/audit-<time>)")
    p.set_defaults(func=_audit)

    p = add_data_command("download", help="fetch and verify the public data set",
                         description="Fetch the public data set (or take a local zip), extract it with size "
                                     "and path checks, verify counts and content hash, and move it to DEST.")
    p.add_argument("--dest", default="data/brain-tumor-mri", metavar="DIR", help="where the verified data set goes")
    p.add_argument("--archive", metavar="ZIP", help="use a local zip instead of downloading")
    p.add_argument("--url", default=None, help="archive URL (default: the data set's GitHub archive)")
    p.set_defaults(func=_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for stream in (sys.stdout, sys.stderr):  # file names that are not valid UTF-8 print as \udcXX, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    setup_console(args.debug)
    try:
        args.func(args)
    except UserError as err:
        if args.debug:
            raise
        print("error: " + " ".join(str(err).split()), file=sys.stderr)  # always one line
        return UserError.exit_code
    except KeyboardInterrupt as err:  # training stops at a safe point and says how to resume; SIGTERM: 143
        print("interrupted" + (f": {err}" if str(err) else ""), file=sys.stderr)
        return getattr(err, "exit_code", 130)
    return 0


if __name__ == "__main__":
    sys.exit(main())
