"""Progress messages go through `logging` (logger "braintumor"): the console shows them, and a run's
train.log (or an eval folder's eval.log) keeps a copy. Final result lines of the CLI stay prints."""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

ROOT = "braintumor"
# TensorFlow's C++ start-up lines: absl's "before InitializeLog" notice and glog-style lines such as
# "I0000 00:00:1795782102.672107  7662 port.cc:153] oneDNN custom operations are on"
# and LiteRT's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." when a .tflite is loaded
_NATIVE_CHATTER = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\)|[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\]"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.)")


def get_logger(name: str) -> logging.Logger:
    """The logger for a module: `get_logger(__name__)`."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def setup_console(debug: bool = False) -> None:
    """Messages to stdout, plain; --debug adds DEBUG messages and TensorFlow's retracing notices. Idempotent."""
    root = logging.getLogger(ROOT)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not any(isinstance(h, _ConsoleHandler) for h in root.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(_ConsoleFormatter())
        root.addHandler(handler)
    tensorflow = logging.getLogger("tensorflow")
    for old in [f for f in tensorflow.filters if isinstance(f, _RetracingNotice)]:
        tensorflow.removeFilter(old)
    if not debug:
        tensorflow.addFilter(_RetracingNotice())


class _RetracingNotice(logging.Filter):
    """Drops TensorFlow's "triggered tf.function retracing" warning. It counts traces by the traced function's
    code, which every Keras model's predict step shares, so scoring an ensemble or several runs in one process
    warns about one trace per model: nothing a user can or should change."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


class _ConsoleHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a message comes (a redirect, pytest's capture), not the
    stream that happened to be there at setup."""

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _ConsoleFormatter(logging.Formatter):
    """Plain messages; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        # a file name that is not valid UTF-8 (surrogate escapes) would make the console write fail
        text = super().format(record).encode("utf-8", "backslashreplace").decode("utf-8")
        return f"{record.levelname.lower()}: {text}" if record.levelno >= logging.WARNING else text


@contextlib.contextmanager
def native_stderr_filtered(enabled: bool = True) -> Iterator[None]:
    """Hide TensorFlow's C++ start-up lines (oneDNN, CUDA probing, `failed call to cuInit`) while the
    block runs; every other line written to stderr meanwhile is passed on when it ends.

    TensorFlow writes them to file descriptor 2 before absl logging is set up, so TF_CPP_MIN_LOG_LEVEL
    does not hide them; only capturing the descriptor while TensorFlow loads and probes devices does.
    """
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().splitlines(keepends=True) if not _NATIVE_CHATTER.match(line)]
            sys.stderr.write(b"".join(kept).decode(errors="replace"))
            sys.stderr.flush()


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
