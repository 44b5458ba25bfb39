"""The post-processing commands: ``drift``, ``link``, ``filter``, ``cluster``, ``render``,
``frc`` and ``postprocess`` (several steps in a row)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from stormfold.cli.common import (camera_pixel_size, command_line, float_list, nonneg_int,
                                  output_path, positive_float, positive_int)
from stormfold.errors import UserError


def _add_pp_io(p: argparse.ArgumentParser, out_help: str) -> None:
    """Input, output and camera pixel size shared by the post-processing commands."""
    p.add_argument("input", type=Path, metavar="IN",
                   help="localization table (.csv ThunderSTORM or .hdf5 Picasso)")
    p.add_argument("--out", type=output_path, required=True, metavar="OUT", help=out_help)
    p.add_argument("--pixel-size", type=camera_pixel_size, default=None, metavar="NM",
                   help="camera pixel size in nm (10–2000), for Picasso files whose sidecar "
                        "(or the simulation.yaml/run.yaml next to a CSV) lacks it")


def _pp_params(args: argparse.Namespace, names: Sequence[str]) -> dict:
    """The options the user gave (the rest keep the step's defaults)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _pp_run(step: str, args: argparse.Namespace, params: dict) -> None:
    from stormfold.postprocess.commands import run_command

    result, written = run_command(step, args.input, args.out, params, args.pixel_size,
                                  command=command_line())
    print(f"{result.summary}; wrote {', '.join(str(p) for p in written)}")


_TABLE_OUT = "output table (.csv or .hdf5; never the input); its record goes to OUT's .yaml"


def _add_drift(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("drift", help="estimate and correct lateral drift (RCC or fiducials)")
    _add_pp_io(p, _TABLE_OUT + "; also writes OUT_drift.csv (frame, dx_nm, dy_nm) and "
                              "OUT_drift.png")
    p.add_argument("--method", choices=["rcc", "fiducials"], default=None,
                   help="redundant cross-correlation (default) or fiducial tracks")
    p.add_argument("--bins", type=positive_int, default=None, metavar="N",
                   help="RCC: number of time bins (default 10)")
    p.add_argument("--pixel-nm", type=positive_float, default=None, metavar="P",
                   help="RCC: pixel size of the bin renderings in nm (default 20)")
    p.add_argument("--max-shift-nm", type=positive_float, default=None, metavar="NM",
                   help="RCC: largest drift between two bins searched (default: any)")
    p.add_argument("--max-residual-nm", type=positive_float, default=None, metavar="NM",
                   help="RCC: reject pairs with a larger residual (default 2 × pixel)")
    p.add_argument("--radius-nm", type=positive_float, default=None, metavar="R",
                   help="fiducials: linking radius in nm (default 50)")
    p.add_argument("--max-dark", type=nonneg_int, default=None, metavar="N",
                   help="fiducials: frames a fiducial may be missed (default 2)")
    p.add_argument("--min-fraction", type=positive_float, default=None, metavar="F",
                   help="fiducials: tracks present in at least this fraction of the frames "
                        "(default 0.5)")
    p.add_argument("--smooth-frames", type=positive_int, default=None, metavar="N",
                   help="fiducials: moving-average window in frames (default 1: none)")
    p.set_defaults(func=_cmd_drift)


def _cmd_drift(args: argparse.Namespace) -> None:
    params = _pp_params(args, ["method", "bins", "pixel_nm", "max_shift_nm", "max_residual_nm",
                               "radius_nm", "max_dark", "min_fraction", "smooth_frames"])
    _pp_run("drift", args, params)


def _add_link(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("link", help="merge detections of one molecule in consecutive frames")
    _add_pp_io(p, _TABLE_OUT)
    p.add_argument("--radius-nm", type=positive_float, default=None, metavar="R",
                   help="largest distance between linked detections in nm (default 50)")
    p.add_argument("--max-dark", type=nonneg_int, default=None, metavar="N",
                   help="frames a molecule may be missed and still be linked (default 1)")
    p.add_argument("--weight", choices=["photons", "confidence", "none"], default=None,
                   help="weights of the merged position (default photons; a table with "
                        "intensity_au instead is weighted by that)")
    p.set_defaults(func=_cmd_link)


def _cmd_link(args: argparse.Namespace) -> None:
    _pp_run("link", args, _pp_params(args, ["radius_nm", "max_dark", "weight"]))


def _add_filter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="keep localizations by expression, ROI or local density")
    _add_pp_io(p, _TABLE_OUT)
    p.add_argument("--expr", default=None, metavar="EXPR",
                   help='condition over columns, e.g. "confidence > 0.3 and photons > 500"')
    p.add_argument("--roi", type=float_list, default=None, metavar="X0,Y0,X1,Y1",
                   help="keep x0 ≤ x < x1, y0 ≤ y < y1 (nm)")
    p.add_argument("--min-neighbours", type=nonneg_int, default=None, metavar="N",
                   help="keep localizations with at least N others within --radius-nm")
    p.add_argument("--radius-nm", type=positive_float, default=None, metavar="R",
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
    p.add_argument("--eps-nm", type=positive_float, required=True, metavar="E",
                   help="DBSCAN neighbourhood radius in nm")
    p.add_argument("--min-samples", type=positive_int, required=True, metavar="M",
                   help="localizations within eps (the point included) that make a core point")
    p.set_defaults(func=_cmd_cluster)


def _cmd_cluster(args: argparse.Namespace) -> None:
    _pp_run("cluster", args, _pp_params(args, ["eps_nm", "min_samples"]))


def _add_render(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="render localizations as an image (TIFF or PNG)")
    _add_pp_io(p, "image: .tif (float32, pixel size in its tags) or .png (scale bar)")
    p.add_argument("--pixel-nm", type=positive_float, default=None, metavar="P",
                   help="pixel size of the image in nm (default 10)")
    p.add_argument("--method", choices=["histogram", "gaussian"], default=None,
                   help="histogram (default) or Gaussian rendering")
    sigma = p.add_mutually_exclusive_group()
    sigma.add_argument("--sigma-nm", type=positive_float, default=None, metavar="S",
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
    p.add_argument("--pixel-nm", type=positive_float, default=None, metavar="P",
                   help="rendering pixel size in nm (default 5)")
    p.add_argument("--split", choices=["random", "blocks"], default=None,
                   help="random halves (default) or alternating blocks of frames")
    p.add_argument("--block-frames", type=positive_int, default=None, metavar="B",
                   help="frames per block for --split blocks (default 100)")
    p.add_argument("--seed", type=nonneg_int, default=None, help="seed of the random split (0)")
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
    from stormfold.postprocess.commands import postprocess_file

    result, written = postprocess_file(args.input, args.out, args.steps, args.config,
                                       args.pixel_size, progress=not args.quiet,
                                       command=command_line())
    for line in result.log.values():
        print(line)
    print(f"wrote {len(written)} files to {args.out}/")


#: ``add(subparsers)`` of each command, in the order of ``stormfold --help``.
COMMANDS = [_add_drift, _add_link, _add_filter, _add_cluster, _add_render, _add_frc,
            _add_postprocess]
