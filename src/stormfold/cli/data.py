"""``stormfold simulate``, ``evaluate``, ``convert`` and ``calibrate``: data in and out."""
from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

from stormfold.cli.common import (add_movie_options, camera_pixel_size, command_line,
                                  finite_float, frame_range, movie_options, nonneg_float,
                                  nonneg_int, output_path, positive_float, positive_int,
                                  positive_list, repairs_line)
from stormfold.errors import UserError


def _add_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate an SMLM movie with ground truth")
    p.add_argument("--preset", default=None,
                   help="zerocost, thunderstorm, challenge2016 or sofi (default: zerocost)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML file of simulation parameters (e.g. from stormfold calibrate)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter, e.g. --set camera.em_gain=100 (repeatable)")
    p.add_argument("--frames", type=positive_int, default=None, help="number of frames")
    p.add_argument("--seed", type=nonneg_int, default=None, help="random seed (default 0)")
    p.add_argument("--out", type=output_path, required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> None:
    from stormfold.simulate import build_config, simulate_to_folder

    config = build_config(preset=args.preset, config_file=args.config,
                          overrides=args.overrides, n_frames=args.frames, seed=args.seed)
    out = simulate_to_folder(config, args.out, progress=not args.quiet,
                             protect=tuple(p for p in (args.config,) if p is not None),
                             command=command_line())
    print(f"wrote {out / 'movie.tif'}, {out / 'truth.csv'}, {out / 'simulation.yaml'}")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compare localizations with the ground truth")
    p.add_argument("--truth", type=Path, required=True,
                   help="ground-truth table (ThunderSTORM .csv or Picasso .hdf5)")
    p.add_argument("--locs", type=Path, required=True,
                   help="localization table (ThunderSTORM .csv or Picasso .hdf5)")
    p.add_argument("--tolerance", type=positive_list, default=[50.0, 100.0, 250.0],
                   metavar="NM[,NM...]", help="matching radii in nm (default 50,100,250)")
    p.add_argument("--matching", choices=["hungarian", "greedy"], default="hungarian",
                   help="optimal assignment (default) or DECODE-style greedy")
    p.add_argument("--border-nm", type=nonneg_float, default=0.0,
                   help="exclude points closer than this to the image edge (challenge: 450)")
    p.add_argument("--fov-nm", type=positive_list, default=None, metavar="W,H",
                   help="field of view in nm for --border-nm (default: from simulation.yaml "
                        "next to the truth file)")
    p.add_argument("--frames", default=None, metavar="A:B",
                   help="score frames A to B only (0-based, B exclusive; default: the frames "
                        "the localizations cover, as the run.yaml next to them records, "
                        "else all)")
    p.add_argument("--json", type=output_path, default=None, metavar="OUT",
                   help="also write the metrics and parameters to this JSON file")
    p.add_argument("--bound", action="store_true",
                   help="also print the joint Cramér–Rao floor: the RMSE and recall an unbiased "
                        "estimator knowing the number of emitters could reach (needs the "
                        "simulation.yaml next to the truth)")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> None:
    import warnings

    from stormfold.evaluate import evaluate, format_table
    from stormfold.evaluate.metrics import empty_truth_warning
    from stormfold.evaluate.report import (SIMULATION_YAML, check_truth_movie,
                                           evaluation_report, fov_from_simulation_yaml,
                                           report_json)
    from stormfold.io.metadata import RUN_RECORD, recorded_geometry
    from stormfold.io.atomic import write_text
    from stormfold.io.outputs import OutputFiles
    from stormfold.io.tables import read_table, table_sources

    for label, path in (("truth", args.truth), ("localization", args.locs)):
        if not path.is_file():
            raise UserError(f"{label} file not found: {path}")
    target = None
    if args.json is not None:  # writable, and no input, before any metric is printed
        inputs = [*table_sources(args.truth), *table_sources(args.locs)]
        target = OutputFiles([args.json], inputs).check()
    with target if target is not None else nullcontext():
        if target is not None:
            target.open()
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
        check_truth_movie(args.truth, recorded_geometry(args.locs.parent / RUN_RECORD),
                          str(args.locs.parent / RUN_RECORD))
        frames, frames_source = _evaluation_frames(args.frames, args.locs, truth)
        metrics = evaluate(truth, locs, tolerances_nm=args.tolerance, method=args.matching,
                           border_nm=args.border_nm, fov_nm=fov, frames=frames)
        note = empty_truth_warning(metrics)
        if note:
            warnings.warn(note, UserWarning, stacklevel=2)
        floor = _bound(truth, args.truth.parent / SIMULATION_YAML, args.tolerance, frames,
                       args.border_nm, fov, metrics["recall"].to_numpy()) if args.bound else None
        if target is not None:
            report = evaluation_report(metrics, args.truth, args.locs, args.tolerance,
                                       args.matching, args.border_nm, fov, frames, frames_source,
                                       bound=floor)
            write_text(target.path(args.json), report_json(report))
            target.commit()
    if frames is not None:
        print(f"frames {frames[0]}:{frames[1]} ({frames_source})")
    print(format_table(metrics))
    if floor is not None:
        first = floor.iloc[0]
        print(f"joint Cramér–Rao floor (an unbiased estimator that knows the number of "
              f"emitters): median bound {_nm(first.joint_median_nm)}, alone "
              f"{_nm(first.alone_median_nm)}")
        for row in floor.itertuples():
            print(f"  at {row.tolerance_nm:g} nm it would score RMSE {_nm(row.floor_rmse_nm)}, "
                  f"recall {row.floor_recall:.3f}; at these localizations' recall "
                  f"({row.recall:.3f}, the hardest emitters left out) RMSE "
                  f"{_nm(row.floor_rmse_at_recall_nm)}")
    if target is not None:
        print(f"wrote {args.json}")


def _nm(value: float) -> str:
    """A bound for the terminal: infinite means the emitters cannot be told apart (overlapping
    or without photons); NaN means no emitter is within reach of the tolerance."""
    if value == float("inf"):
        return "unbounded (emitters not separable)"
    return f"{value:.1f} nm" if value == value else "n/a (no emitter within the tolerance)"


def _bound(truth, sim_yaml: Path, tolerances, frames, border_nm: float, fov, recalls):
    """:func:`stormfold.evaluate.bounds.floor_table` of the emitters scored, with the camera,
    background and frame size of the simulation that made ``truth``."""
    import numpy as np

    from stormfold.evaluate.bounds import floor_table, joint_crlb
    from stormfold.evaluate.metrics import border_mask
    from stormfold.localize.classic.engine import NoiseModel
    from stormfold.simulate import build_config

    if not sim_yaml.is_file():
        raise UserError(f"--bound needs the simulation's camera and background: no {sim_yaml}")
    cfg = build_config(config_file=sim_yaml)
    if cfg.background.map is not None:
        raise UserError(f"--bound supports a uniform background only ({sim_yaml} has a map)")
    in_frames = np.ones(len(truth), dtype=bool)
    if frames is not None:
        f = truth["frame"].to_numpy()
        in_frames = (f >= frames[0]) & (f < frames[1])
    keep = in_frames.copy()
    if border_nm > 0:
        keep &= border_mask(truth["x_nm"].to_numpy(), truth["y_nm"].to_numpy(), border_nm, fov)
    if not keep.any():
        raise UserError("--bound: no true emitter among the frames scored")
    noise = NoiseModel.from_camera(cfg.camera)
    # Every emitter of the frames scored is an unknown of the model, the border ones too.
    bounds = joint_crlb(truth[in_frames], (cfg.n_rows, cfg.n_cols), cfg.pixel_size_nm,
                        cfg.background.photons, noise.counts_per_photon, noise.gamma)
    return floor_table(bounds.reindex(truth.index[keep]), tolerances, recalls)


def _evaluation_frames(text: str | None, locs_path: Path, truth):
    """The frames to score and where they come from: ``--frames``, else the run.yaml next to
    the localizations (with a warning when the truth spans more), else all (None)."""
    import warnings

    from stormfold.evaluate.metrics import check_frames, frames_warning
    from stormfold.io.tables import frames_near

    if text is not None:
        first, stop = frame_range(text)
        if stop is None:
            stop = int(truth["frame"].max()) + 1 if len(truth) else first + 1
        frames = check_frames((first, stop))
        f = truth["frame"].to_numpy()
        if len(f) and not ((f >= first) & (f < stop)).any():
            raise UserError(f"--frames {text}: the truth has no emitter in these frames (it "
                            f"covers frames {int(f.min())}:{int(f.max()) + 1}, 0-based)")
        return frames, "--frames"
    recorded = frames_near(locs_path)
    if recorded is None:
        return None, "all"
    first, stop, record = recorded
    note = frames_warning(truth, (first, stop), f"{record} says the localizations cover")
    if note:
        warnings.warn(f"{note}; give --frames A:B to choose", UserWarning, stacklevel=2)
    return (first, stop), f"from {record}"


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert localizations between ThunderSTORM CSV "
                                       "and Picasso HDF5")
    p.add_argument("input", type=Path, metavar="IN",
                   help="localization table (.csv ThunderSTORM or .hdf5/.h5 Picasso)")
    p.add_argument("output", type=output_path, metavar="OUT",
                   help="output table; the format follows the extension")
    p.add_argument("--pixel-size", type=camera_pixel_size, default=None, metavar="NM",
                   help="camera pixel size in nm, 10–2000 (needed for Picasso output unless a "
                        "simulation.yaml/run.yaml next to the CSV gives it; overrides a "
                        "Picasso input's YAML)")
    p.add_argument("--width", type=positive_int, default=None, metavar="PX",
                   help="image width in pixels for Picasso output")
    p.add_argument("--height", type=positive_int, default=None, metavar="PX",
                   help="image height in pixels for Picasso output")
    p.add_argument("--frame-base", type=int, choices=(0, 1), default=None,
                   help="first frame number of a CSV from another tool (default: stated by "
                        "its layout, else inferred, with a warning when it is a guess)")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> None:
    from stormfold.io.outputs import OutputFiles
    from stormfold.io.picasso import sidecar_path
    from stormfold.io.tables import convert_table, table_format, table_sources

    formats = table_format(args.input), table_format(args.output)
    paths = [args.output] + ([sidecar_path(args.output)] if formats[1] == "picasso" else [])
    size = 3.0 * args.input.stat().st_size if args.input.is_file() else 0.0
    with OutputFiles(paths, table_sources(args.input), size).check() as target:
        table = convert_table(args.input, target.path(args.output), pixel_size_nm=args.pixel_size,
                              width_px=args.width, height_px=args.height,
                              frame_base=args.frame_base)
        target.commit()
    print(f"wrote {args.output} ({len(table)} localizations)")


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="estimate simulation parameters (camera, PSF, photons, "
                                         "density) from a movie")
    p.add_argument("movie", type=Path, metavar="MOVIE",
                   help="raw movie in ADU: TIFF stack, folder of TIFFs, or Picasso .raw")
    p.add_argument("--out", type=output_path, required=True, metavar="CALIB_DIR",
                   help="output folder: simulation.yaml, calibration.html, calibration.png")
    p.add_argument("--roi", default=None, metavar="x0,y0,x1,y1",
                   help="analysed region in pixels (x along columns, end exclusive)")
    p.add_argument("--frames", default=None, metavar="A:B",
                   help="frame range, 0-based, B exclusive (default: all)")
    p.add_argument("--pixel-size", type=camera_pixel_size, default=None, metavar="NM",
                   help="camera pixel size in nm, 10–2000 (default: from the movie's metadata)")
    p.add_argument("--emccd", action="store_true",
                   help="EMCCD camera: excess-noise factor 2 (else the gain comes out as 2× and "
                        "photons as ½, the ZeroCostDL4Mic correction)")
    p.add_argument("--em-gain", type=positive_float, default=None, metavar="G",
                   help="EM gain written to simulation.yaml with --emccd (does not change the "
                        "statistics; default 100)")
    p.add_argument("--qe", type=positive_float, default=1.0, metavar="Q",
                   help="quantum efficiency: photons are reported before QE (default 1)")
    p.add_argument("--baseline", type=finite_float, default=None, metavar="ADU",
                   help="known camera offset (instead of estimating it)")
    p.add_argument("--e-per-adu", type=positive_float, default=None, metavar="X",
                   help="known electrons per ADU instead of the mean–variance estimate (with "
                        "--emccd give the true --em-gain too: g = G / X ADU per photo-electron)")
    p.add_argument("--threshold", type=positive_float, default=5.0, metavar="T",
                   help="detection threshold in multiples of the background noise (default 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_movie_options(p)
    p.set_defaults(func=_cmd_calibrate)


def _cmd_calibrate(args: argparse.Namespace) -> None:
    from stormfold.calibrate import ScanSettings, calibrate, parse_roi
    from stormfold.io.movie import open_movie

    start, stop = frame_range(args.frames)
    with open_movie(args.movie, pixel_size_nm=args.pixel_size, **movie_options(args)) as movie:
        roi = parse_roi(args.roi, movie.shape) if args.roi is not None else None
        result = calibrate(movie, args.out, roi=roi, start=start, stop=stop, emccd=args.emccd,
                           qe=args.qe, em_gain=args.em_gain, baseline_adu=args.baseline,
                           e_per_adu=args.e_per_adu,
                           settings=ScanSettings(threshold=args.threshold),
                           progress=not args.quiet, command=command_line())
    print(result.summary())
    for note in result.provenance.get("notes", []):
        print(f"note: {note}")
    if result.provenance.get("nan_repairs"):
        print(f"note: {repairs_line(result.provenance['nan_repairs'])[2:]}")
    print(f"wrote {args.out / 'simulation.yaml'}, calibration.html, calibration.png")


#: ``add(subparsers)`` of each command, in the order of ``stormfold --help``.
COMMANDS = [_add_simulate, _add_evaluate, _add_convert, _add_calibrate]
