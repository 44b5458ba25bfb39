"""``stormfold localize`` and ``stormfold sofi``: a movie in, localizations or images out."""
from __future__ import annotations

import argparse
from pathlib import Path

from stormfold.cli.common import (add_camera_options, add_movie_options, camera_overrides,
                                  camera_pixel_size, command_line, frame_range, movie_options,
                                  output_path, positive_int, repairs_line)


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
    p.add_argument("--out", type=output_path, required=True, metavar="OUT_DIR",
                   help="output folder")
    p.add_argument("--pixel-size", type=camera_pixel_size, default=None, metavar="NM",
                   help="camera pixel size in nm, 10–2000 (default: from the movie's metadata)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="extraction threshold (default: the model's calibrated value)")
    p.add_argument("--batch-frames", type=positive_int, default=16, metavar="N",
                   help="frames per batch (memory ∝ N × frame size)")
    p.add_argument("--frames", default=None, metavar="A:B", help="frame range, 0-based, B exclusive")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    p.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option (repeatable), e.g. bin=2 to sum 2 × 2 pixels first")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_camera_options(p)
    add_movie_options(p)
    p.set_defaults(func=_cmd_localize)


def _cmd_localize(args: argparse.Namespace) -> None:
    from stormfold.config import parse_overrides
    from stormfold.device import get_device
    from stormfold.io.movie import open_movie
    from stormfold.localize.registry import load_engine
    from stormfold.localize.runner import localize_movie

    start, stop = frame_range(args.frames)
    overrides = camera_overrides(args)
    device = get_device(args.device)
    with open_movie(args.movie, pixel_size_nm=args.pixel_size, **movie_options(args)) as movie:
        engine = load_engine(model=args.model, engine=args.engine, device=device,
                             threshold=args.threshold, options=parse_overrides(args.options))
        result = localize_movie(movie, engine, args.out, camera=overrides,
                                batch_frames=args.batch_frames, start=start, stop=stop,
                                progress=not args.quiet, command=command_line())
    t = result.run["timing"]
    print(f"{result.run['n_localizations']} localizations in {result.run['n_frames']} frames "
          f"({t['frames_per_s']:.1f} frames/s){repairs_line(result.run['nan_repairs'])}; "
          f"wrote {args.out}/")


def _add_sofi(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sofi", help="SOFI cumulant image of a movie (and its semi-blind "
                                    "deconvolution with --model)")
    p.add_argument("movie", type=Path, metavar="MOVIE",
                   help="TIFF stack, folder of TIFFs, or Picasso .raw (ADU)")
    p.add_argument("--out", type=output_path, required=True, metavar="OUT_DIR",
                   help="output folder: sofi.tif, mean.tif, sofi.yaml (+ reconstruction.tif, "
                        "reconstruction_binary.tif, localizations.csv with --model)")
    p.add_argument("--order", type=int, default=2, metavar="N",
                   help="cumulant order (only 2 is implemented)")
    p.add_argument("--lag", type=int, choices=[0, 1], default=None,
                   help="time lag: 0 = variance (default), 1 = removes temporally white noise "
                        "(default with --model: the model's)")
    p.add_argument("--model", default=None, metavar="MODEL_DIR|builtin:NAME",
                   help="trained SOFI model (stormfold train sofi): also reconstruct")
    p.add_argument("--pixel-size", type=camera_pixel_size, default=None, metavar="NM",
                   help="camera pixel size in nm, 10–2000 (default: from the movie's metadata)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
                   help="binarisation threshold in units of the model's variance scale "
                        "(default: the learned tau)")
    p.add_argument("--no-binary", action="store_true",
                   help="do not write reconstruction_binary.tif")
    p.add_argument("--batch-frames", type=positive_int, default=256, metavar="N",
                   help="frames read at once (memory ∝ N × frame size)")
    p.add_argument("--frames", default=None, metavar="A:B", help="frame range, 0-based, B exclusive")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_camera_options(p)
    add_movie_options(p)
    p.set_defaults(func=_cmd_sofi)


def _cmd_sofi(args: argparse.Namespace) -> None:
    from stormfold.device import get_device
    from stormfold.io.movie import open_movie
    from stormfold.sofi.run import run_sofi
    from stormfold.sofi.statistics import check_order_lag

    check_order_lag(args.order, 0 if args.lag is None else args.lag)
    start, stop = frame_range(args.frames)
    overrides = camera_overrides(args)
    with open_movie(args.movie, pixel_size_nm=args.pixel_size, **movie_options(args)) as movie:
        record = run_sofi(movie, args.out, order=args.order, lag=args.lag, model=args.model,
                          camera=overrides, batch_frames=args.batch_frames, start=start,
                          stop=stop, threshold=args.threshold, binarise=not args.no_binary,
                          device=get_device(args.device), progress=not args.quiet,
                          command=command_line())
    line = (f"lag-{record['lag']} cumulant of {record['n_frames']} frames "
            f"({record['timing']['frames_per_s']:.0f} frames/s, {record['units']})")
    if "model" in record:
        line += (f"; reconstructed with sigma {record['model']['sigma_nm']:.1f} nm, "
                 f"{record['n_localizations']} localizations")
    print(f"{line}{repairs_line(record.get('nan_repairs'))}; wrote {args.out}/")


#: ``add(subparsers)`` of each command, in the order of ``stormfold --help``.
COMMANDS = [_add_localize, _add_sofi]
