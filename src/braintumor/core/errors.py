"""User-facing errors: one line naming the cause and the fix, exit code 2."""


class UserError(Exception):
    """Bad input from the user (config, data, paths, weights).

    The CLI prints ``error: <message>`` on one line and exits with code 2; ``--debug`` adds the
    traceback. Write the message as "<what is wrong>; <how to fix it>".
    """

    exit_code = 2


def describe(err: BaseException) -> str:
    """The first line of an exception's message (or its type), for one-line user errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
