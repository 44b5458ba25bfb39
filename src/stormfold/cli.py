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


# --------------------------------------------------------------------------- train deepstorm
def _add_train_deepstorm(engines: argparse._SubParsersAction) -> None:
    p = engines.add_parser("deepstorm", help="train a Deep-STORM model on simulated patches "
                                             "(or on --movie/--truth)")
    _add_train_common(p)
    p.add_argument("--movie", type=Path, default=None, metavar="M.tif",
                   help="train on this movie instead of simulating (needs --truth)")
    p.add_argument("--truth", type=Path, default=None, metavar="T.csv",
                   help="ground truth of --movie (ThunderSTORM .csv or Picasso .hdf5)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="epochs (default 100)")
    p.add_argument("--patches", type=_positive_int, default=None,
                   help="patches drawn, 70%% training / 30%% validation (default 10000)")
    p.add_argument("--batch-size", type=_positive_int, default=None, help="patches per step (16)")
    p.add_argument("--lr", type=_positive_float, default=None, help="Adam learning rate (1e-3)")
    p.set_defaults(func=_cmd_train_deepstorm)


def _cmd_train_deepstorm(args: argparse.Namespace) -> None:
    from stormfold.deepstorm.train import train_from_cli
    from stormfold.device import get_device
    from stormfold.localize.runner import command_line

    result = train_from_cli(args.out, preset=args.preset, config_file=args.config,
                            overrides=args.overrides, seed=args.seed, movie=args.movie,
                            truth=args.truth, epochs=args.epochs, n_patches=args.patches,
                            batch_size=args.batch_size, lr=args.lr, resume=args.resume,
                            device=get_device(args.device), progress=not args.quiet,
                            command=command_line())
    meta = result.meta
    print(f"best validation loss {meta['validation_loss']:.4g} (epoch "
          f"{meta['training']['best_epoch']}); threshold {meta['threshold']:.4g} "
          f"(Jaccard {meta['calibration']['jaccard']:.3f} at "
          f"{meta['calibration']['tolerance_nm']:g} nm); wrote {args.out}/")


# --------------------------------------------------------------------------- train unrolled
def _add_train_unrolled(engines: argparse._SubParsersAction) -> None:
    p = engines.add_parser("unrolled", help="learn the parameters of the unrolled accelerated "
                                            "projected gradient (algorithmic unfolding)")
    _add_train_common(p)
    p.add_argument("--movie", type=Path, default=None, metavar="M.tif",
                   help="train on this movie instead of simulating (needs --truth)")
    p.add_argument("--truth", type=Path, default=None, metavar="T.csv",
                   help="ground truth of --movie (ThunderSTORM .csv or Picasso .hdf5)")
    p.add_argument("--fidelity", choices=["ls", "kl"], default=None,
                   help="least squares (default) or Kullback-Leibler data term")
    p.add_argument("--loss", choices=["reconstruction", "localization"], default=None,
                   help="upper-level loss: (13) reconstruction or (14) localization (default)")
    p.add_argument("--iterations", type=_positive_int, default=None, metavar="K",
                   help="unrolled iterations K (default 100)")
    p.add_argument("--outer-iterations", type=_positive_int, default=None, metavar="N",
                   help="upper-level (SGP/Adam) iterations (default 50)")
    p.add_argument("--optimizer", choices=["sgp", "adam"], default=None,
                   help="upper-level optimiser: scaled gradient projection (default) or "
                        "projected Adam")
    p.add_argument("--frames", type=_positive_int, default=None, metavar="N",
                   help="training frames, all used in every iteration (default 16)")
    p.set_defaults(func=_cmd_train_unrolled)


def _cmd_train_unrolled(args: argparse.Namespace) -> None:
    from stormfold.config import merge, parse_overrides
    from stormfold.device import get_device
    from stormfold.localize.runner import command_line
    from stormfold.unrolled.train import CHECKPOINT_DIR, load_train_config, train_unrolled

    if (args.movie is None) != (args.truth is None):
        raise UserError("give both --movie and --truth to train on an existing movie")
    flags = {"seed": args.seed,
             "data": {"preset": args.preset, "n_frames": args.frames,
                      "movie": None if args.movie is None else str(args.movie),
                      "truth": None if args.truth is None else str(args.truth)},
             "solver": {"fidelity": args.fidelity, "iterations": args.iterations},
             "loss": {"kind": args.loss},
             "optim": {"outer_iterations": args.outer_iterations, "optimizer": args.optimizer}}
    flags = {k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
             for k, v in flags.items() if v is not None}
    config = load_train_config(args.config, merge(parse_overrides(args.overrides), flags))
    if not args.resume and (args.out / CHECKPOINT_DIR).exists():
        raise UserError(f"{args.out} already holds a training run: use --resume to continue it "
                        f"or choose another --out")
    meta = train_unrolled(config, args.out, resume=args.resume, device=get_device(args.device),
                          progress=not args.quiet, command=command_line())
    t = meta["training"]
    print(f"{t['loss']} loss {t['initial_loss']:.4g} → {t['final_loss']:.4g} in "
          f"{t['outer_iterations_done']} outer iterations ({t['evaluations']} evaluations, "
          f"{t['seconds']:.0f} s); rho {meta['theta']['rho']:.4g}, tau "
          f"{meta['theta']['tau']:.4g}; wrote {args.out}/")


# --------------------------------------------------------------------------- train sofi
def _add_train_sofi(engines: argparse._SubParsersAction) -> None:
    p = engines.add_parser("sofi", help="semi-blind SOFI deconvolution: learn the PSF width, "
                                        "rho and the step sizes from simulated blinking stacks")
    _add_train_common(p)
    p.add_argument("--patterns", type=_positive_int, default=None, metavar="N",
                   help="training patterns, one simulated movie each (default 20)")
    p.add_argument("--frames", type=_positive_int, default=None, metavar="T",
                   help="frames per pattern (default: the preset's, 500 for sofi)")
    p.add_argument("--lag", type=int, choices=[0, 1], default=None,
                   help="cumulant time lag: 0 = variance (default), 1 = lag-1 (no white noise)")
    p.add_argument("--iterations", type=_positive_int, default=None, metavar="K",
                   help="unrolled iterations K (default 100)")
    p.add_argument("--outer-iterations", type=_positive_int, default=None, metavar="N",
                   help="SGP iterations learning sigma, rho, alpha (default 30)")
    p.add_argument("--sigma-init", type=_positive_float, default=None, metavar="NM",
                   help="initial PSF sigma guess in nm (default: the simulation's sigma)")
    p.add_argument("--no-tau", action="store_true",
                   help="skip stage 2 (learning the binarisation threshold by loss 14)")
    p.set_defaults(func=_cmd_train_sofi)


def _cmd_train_sofi(args: argparse.Namespace) -> None:
    from stormfold.config import merge, parse_overrides
    from stormfold.device import get_device
    from stormfold.localize.runner import command_line
    from stormfold.sofi.train import CHECKPOINT_DIR, load_sofi_train_config, train_sofi

    flags = {"seed": args.seed,
             "data": {"preset": args.preset, "n_patterns": args.patterns,
                      "n_frames": args.frames, "lag": args.lag},
             "solver": {"iterations": args.iterations, "sigma_init_nm": args.sigma_init},
             "optim": {"outer_iterations": args.outer_iterations},
             "tau": {"learn": False if args.no_tau else None}}
    flags = {k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
             for k, v in flags.items() if v is not None}
    config = load_sofi_train_config(args.config, merge(parse_overrides(args.overrides), flags))
    if not args.resume and (args.out / CHECKPOINT_DIR).exists():
        raise UserError(f"{args.out} already holds a training run: use --resume to continue it "
                        f"or choose another --out")
    meta = train_sofi(config, args.out, resume=args.resume, device=get_device(args.device),
                      progress=not args.quiet, command=command_line())
    t = meta["training"]
    print(f"sigma {meta['sigma_init_nm']:.1f} → {meta['sigma_nm']:.1f} nm (simulation: "
          f"{', '.join(f'{s:g}' for s in t['simulation_sigma_nm'])} nm); rho "
          f"{meta['theta']['rho']:.4g}, tau {meta['tau']:.3g}; loss {t['initial_loss']:.4g} → "
          f"{t['final_loss']:.4g} in {t['outer_iterations_done']} outer iterations "
          f"({t['seconds']['total']:.0f} s); wrote {args.out}/")


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
_TRAIN_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train_deepstorm,
    _add_train_unrolled,
    _add_train_sofi,
]


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on simulated (or given) data")
    engines = p.add_subparsers(dest="engine", metavar="ENGINE", parser_class=_Parser)
    engines.required = True
    for add in _TRAIN_COMMANDS:
        add(engines)


