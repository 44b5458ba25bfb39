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


def as_path(value, what: str = "path"):
    """``value`` as a :class:`pathlib.Path`; anything but a ``str`` or path-like object (``None``,
    a number, a list) is a one-line :class:`UserError` naming ``what`` and the type given."""
    import os
    import reprlib
    from pathlib import Path

    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise UserError(f"{what} must be a file path (str or pathlib.Path), got "
                    f"{type(value).__name__} {reprlib.repr(value)}")


def whole_number(value, what: str, minimum: int | None = 0) -> int:
    """``value`` as an ``int`` (≥ ``minimum`` unless that is ``None``); a bool, a fraction, a
    string or anything else is a one-line :class:`UserError` naming ``what``."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or int(value) != value \
            or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" ≥ {minimum}"
        raise UserError(f"{what} must be a whole number{bound}, got {value!r}")
    return int(value)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception by the command line so that outputs are cleaned
    up as on Ctrl-C (exit code 143 instead of 130)."""
