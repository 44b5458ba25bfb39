"""Exceptions that separate user mistakes from internal failures.

A :class:`UserError` is reported by the CLI as one line on stderr with exit code 2;
anything else is an internal error (exit code 1).
"""


class UserError(ValueError):
    """A mistake in the user's input: a file, a parameter, a configuration.

    The message is one line that names the problem (the file, column, key or value).
    """


def require(condition: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise UserError(message)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception by the command line so that outputs are cleaned
    up as on Ctrl-C (exit code 143 instead of 130)."""