# --------------------------------------------------------------------------- run, demo
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

    extra = list(args.overrides) + ([f"scheduler={args.scheduler}"] if args.scheduler else [])
    config = load_run_config(args.config, extra)
    result = run(config, resume=args.resume, quiet=args.quiet)
    report = result.output / "report.html"
    print(f"{len(result.locs)} localizations; outputs in {result.output}/"
          + (f"; report: {report}" if config.report else ""))


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="simulate a movie, run both shipped engines, write a report")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--frames", type=_positive_int, default=200, help="frames to simulate")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no console log")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> None:
    from stormfold.demo import run_demo

    report = run_demo(args.out, n_frames=args.frames, quiet=args.quiet)
    print(f"report: {report.resolve()}")


# --------------------------------------------------------------------------- post-processing
def _add_pp_io(p: argparse.ArgumentParser, out_help: str) -> None:
    """Input, output and camera pixel size shared by the post-processing commands."""
    p.add_argument("input", type=Path, metavar="IN",
                   help="localization table (.csv ThunderSTORM or .hdf5 Picasso)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT", help=out_help)
    p.add_argument("--pixel-size", type=_positive_float, default=None, metavar="NM",
                   help="camera pixel size in nm, for Picasso files whose sidecar (or the "
                        "simulation.yaml/run.yaml next to a CSV) lacks it")


