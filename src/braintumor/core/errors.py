"""User-facing errors: one line naming the cause and the fix, exit code 2."""

import reprlib

MAX_SHOWN = 120  # characters of a value or an error text quoted in a message; a 10 MB value must not flood it

_SHORT_REPR = reprlib.Repr()  # visits only the first items of each level, so even an alias bomb prints at once
_SHORT_REPR.maxstring = _SHORT_REPR.maxother = 60
_SHORT_REPR.maxlevel = 3


class UserError(Exception):
    """Bad input from the user (config, data, paths, weights).

    The CLI prints ``error: <message>`` on one line and exits with code 2; ``--debug`` adds the
    traceback. Write the message as "<what is wrong>; <how to fix it>", quoting what the user gave
    through ``shown`` or ``clip``.
    """

    exit_code = 2


def clip(text: str) -> str:
    """`text` cut to MAX_SHOWN characters, marked with '...' where it was cut."""
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def shown(value: object) -> str:
    """A value as a message quotes it: its repr, short (long strings and lists are elided inside)."""
    return clip(_SHORT_REPR.repr(value))


def describe(err: BaseException) -> str:
    """The first line of an exception's message (or its type), clipped, for one-line user errors."""
    text = str(err).strip()
    return clip(text.splitlines()[0]) if text else type(err).__name__
