"""Command-line interface: a thin layer over the Python API.

Exit codes: 0 success, 2 user error (one line on stderr naming the problem, nothing
written), 1 internal error. Each command has an ``_add_<name>`` function that declares
its arguments and a ``_cmd_<name>`` function that calls the API.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

from stormfold import __version__
from stormfold.errors import UserError


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> None:  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


# --------------------------------------------------------------------------- simulate
def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate an SMLM movie with ground truth")
    p.add_argument("--preset", default=None,
                   help="zerocost, thunderstorm, challenge2016 or sofi (default: zerocost)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML file of simulation parameters (e.g. from stormfold calibrate)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter, e.g. --set camera.em_gain=100 (repeatable)")
    p.add_argument("--frames", type=_positive_int, default=None, help="number of frames")
    p.add_argument("--seed", type=_nonneg_int, default=None, help="random seed (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> None:
    from stormfold.simulate import build_config, simulate_to_folder

    config = build_config(preset=args.preset, config_file=args.config,
                          overrides=args.overrides, n_frames=args.frames, seed=args.seed)
    out = simulate_to_folder(config, args.out, progress=not args.quiet)
    print(f"wrote {out / 'movie.tif'}, {out / 'truth.csv'}, {out / 'simulation.yaml'}")


# --------------------------------------------------------------------------- main
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_simulate,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="stormfold",
                     description="Super-resolution SMLM: simulate, localize, post-process, evaluate.")
    parser.add_argument("--version", action="version", version=f"stormfold {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stormfold`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
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
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
