"""Command-line interface: a thin layer over the Python API.

Exit codes: 0 success, 2 user error (one line on stderr naming the problem, nothing
written), 1 internal error. One module per command group (:mod:`~stormfold.cli.data`,
:mod:`~stormfold.cli.localize`, :mod:`~stormfold.cli.train`, :mod:`~stormfold.cli.run`,
:mod:`~stormfold.cli.postprocess`); in each, a command has an ``_add_<name>`` function that
declares its arguments and a ``_cmd_<name>`` function that calls the API.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from typing import Sequence

from stormfold import __version__
from stormfold.cli import data, localize, postprocess, run, train
from stormfold.cli.common import Parser
from stormfold.errors import UserError

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
    parser = build_parser()
    args = parser.parse_args(argv)
    # One line per warning, named after the command; the API's format comes back after.
    default_format = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest: (
        f"stormfold {args.command}: warning: {message}\n")
    try:
        args.func(args)
    except UserError as exc:
        print(f"stormfold {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"stormfold {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # internal error: keep it short unless debugging is asked for
        if os.environ.get("STORMFOLD_DEBUG"):
            traceback.print_exc()
        print(f"stormfold {args.command}: internal error: {type(exc).__name__}: {exc} "
              f"(set STORMFOLD_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = default_format
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
