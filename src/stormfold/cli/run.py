"""``stormfold run`` (the main job) and ``stormfold demo``."""
from __future__ import annotations

import argparse
from pathlib import Path

from stormfold.cli.common import output_path, positive_int


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the main job: movie → localizations, images, report")
    p.add_argument("config", type=Path, metavar="CONFIG.yaml", help="run configuration")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run the per-chunk inference on this Dask scheduler")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one configuration key (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no console log")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> None:
    from stormfold.pipeline import load_run_config, run

    from stormfold.cli.common import command_line, repairs_line

    extra = list(args.overrides) + ([f"scheduler={args.scheduler}"] if args.scheduler else [])
    config = load_run_config(args.config, extra)
    result = run(config, resume=args.resume, quiet=args.quiet, protect=(args.config,),
                 command_line=command_line())
    report = result.output / "report.html"
    print(f"{len(result.locs)} localizations{repairs_line(result.meta.get('nan_repairs'))}; "
          f"outputs in {result.output}/" + (f"; report: {report}" if config.report else ""))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulate a movie, run both shipped engines, write a report")
    p.add_argument("--out", type=output_path, required=True, help="output folder")
    p.add_argument("--frames", type=positive_int, default=200, help="frames to simulate")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no console log")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> None:
    from stormfold.demo import run_demo

    report = run_demo(args.out, n_frames=args.frames, quiet=args.quiet)
    print(f"report: {report.resolve()}")


#: ``add(subparsers)`` of each command, in the order of ``stormfold --help``.
COMMANDS = [_add_run, _add_demo]
