"""Command-line interface: a thin layer over the Python API.

Exit codes: 0 success; 2 user error or an error of the environment (permission denied,
disk full, not enough memory): one line on stderr naming the problem, nothing written;
130 interrupted (Ctrl-C), 143 terminated (SIGTERM): one line, the outputs cleaned up as on
an error; 1 internal error. One module per command group (:mod:`~stormfold.cli.data`,
:mod:`~stormfold.cli.localize`, :mod:`~stormfold.cli.train`, :mod:`~stormfold.cli.run`,
:mod:`~stormfold.cli.postprocess`); in each, a command has an ``_add_<name>`` function that
declares its arguments and a ``_cmd_<name>`` function that calls the API.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import traceback
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

from stormfold import __version__
from stormfold.cli import data, localize, postprocess, run, train
from stormfold.cli.common import Parser
from stormfold.errors import Terminated, UserError

#: The command groups, in the order of ``stormfold --help``.
GROUPS = (data, localize, train, run, postprocess)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="stormfold",
                    description="Super-resolution SMLM: simulate, localize, post-process, evaluate.")
    parser.add_argument("--version", action="version", version=f"stormfold {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for group in GROUPS:
        for add in group.COMMANDS:
            add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stormfold`` command; returns the exit code."""
    _tolerant_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"stormfold {args.command}"
    # One line per warning, named after the command; the API's format comes back after.
    default_format = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest: f"{name}: warning: {message}\n"
    default_unraisable = sys.unraisablehook
    if not os.environ.get("STORMFOLD_DEBUG"):
        # Python ignores errors in finalisers (e.g. of a zip file an interrupt left half
        # written); printed, they would add a traceback to the one-line message.
        sys.unraisablehook = lambda unraisable: None
    try:
        with _sigterm_raises():
            _call(args)
    except UserError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except Terminated as exc:
        print(f"{name}: terminated (SIGTERM){_note(exc)}", file=sys.stderr)
        return 143
    except KeyboardInterrupt as exc:
        print(f"{name}: interrupted{_note(exc)}", file=sys.stderr)
        return 130
    except MemoryError:
        return _out_of_memory(name, _options(parser, args))
    except RuntimeError as exc:
        # torch reports a failed allocation as a RuntimeError, not a MemoryError.
        if "can't allocate memory" not in str(exc) and "out of memory" not in str(exc):
            return _internal_error(name, exc)
        return _out_of_memory(name, _options(parser, args), exc)
    except OSError as exc:
        from stormfold.io.outputs import environment_error, is_environment_error

        if not is_environment_error(exc):
            return _internal_error(name, exc)
        print(f"{name}: error: {environment_error(exc, action='access')}", file=sys.stderr)
        return 2
    except Exception as exc:  # internal error: keep it short unless debugging is asked for
        return _internal_error(name, exc)
    finally:
        warnings.formatwarning = default_format
        sys.unraisablehook = default_unraisable
    return 0


def _call(args: argparse.Namespace) -> None:
    """Run the command. An interrupt that lands inside a library's clean-up (e.g. while numpy
    closes an .npz) can come back as that clean-up's own error: it is still the interrupt."""
    try:
        args.func(args)
        return
    except Exception as exc:
        interrupt = _interrupt_behind(exc)
        if interrupt is None:
            raise
    # Raised outside the handler and not kept in this frame: no reference cycle holds the
    # interrupted objects, so their finalisers run as soon as the interrupt is handled
    # (while :func:`main` still silences their errors).
    try:
        raise interrupt
    finally:
        interrupt = None


def _interrupt_behind(exc: BaseException) -> BaseException | None:
    """The SIGINT/SIGTERM interrupt among the exceptions ``exc`` was raised while handling."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _tolerant_streams() -> None:
    """Let stdout/stderr write any text: on a terminal or pipe whose encoding lacks a
    character (``PYTHONIOENCODING=ascii``) it is escaped, not an error after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a closed or detached stream: nothing to print to
                pass


def _options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> set[str]:
    """The option strings (``--batch-frames``, ...) that the command in ``args`` accepts,
    following nested commands (``train deepstorm``)."""
    options: set[str] = set()
    while parser is not None:
        chosen = None
        for action in parser._actions:
            options.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(args, action.dest, None) or "")
        parser = chosen
    return options


#: Commands whose input is a localization table, not a movie (for the out-of-memory hint).
_TABLE_COMMANDS = {"drift", "link", "filter", "cluster", "render", "frc", "postprocess",
                   "convert", "evaluate"}


def _out_of_memory(name: str, options: set[str], exc: BaseException | None = None) -> int:
    """The one line of a failed allocation (with its size when torch gave it); the hint names
    only options that this command has."""
    asked = re.search(r"allocate (\d+) bytes", str(exc or ""))
    size = f" ({int(asked.group(1)) / 1e9:.3g} GB asked at once)" if asked else ""
    hints = []
    if "--batch-frames" in options:
        hints.append("fewer frames per batch, e.g. --batch-frames")
    if "--batch-size" in options:
        hints.append("fewer patches per step, e.g. --batch-size")
    if "--eps-nm" in options:
        hints.append("a smaller --eps-nm (DBSCAN holds every pair of neighbours within it)")
    command = name.split()[-1]
    hints.append("a smaller table or fewer localizations (an ROI, a filter)"
                 if command in _TABLE_COMMANDS else
                 "a smaller movie or smaller sizes in the configuration")
    print(f"{name}: error: not enough memory{size} (try {', '.join(hints)})", file=sys.stderr)
    return 2


def _internal_error(name: str, exc: BaseException) -> int:
    if os.environ.get("STORMFOLD_DEBUG"):
        traceback.print_exception(type(exc), exc, exc.__traceback__)
    print(f"{name}: internal error: {type(exc).__name__}: {exc} "
          f"(set STORMFOLD_DEBUG=1 for the traceback)", file=sys.stderr)
    return 1


def _note(exc: BaseException) -> str:
    """What an interrupted command left (set by the command as ``exc.stormfold_note``)."""
    note = getattr(exc, "stormfold_note", None)
    return f": {note}" if note else ": nothing was written"


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`~stormfold.errors.Terminated` while the command runs, so the
    same clean-up as for Ctrl-C runs; a second SIGTERM during the clean-up is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
