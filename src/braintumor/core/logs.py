"""Progress messages go through `logging` (logger "braintumor"): the console shows them, and a run's
train.log (or an eval folder's eval.log) keeps a copy. Final result lines of the CLI stay prints."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = "braintumor"


def get_logger(name: str) -> logging.Logger:
    """The logger for a module: `get_logger(__name__)`."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


def setup_console(debug: bool = False) -> None:
    """Messages to stdout, plain; --debug adds DEBUG messages. Idempotent."""
    root = logging.getLogger(ROOT)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    if not any(getattr(h, "_braintumor_console", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._braintumor_console = True  # type: ignore[attr-defined]
        root.addHandler(handler)


@contextlib.contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Copy every message of the package into `path` (appending, so a resumed run keeps one log)."""
    root = logging.getLogger(ROOT)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