def _pp_params(args: argparse.Namespace, names: Sequence[str]) -> dict:
    """The options the user gave (the rest keep the step's defaults)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _pp_run(step: str, args: argparse.Namespace, params: dict) -> None:
    from stormfold.postprocess.chain import run_command

    result, written = run_command(step, args.input, args.out, params, args.pixel_size)
    print(f"{result.summary}; wrote {', '.join(str(p) for p in written)}")


_TABLE_OUT = "output table (.csv or .hdf5; never the input); its record goes to OUT's .yaml"


def _add_drift(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drift", help="estimate and correct lateral drift (RCC or fiducials)")
    _add_pp_io(p, _TABLE_OUT + "; also writes OUT_drift.csv (frame, dx_nm, dy_nm) and "
                              "OUT_drift.png")
    p.add_argument("--method", choices=["rcc", "fiducials"], default=None,
                   help="redundant cross-correlation (default) or fiducial tracks")
    p.add_argument("--bins", type=_positive_int, default=None, metavar="N",
                   help="RCC: number of time bins (default 10)")
    p.add_argument("--pixel-nm", type=_positive_float, default=None, metavar="P",
                   help="RCC: pixel size of the bin renderings in nm (default 20)")
    p.add_argument("--max-shift-nm", type=_positive_float, default=None, metavar="NM",
                   help="RCC: largest drift between two bins searched (default: any)")
    p.add_argument("--max-residual-nm", type=_positive_float, default=None, metavar="NM",
                   help="RCC: reject pairs with a larger residual (default 2 × pixel)")
    p.add_argument("--radius-nm", type=_positive_float, default=None, metavar="R",
                   help="fiducials: linking radius in nm (default 50)")
    p.add_argument("--max-dark", type=_nonneg_int, default=None, metavar="N",
                   help="fiducials: frames a fiducial may be missed (default 2)")
    p.add_argument("--min-fraction", type=_positive_float, default=None, metavar="F",
                   help="fiducials: tracks present in at least this fraction of the frames "
                        "(default 0.5)")
    p.add_argument("--smooth-frames", type=_positive_int, default=None, metavar="N",
                   help="fiducials: moving-average window in frames (default 1: none)")
    p.set_defaults(func=_cmd_drift)


def _cmd_drift(args: argparse.Namespace) -> None:
    params = _pp_params(args, ["method", "bins", "pixel_nm", "max_shift_nm", "max_residual_nm",
                               "radius_nm", "max_dark", "min_fraction", "smooth_frames"])
    _pp_run("drift", args, params)


def _add_link(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("link", help="merge detections of one molecule in consecutive frames")
    _add_pp_io(p, _TABLE_OUT)
    p.add_argument("--radius-nm", type=_positive_float, default=None, metavar="R",
                   help="largest distance between linked detections in nm (default 50)")
    p.add_argument("--max-dark", type=_nonneg_int, default=None, metavar="N",
                   help="frames a molecule may be missed and still be linked (default 1)")
    p.add_argument("--weight", choices=["photons", "confidence", "none"], default=None,
                   help="weights of the merged position (default photons)")
    p.set_defaults(func=_cmd_link)


def _cmd_link(args: argparse.Namespace) -> None:
    _pp_run("link", args, _pp_params(args, ["radius_nm", "max_dark", "weight"]))


def _add_filter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="keep localizations by expression, ROI or local density")
    _add_pp_io(p, _TABLE_OUT)
    p.add_argument("--expr", default=None, metavar="EXPR",
                   help='condition over columns, e.g. "confidence > 0.3 and photons > 500"')
    p.add_argument("--roi", type=_float_list, default=None, metavar="X0,Y0,X1,Y1",
                   help="keep x0 ≤ x < x1, y0 ≤ y < y1 (nm)")
    p.add_argument("--min-neighbours", type=_nonneg_int, default=None, metavar="N",
                   help="keep localizations with at least N others within --radius-nm")
    p.add_argument("--radius-nm", type=_positive_float, default=None, metavar="R",
                   help="radius of the density filter in nm (default 50)")
    p.set_defaults(func=_cmd_filter)


def _cmd_filter(args: argparse.Namespace) -> None:
    params = _pp_params(args, ["expr", "roi", "min_neighbours", "radius_nm"])
    if "roi" in params and len(params["roi"]) != 4:
        raise UserError(f"--roi expects four numbers x0,y0,x1,y1 in nm, got {len(params['roi'])}")
    _pp_run("filter", args, params)


def _add_cluster(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="DBSCAN clustering with a per-cluster summary")
    _add_pp_io(p, _TABLE_OUT + " (with a cluster column, -1 = noise); the summary goes to "
                              "OUT_clusters.csv")
    p.add_argument("--eps-nm", type=_positive_float, required=True, metavar="E",
                   help="DBSCAN neighbourhood radius in nm")
    p.add_argument("--min-samples", type=_positive_int, required=True, metavar="M",
                   help="localizations within eps (the point included) that make a core point")
    p.set_defaults(func=_cmd_cluster)


def _cmd_cluster(args: argparse.Namespace) -> None:
    _pp_run("cluster", args, _pp_params(args, ["eps_nm", "min_samples"]))


def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render localizations as an image (TIFF or PNG)")
    _add_pp_io(p, "image: .tif (float32, pixel size in its tags) or .png (scale bar)")
    p.add_argument("--pixel-nm", type=_positive_float, default=None, metavar="P",
                   help="pixel size of the image in nm (default 10)")
    p.add_argument("--method", choices=["histogram", "gaussian"], default=None,
                   help="histogram (default) or Gaussian rendering")
    sigma = p.add_mutually_exclusive_group()
    sigma.add_argument("--sigma-nm", type=_positive_float, default=None, metavar="S",
                       help="Gaussian σ in nm (default 20; implies --method gaussian)")
    sigma.add_argument("--sigma", choices=["uncertainty"], default=None,
                       help="Gaussian σ of each localization = its uncertainty_nm")
    p.set_defaults(func=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> None:
    params = _pp_params(args, ["pixel_nm", "method", "sigma_nm", "sigma"])
    if "sigma_nm" in params or "sigma" in params:  # a σ implies Gaussian rendering
        if args.method == "histogram":
            raise UserError("--sigma-nm/--sigma apply to --method gaussian, not histogram")
        params["method"] = "gaussian"
    _pp_run("render", args, params)


def _add_frc(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("frc", help="Fourier ring correlation resolution")
    _add_pp_io(p, "output folder: frc.png (curve), frc.csv, frc.yaml (the resolution)")
    p.add_argument("--pixel-nm", type=_positive_float, default=None, metavar="P",
                   help="rendering pixel size in nm (default 5)")
    p.add_argument("--split", choices=["random", "blocks"], default=None,
                   help="random halves (default) or alternating blocks of frames")
    p.add_argument("--block-frames", type=_positive_int, default=None, metavar="B",
                   help="frames per block for --split blocks (default 100)")
    p.add_argument("--seed", type=_nonneg_int, default=None, help="seed of the random split (0)")
    p.set_defaults(func=_cmd_frc)


def _cmd_frc(args: argparse.Namespace) -> None:
    _pp_run("frc", args, _pp_params(args, ["pixel_nm", "split", "block_frames", "seed"]))


def _add_postprocess(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("postprocess", help="run several post-processing steps in a row")
    _add_pp_io(p, "output folder: postprocessed.csv|.hdf5, postprocess.yaml and the steps' "
                  "files")
    p.add_argument("--steps", default=None, metavar="S1,S2,...",
                   help="steps in order: drift, link, filter, cluster, render, frc "
                        "(default: 'steps' of --config)")
    p.add_argument("--config", type=Path, default=None, metavar="F.yaml",
                   help="parameters: one section per step (see README)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_postprocess)


def _cmd_postprocess(args: argparse.Namespace) -> None:
    from stormfold.postprocess.chain import postprocess_file

    result, written = postprocess_file(args.input, args.out, args.steps, args.config,
                                       args.pixel_size, progress=not args.quiet)
    for line in result.log.values():
        print(line)
    print(f"wrote {len(written)} files to {args.out}/")


# --------------------------------------------------------------------------- calibrate
def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="estimate simulation parameters (camera, PSF, photons, "
                                         "density) from a movie")
    p.add_argument("movie", type=Path, metavar="MOVIE",
                   help="raw movie in ADU: TIFF stack, folder of TIFFs, or Picasso .raw")
    p.add_argument("--out", type=Path, required=True, metavar="CALIB_DIR",
                   help="output folder: simulation.yaml, calibration.html, calibration.png")
    p.add_argument("--roi", default=None, metavar="x0,y0,x1,y1",
                   help="analysed region in pixels (x along columns, end exclusive)")
    p.add_argument("--frames", default=None, metavar="A:B",
                   help="frame range, 0-based, B exclusive (default: all)")
    p.add_argument("--pixel-size", type=_positive_float, default=None, metavar="NM",
                   help="camera pixel size in nm (default: from the movie's metadata)")
    p.add_argument("--emccd", action="store_true",
                   help="EMCCD camera: excess-noise factor 2 (else the gain comes out as 2× and "
                        "photons as ½, the ZeroCostDL4Mic correction)")
    p.add_argument("--em-gain", type=_positive_float, default=100.0, metavar="G",
                   help="EM gain written to simulation.yaml with --emccd (does not change the "
                        "statistics; default 100)")
    p.add_argument("--qe", type=_positive_float, default=1.0, metavar="Q",
                   help="quantum efficiency: photons are reported before QE (default 1)")
    p.add_argument("--baseline", type=float, default=None, metavar="ADU",
                   help="known camera offset (instead of estimating it)")
    p.add_argument("--e-per-adu", type=_positive_float, default=None, metavar="X",
                   help="known electrons per ADU instead of the mean–variance estimate (with "
                        "--emccd give the true --em-gain too: g = G / X ADU per photo-electron)")
    p.add_argument("--threshold", type=_positive_float, default=5.0, metavar="T",
                   help="detection threshold in multiples of the background noise (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from stormfold.calibrate import ScanSettings, calibrate, parse_roi
    from stormfold.io.movie import open_movie
    from stormfold.localize.runner import command_line

    start, stop = _frame_range(args.frames)
    with open_movie(args.movie, pixel_size_nm=args.pixel_size) as movie:
        roi = parse_roi(args.roi, movie.shape) if args.roi is not None else None
        result = calibrate(movie, args.out, roi=roi, start=start, stop=stop, emccd=args.emccd,
                           qe=args.qe, em_gain=args.em_gain, baseline_adu=args.baseline,
                           e_per_adu=args.e_per_adu,
                           settings=ScanSettings(threshold=args.threshold),
                           progress=not args.quiet, command=command_line())
    cam, em = result.camera, result.emitters
    print(f"baseline {cam.baseline_adu:.1f} ADU, {cam.adu_per_e:.4g} ADU/e-, read noise "
          f"{cam.read_noise_adu:.3g} ADU, background {result.simulation['background']['photons']:.3g} "
          f"photons; sigma {em.sigma_nm:.1f} nm, {em.photons_mean:.0f} +- {em.photons_std:.0f} "
          f"photons, {em.density_per_um2:.3g}/um2 (counted: {em.density_counted_per_um2:.3g}, a "
          f"lower bound)")
    for note in result.provenance.get("notes", []):
        print(f"note: {note}")
    print(f"wrote {args.out / 'simulation.yaml'}, calibration.html, calibration.png")


# --------------------------------------------------------------------------- sofi
def _add_sofi(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sofi", help="SOFI cumulant image of a movie (and its semi-blind "
                                    "deconvolution with --model)")
    p.add_argument("movie", type=Path, metavar="MOVIE",
                   help="TIFF stack, folder of TIFFs, or Picasso .raw (ADU)")
    p.add_argument("--out", type=Path, required=True, metavar="OUT_DIR",
                   help="output folder: sofi.tif, mean.tif, sofi.yaml (+ reconstruction.tif, "
                        "reconstruction_binary.tif, localizations.csv with --model)")
    p.add_argument("--order", type=int, default=2, metavar="N",
                   help="cumulant order (only 2 is implemented)")
    p.add_argument("--lag", type=int, choices=[0, 1], default=None,
                   help="time lag: 0 = variance (default), 1 = removes temporally white noise "
                        "(default with --model: the model's)")
    p.add_argument("--model", default=None, metavar="MODEL_DIR|builtin:NAME",
                   help="trained SOFI model (stormfold train sofi): also reconstruct")
    p.add_argument("--pixel-size", type=_positive_float, default=None, metavar="NM",
                   help="camera pixel size in nm (default: from the movie's metadata)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="binarisation threshold in units of the model's variance scale "
                        "(default: the learned tau)")
    p.add_argument("--no-binary", action="store_true",
                   help="do not write reconstruction_binary.tif")
    p.add_argument("--batch-frames", type=_positive_int, default=256, metavar="N",
                   help="frames read at once (memory ∝ N × frame size)")
    p.add_argument("--frames", default=None, metavar="A:B", help="frame range, 0-based, B exclusive")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_camera_options(p)
    p.set_defaults(func=_cmd_sofi)


def _cmd_sofi(args: argparse.Namespace) -> None:
    from stormfold.device import get_device
    from stormfold.localize.runner import command_line
    from stormfold.sofi.run import run_sofi
    from stormfold.sofi.statistics import check_order_lag

    check_order_lag(args.order, 0 if args.lag is None else args.lag)
    start, stop = _frame_range(args.frames)
    record = run_sofi(args.movie, args.out, order=args.order, lag=args.lag, model=args.model,
                      camera=_camera_overrides(args), pixel_size_nm=args.pixel_size,
                      batch_frames=args.batch_frames, start=start, stop=stop,
                      threshold=args.threshold, binarise=not args.no_binary,
                      device=get_device(args.device), progress=not args.quiet,
                      command=command_line())
    line = (f"lag-{record['lag']} cumulant of {record['n_frames']} frames "
            f"({record['timing']['frames_per_s']:.0f} frames/s, {record['units']})")
    if "model" in record:
        line += (f"; reconstructed with sigma {record['model']['sigma_nm']:.1f} nm, "
                 f"{record['n_localizations']} localizations")
    print(f"{line}; wrote {args.out}/")


# --------------------------------------------------------------------------- main
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_simulate,
    _add_evaluate,
    _add_convert,
    _add_localize,
    _add_train,
    _add_calibrate,
    _add_run,
    _add_demo,
    _add_drift,
    _add_link,
    _add_filter,
    _add_cluster,
    _add_render,
    _add_frc,
    _add_postprocess,
    _add_sofi,
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
