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
import warnings
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


# --------------------------------------------------------------------------- evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compare localizations with the ground truth")
    p.add_argument("--truth", type=Path, required=True,
                   help="ground-truth table (ThunderSTORM .csv or Picasso .hdf5)")
    p.add_argument("--locs", type=Path, required=True,
                   help="localization table (ThunderSTORM .csv or Picasso .hdf5)")
    p.add_argument("--tolerance", type=_float_list, default=[50.0, 100.0, 250.0],
                   metavar="NM[,NM...]", help="matching radii in nm (default 50,100,250)")
    p.add_argument("--matching", choices=["hungarian", "greedy"], default="hungarian",
                   help="optimal assignment (default) or DECODE-style greedy")
    p.add_argument("--border-nm", type=float, default=0.0,
                   help="exclude points closer than this to the image edge (challenge: 450)")
    p.add_argument("--fov-nm", type=_float_list, default=None, metavar="W,H",
                   help="field of view in nm for --border-nm (default: from simulation.yaml "
                        "next to the truth file)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT",
                   help="also write the metrics and parameters to this JSON file")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from stormfold.evaluate import evaluate, format_table
    from stormfold.evaluate.report import (SIMULATION_YAML, evaluation_report,
                                           fov_from_simulation_yaml, report_json)
    from stormfold.io.atomic import same_file, write_text
    from stormfold.io.tables import read_table

    for label, path in (("truth", args.truth), ("localization", args.locs)):
        if not path.is_file():
            raise UserError(f"{label} file not found: {path}")
    if args.json is not None and any(same_file(args.json, p) for p in (args.truth, args.locs)):
        raise UserError(f"--json {args.json} would overwrite an input file")
    fov = args.fov_nm
    if fov is not None and len(fov) != 2:
        raise UserError(f"--fov-nm expects two numbers W,H in nm, got {len(fov)}")
    if fov is None and args.border_nm > 0:
        sim_yaml = args.truth.parent / SIMULATION_YAML
        fov = fov_from_simulation_yaml(sim_yaml)
        if fov is None:
            raise UserError(f"--border-nm needs the field of view: give --fov-nm W,H "
                            f"(no {sim_yaml} found)")
    truth = read_table(args.truth)
    locs = read_table(args.locs)
    metrics = evaluate(truth, locs, tolerances_nm=args.tolerance, method=args.matching,
                       border_nm=args.border_nm, fov_nm=fov)
    print(format_table(metrics))
    if args.json is not None:
        report = evaluation_report(metrics, args.truth, args.locs, args.tolerance,
                                   args.matching, args.border_nm, fov)
        write_text(args.json, report_json(report))
        print(f"wrote {args.json}")


# --------------------------------------------------------------------------- convert
def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert localizations between ThunderSTORM CSV "
                                       "and Picasso HDF5")
    p.add_argument("input", type=Path, metavar="IN",
                   help="localization table (.csv ThunderSTORM or .hdf5/.h5 Picasso)")
    p.add_argument("output", type=Path, metavar="OUT",
                   help="output table; the format follows the extension")
    p.add_argument("--pixel-size", type=_positive_float, default=None, metavar="NM",
                   help="camera pixel size in nm (needed for Picasso output unless a "
                        "simulation.yaml/run.yaml next to the CSV gives it; overrides a "
                        "Picasso input's YAML)")
    p.add_argument("--width", type=_positive_int, default=None, metavar="PX",
                   help="image width in pixels for Picasso output")
    p.add_argument("--height", type=_positive_int, default=None, metavar="PX",
                   help="image height in pixels for Picasso output")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> None:
    from stormfold.io.tables import convert_table

    table = convert_table(args.input, args.output, pixel_size_nm=args.pixel_size,
                          width_px=args.width, height_px=args.height)
    print(f"wrote {args.output} ({len(table)} localizations)")


