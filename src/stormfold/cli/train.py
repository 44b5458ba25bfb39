"""``stormfold train ENGINE``: one sub-command per trainable engine.

A new engine adds its ``_add_train_<engine>`` to :data:`TRAIN_COMMANDS`; its ``_cmd_`` calls the
engine's trainer (which uses :mod:`stormfold.training`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from stormfold.cli.common import (Parser, add_movie_options, command_line, movie_options,
                                  nonneg_int, output_path, positive_float, positive_int)
from stormfold.errors import UserError


def _add_train_deepstorm(engines: argparse._SubParsersAction) -> None:
    p = engines.add_parser("deepstorm", help="train a Deep-STORM model on simulated patches "
                                             "(or on --movie/--truth)")
    _add_train_common(p)
    _add_movie_truth(p)
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 100)")
    p.add_argument("--patches", type=positive_int, default=None,
                   help="patches drawn, 70%% training / 30%% validation (default 10000)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="patches per step (16)")
    p.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate (1e-3)")
    p.set_defaults(func=_cmd_train_deepstorm)


def _cmd_train_deepstorm(args: argparse.Namespace) -> None:
    from stormfold.deepstorm.train import train_from_cli
    from stormfold.device import get_device
    from stormfold.training.loop import model_folder_guard

    _check_movie_out(args)
    with model_folder_guard(args.out):
        result = train_from_cli(args.out, preset=args.preset, config_file=args.config,
                                overrides=args.overrides, seed=args.seed, movie=args.movie,
                                truth=args.truth, epochs=args.epochs, n_patches=args.patches,
                                batch_size=args.batch_size, lr=args.lr, resume=args.resume,
                                device=get_device(args.device), progress=not args.quiet,
                                command=command_line(), movie_options=movie_options(args))
    meta = result.meta
    print(f"best validation loss {meta['validation_loss']:.4g} (epoch "
          f"{meta['training']['best_epoch']}); threshold {meta['threshold']:.4g} "
          f"(Jaccard {meta['calibration']['jaccard']:.3f} at "
          f"{meta['calibration']['tolerance_nm']:g} nm); wrote {args.out}/")


def _add_train_unrolled(engines: argparse._SubParsersAction) -> None:
    p = engines.add_parser("unrolled", help="learn the parameters of the unrolled accelerated "
                                            "projected gradient (algorithmic unfolding)")
    _add_train_common(p)
    _add_movie_truth(p)
    p.add_argument("--fidelity", choices=["ls", "kl"], default=None,
                   help="least squares (default) or Kullback-Leibler data term")
    p.add_argument("--loss", choices=["reconstruction", "localization"], default=None,
                   help="upper-level loss: (13) reconstruction or (14) localization (default)")
    p.add_argument("--iterations", type=positive_int, default=None, metavar="K",
                   help="unrolled iterations K (default 100)")
    p.add_argument("--outer-iterations", type=positive_int, default=None, metavar="N",
                   help="upper-level (SGP/Adam) iterations (default 50)")
    p.add_argument("--optimizer", choices=["sgp", "adam"], default=None,
                   help="upper-level optimiser: scaled gradient projection (default) or "
                        "projected Adam")
    p.add_argument("--frames", type=positive_int, default=None, metavar="N",
                   help="training frames, all used in every iteration (default 16)")
    p.set_defaults(func=_cmd_train_unrolled)


def _cmd_train_unrolled(args: argparse.Namespace) -> None:
    from stormfold.config import merge, parse_overrides
    from stormfold.device import get_device
    from stormfold.training.loop import model_folder_guard
    from stormfold.unrolled.train import load_train_config, train_unrolled

    _check_movie_out(args)
    flags = {"seed": args.seed,
             "data": {"preset": args.preset, "n_frames": args.frames,
                      "movie": None if args.movie is None else str(args.movie),
                      "truth": None if args.truth is None else str(args.truth),
                      "axes": args.axes, "z": args.z, "channel": args.channel,
                      # the default comes from --config when not asked for
                      "nan_policy": None if args.nan_policy == "error" else args.nan_policy},
             "solver": {"fidelity": args.fidelity, "iterations": args.iterations},
             "loss": {"kind": args.loss},
             "optim": {"outer_iterations": args.outer_iterations, "optimizer": args.optimizer}}
    config = load_train_config(args.config, merge(parse_overrides(args.overrides), _given(flags)))
    with model_folder_guard(args.out):
        meta = train_unrolled(config, args.out, resume=args.resume,
                              device=get_device(args.device), progress=not args.quiet,
                              command=command_line())
    t = meta["training"]
    print(f"{t['loss']} loss {t['initial_loss']:.4g} → {t['final_loss']:.4g} in "
          f"{t['outer_iterations_done']} outer iterations ({t['evaluations']} evaluations, "
          f"{t['seconds']:.0f} s); rho {meta['theta']['rho']:.4g}, tau "
          f"{meta['theta']['tau']:.4g}; wrote {args.out}/")


def _add_train_sofi(engines: argparse._SubParsersAction) -> None:
    p = engines.add_parser("sofi", help="semi-blind SOFI deconvolution: learn the PSF width, "
                                        "rho and the step sizes from simulated blinking stacks")
    _add_train_common(p)
    p.add_argument("--patterns", type=positive_int, default=None, metavar="N",
                   help="training patterns, one simulated movie each (default 20)")
    p.add_argument("--frames", type=positive_int, default=None, metavar="T",
                   help="frames per pattern (default: the preset's, 500 for sofi)")
    p.add_argument("--lag", type=int, choices=[0, 1], default=None,
                   help="cumulant time lag: 0 = variance (default), 1 = lag-1 (no white noise)")
    p.add_argument("--iterations", type=positive_int, default=None, metavar="K",
                   help="unrolled iterations K (default 100)")
    p.add_argument("--outer-iterations", type=positive_int, default=None, metavar="N",
                   help="SGP iterations learning sigma, rho, alpha (default 30)")
    p.add_argument("--sigma-init", type=positive_float, default=None, metavar="NM",
                   help="initial PSF sigma guess in nm (default: the simulation's sigma)")
    p.add_argument("--no-tau", action="store_true",
                   help="skip stage 2 (learning the binarisation threshold by loss 14)")
    p.set_defaults(func=_cmd_train_sofi)


def _cmd_train_sofi(args: argparse.Namespace) -> None:
    from stormfold.config import merge, parse_overrides
    from stormfold.device import get_device
    from stormfold.sofi.train import load_sofi_train_config, train_sofi
    from stormfold.training.loop import model_folder_guard

    flags = {"seed": args.seed,
             "data": {"preset": args.preset, "n_patterns": args.patterns,
                      "n_frames": args.frames, "lag": args.lag},
             "solver": {"iterations": args.iterations, "sigma_init_nm": args.sigma_init},
             "optim": {"outer_iterations": args.outer_iterations},
             "tau": {"learn": False if args.no_tau else None}}
    config = load_sofi_train_config(args.config,
                                    merge(parse_overrides(args.overrides), _given(flags)))
    with model_folder_guard(args.out):
        meta = train_sofi(config, args.out, resume=args.resume, device=get_device(args.device),
                          progress=not args.quiet, command=command_line())
    t = meta["training"]
    print(f"sigma {meta['sigma_init_nm']:.1f} → {meta['sigma_nm']:.1f} nm (simulation: "
          f"{', '.join(f'{s:g}' for s in t['simulation_sigma_nm'])} nm); rho "
          f"{meta['theta']['rho']:.4g}, tau {meta['tau']:.3g}; loss {t['initial_loss']:.4g} → "
          f"{t['final_loss']:.4g} in {t['outer_iterations_done']} outer iterations "
          f"({t['seconds']['total']:.0f} s); wrote {args.out}/")


def _add_train_gridnet(engines: argparse._SubParsersAction) -> None:
    p = engines.add_parser("gridnet", help="train the camera-grid network on batches simulated "
                                           "at every step (fine-tunes the shipped generalist on "
                                           "--config/--preset by default)")
    _add_train_common(p)
    p.add_argument("--minutes", type=positive_float, default=None, metavar="M",
                   help="wall-time budget of the training loop (default 15 when fine-tuning)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="number of steps instead of a time budget")
    p.add_argument("--init", default=None, metavar="builtin:gridnet-generalist|DIR|none",
                   help="model to start from (default: the generalist when a simulation is "
                        "given, else none)")
    p.set_defaults(func=_cmd_train_gridnet)


def _cmd_train_gridnet(args: argparse.Namespace) -> None:
    from stormfold.device import get_device
    from stormfold.gridnet.train import train_from_cli
    from stormfold.io.outputs import check_inputs_apart
    from stormfold.modelfile import META, WEIGHTS
    from stormfold.training.loop import model_folder_guard

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")
    init = None if args.init in (None, "none") or args.init.startswith("builtin:") else args.init
    check_inputs_apart([args.out / META, args.out / WEIGHTS, args.out], [args.config, init])
    with model_folder_guard(args.out):
        result = train_from_cli(args.out, preset=args.preset, config_file=args.config,
                                overrides=args.overrides, seed=args.seed, minutes=args.minutes,
                                steps=args.steps, init=args.init, resume=args.resume,
                                device=get_device(args.device), progress=not args.quiet,
                                command=command_line())
    meta = result.meta
    print(f"{meta['training']['steps']} steps in {meta['training']['wall_time']}; validation "
          f"Jaccard {meta['validation']['ji']:.3f} at {meta['calibration']['tolerance_nm']:g} nm; "
          f"threshold {meta['threshold']:.3g}; wrote {args.out}/")


def _add_movie_truth(p: argparse.ArgumentParser) -> None:
    p.add_argument("--movie", type=Path, default=None, metavar="M.tif",
                   help="train on this movie instead of simulating (needs --truth)")
    p.add_argument("--truth", type=Path, default=None, metavar="T.csv",
                   help="ground truth of --movie (ThunderSTORM .csv or Picasso .hdf5)")
    add_movie_options(p)


def _check_movie_out(args: argparse.Namespace) -> None:
    """Before any work: both of --movie/--truth or neither, and the model folder is neither
    of them nor a folder they are in."""
    from stormfold.io.outputs import check_inputs_apart
    from stormfold.modelfile import META, WEIGHTS

    if (args.movie is None) != (args.truth is None):
        raise UserError("give both --movie and --truth to train on an existing movie")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder")
    check_inputs_apart([args.out / META, args.out / WEIGHTS, args.out],
                       [args.movie, args.truth, args.config])


def _given(flags: dict) -> dict:
    """The options the user gave, as nested overrides (None = not given)."""
    return {k: ({kk: vv for kk, vv in v.items() if vv is not None} if isinstance(v, dict) else v)
            for k, v in flags.items() if v is not None}


def _add_train_common(p: argparse.ArgumentParser) -> None:
    """Options every ``stormfold train ENGINE`` shares."""
    p.add_argument("--preset", default=None, help="simulation preset of the training data")
    p.add_argument("--config", type=Path, default=None, metavar="FILE.yaml",
                   help="training configuration (simulation and schedule) as YAML")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one configuration key (repeatable)")
    p.add_argument("--seed", type=nonneg_int, default=None, help="random seed")
    p.add_argument("--out", type=output_path, required=True, metavar="MODEL_DIR",
                   help="model folder")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint in MODEL_DIR")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# Each engine adds its ``stormfold train ENGINE`` parser here (see _add_train).
TRAIN_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train_deepstorm,
    _add_train_unrolled,
    _add_train_sofi,
    _add_train_gridnet,
]


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on simulated (or given) data")
    engines = p.add_subparsers(dest="engine", metavar="ENGINE", parser_class=Parser)
    engines.required = True
    for add in TRAIN_COMMANDS:
        add(engines)


#: ``add(subparsers)`` of each command, in the order of ``stormfold --help``.
COMMANDS = [_add_train]
