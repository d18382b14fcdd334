"""Command line: the parser, built from the command modules in apps/commands/, and the exit codes.

Each command is one module there (its help, arguments and `run`); this file only lists them. Commands
check their arguments and configs before TensorFlow loads, so a typo answers at once; `validate` and
`--help` never import TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from types import ModuleType

from braintumor import __version__
from braintumor.apps.commands import (
    adapt,
    audit,
    calibrate,
    compare,
    download,
    evaluate,
    export,
    predict,
    serve,
    split,
    sweep,
    synth,
    train,
    validate,
)
from braintumor.core.errors import UserError
from braintumor.core.logs import setup_console

COMMANDS = (train, validate, evaluate, calibrate, adapt, compare, sweep, predict, export, serve)
DATA_COMMANDS = (synth, audit, split, download)  # braintumor data <command>

DESCRIPTION = """\
Train and compare brain MRI tumour classifiers (glioma, meningioma, pituitary, no tumour) with
Keras: every experiment is one YAML config, every run one self-contained folder.

first run (synthetic data, no download, about a minute on a laptop CPU):
  braintumor train quickstart         the shipped configs/quickstart.yaml; a bare name is a shipped config

the usual path with the real data set:
  braintumor data download            fetch and verify it into data/brain-tumor-mri
  braintumor data audit ROOT          duplicates, twin groups, label conflicts, Training/Testing shift
  braintumor data split ROOT ...      a twin-group-aware clean or k-fold split as CSV
  braintumor validate CONFIG...       check configs in a second
  braintumor train CONFIG             train one experiment into outputs/<name>-<time>/
  braintumor evaluate --run RUN_DIR   score a trained run on a split or another folder
  braintumor compare outputs/         side-by-side tables with intervals and McNemar tests
"""
EPILOG = """\
Each command has its own --help. Bad input ends with exit code 2 and one line naming the cause and
the fix; --debug adds the traceback. Config keys: README.md, section "Configs"."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's layout and shows real defaults (not None, False or [])."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _add_commands(subparsers, modules: Sequence[ModuleType], parents: list[argparse.ArgumentParser]) -> None:
    for module in modules:
        parser = subparsers.add_parser(module.__name__.rpartition(".")[2], help=module.HELP,
                                       description=module.DESCRIPTION, epilog=getattr(module, "EPILOG", None),
                                       parents=parents, formatter_class=_HelpFormatter)
        module.add_arguments(parser)
        parser.set_defaults(func=module.run)


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
    _add_commands(commands, COMMANDS, [debug])
    data = commands.add_parser("data", help="data set tools: synth, audit, split, download",
                               description="Data set tools.",
                               parents=[debug], formatter_class=_HelpFormatter)
    _add_commands(data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND"),
                  DATA_COMMANDS, [debug])
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help and --version (0); argparse's own errors, printed with the usage (2)
        return done.code

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
    except BrokenPipeError:  # `braintumor ... | head` closed our stdout: stop quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail
        return 128 + signal.SIGPIPE
    return 0


if __name__ == "__main__":
    sys.exit(main())
