"""Progress messages go through `logging` (logger "braintumor"): the console shows them, and a run's
train.log (or an eval folder's eval.log) keeps a copy. Final result lines of the CLI stay prints."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = "braintumor"


def get_logger(name: str) -> logging.Logger:
    """The logger for a module: `get_logger(__name__)`."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (tests and tools swap it)."""

    @property
    def stream(self):  # noqa: ANN201
        return sys.stdout

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup_console(debug: bool = False) -> None:
    """Messages to stdout, plain; --debug adds DEBUG messages. Idempotent."""
    root = logging.getLogger(ROOT)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not any(getattr(h, "_braintumor_console", False) for h in root.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._braintumor_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)


class _LogFile(logging.FileHandler):
    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802  (logging's name)
        """A full disk must not print logging tracebacks: the console still shows the message."""


def _at_least_info(root: logging.Logger) -> None:
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)


@contextlib.contextmanager
def collect() -> Iterator[list[logging.LogRecord]]:
    """Keep the package's messages of the block, to copy them into a log file that exists only later."""
    root = logging.getLogger(ROOT)
    _at_least_info(root)
    handler = logging.handlers.BufferingHandler(capacity=sys.maxsize)
    root.addHandler(handler)
    try:
        yield handler.buffer
    finally:
        root.removeHandler(handler)


@contextlib.contextmanager
def log_to_file(path: Path, earlier: Sequence[logging.LogRecord] = ()) -> Iterator[None]:
    """Copy every message of the package into `path` (appending, so a resumed run keeps one log).

    `earlier`: messages from before the file could exist (from `collect`), written first.
    """
    root = logging.getLogger(ROOT)
    _at_least_info(root)
    handler = _LogFile(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for record in earlier:
        handler.handle(record)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