# --------------------------------------------------------------------------- localize
def _add_camera_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("camera (ADU → photons; default: movie metadata, else the "
                             "model's training camera)")
    g.add_argument("--camera", type=Path, default=None, metavar="CAMERA.yaml",
                   help="camera parameters (or a simulation.yaml with a camera section)")
    g.add_argument("--baseline", type=float, default=None, metavar="ADU", help="camera offset")
    g.add_argument("--e-per-adu", type=_positive_float, default=None, metavar="X",
                   help="electrons per ADU")
    g.add_argument("--em-gain", type=_positive_float, default=None, metavar="G", help="EM gain")
    g.add_argument("--qe", type=_positive_float, default=None, metavar="Q", help="quantum efficiency")


def _camera_overrides(args: argparse.Namespace):
    from stormfold.localize.runner import CameraOverrides

    if args.camera is not None and not args.camera.is_file():
        raise UserError(f"camera file not found: {args.camera}")
    return CameraOverrides(args.camera, args.baseline, args.e_per_adu, args.em_gain, args.qe)


def _add_localize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("localize", help="localize emitters in a movie with a trained model "
                                        "or the classical engine")
    p.add_argument("movie", type=Path, metavar="MOVIE",
                   help="TIFF stack, folder of TIFFs, or Picasso .raw")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", default=None, metavar="MODEL_DIR|builtin:NAME",
                       help="trained model (its model.yaml chooses the engine)")
    which.add_argument("--engine", default=None, metavar="NAME",
                       help="model-free engine: classic (single-emitter MLE)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR", help="output folder")
    p.add_argument("--pixel-size", type=_positive_float, default=None, metavar="NM",
                   help="camera pixel size in nm (default: from the movie's metadata)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="extraction threshold (default: the model's calibrated value)")
    p.add_argument("--batch-frames", type=_positive_int, default=16, metavar="N",
                   help="frames per batch (memory ∝ N × frame size)")
    p.add_argument("--frames", default=None, metavar="A:B", help="frame range, 0-based, B exclusive")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="engine-specific option (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_camera_options(p)
    p.set_defaults(func=_cmd_localize)


def _frame_range(text: str | None) -> tuple[int, int | None]:
    if text is None:
        return 0, None
    try:
        a, b = text.split(":")
        return (int(a) if a else 0), (int(b) if b else None)
    except ValueError:
        raise UserError(f"--frames expects A:B (0-based, B exclusive), got {text!r}") from None


def _cmd_localize(args: argparse.Namespace) -> None:
    from stormfold.config import parse_overrides
    from stormfold.device import get_device
    from stormfold.io.movie import open_movie
    from stormfold.localize.registry import load_engine
    from stormfold.localize.runner import command_line, localize_movie

    start, stop = _frame_range(args.frames)
    overrides = _camera_overrides(args)
    device = get_device(args.device)
    with open_movie(args.movie, pixel_size_nm=args.pixel_size) as movie:
        engine = load_engine(model=args.model, engine=args.engine, device=device,
                             threshold=args.threshold, options=parse_overrides(args.options))
        result = localize_movie(movie, engine, args.out, camera=overrides,
                                batch_frames=args.batch_frames, start=start, stop=stop,
                                progress=not args.quiet, command=command_line())
    t = result.run["timing"]
    print(f"{result.run['n_localizations']} localizations in {result.run['n_frames']} frames "
          f"({t['frames_per_s']:.1f} frames/s); wrote {args.out}/")


# --------------------------------------------------------------------------- train
def _add_train_common(p: argparse.ArgumentParser) -> None:
    """Options every ``stormfold train ENGINE`` shares."""
    p.add_argument("--preset", default=None, help="simulation preset of the training data")
    p.add_argument("--config", type=Path, default=None, metavar="FILE.yaml",
                   help="training configuration (simulation and schedule) as YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one configuration key (repeatable)")
    p.add_argument("--seed", type=_nonneg_int, default=None, help="random seed")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR", help="model folder")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint in MODEL_DIR")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# Each engine adds its ``stormfold train ENGINE`` parser here (see _add_train).
_TRAIN_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on simulated (or given) data")
    engines = p.add_subparsers(dest="engine", metavar="ENGINE", parser_class=_Parser)
    engines.required = True
    for add in _TRAIN_COMMANDS:
        add(engines)


# --------------------------------------------------------------------------- main
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_simulate,
    _add_evaluate,
    _add_convert,
    _add_localize,
    _add_train,
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
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
