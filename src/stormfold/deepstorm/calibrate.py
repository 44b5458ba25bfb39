"""``python -m stormfold.deepstorm.calibrate MODEL``: calibrate the photons and uncertainty
estimates of an existing Deep-STORM model on its training simulation
(:func:`calibrate_model`); rewrites ``MODEL/model.yaml`` only.

The estimates themselves are computed by :mod:`stormfold.deepstorm.estimates`; this module
loads an existing model, simulates its training data again and writes the result.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Sequence

from stormfold import __version__
from stormfold.deepstorm.estimates import DEFAULT_WINDOW_FINE_PX, calibrate_estimates
from stormfold.errors import UserError

PROG = "python -m stormfold.deepstorm.calibrate"


def training_simulation(meta: dict, source: str):
    """The :class:`SimulationConfig` a model was trained on (UserError when it has none)."""
    from stormfold.simulate.config import PROVENANCE_KEYS, build_config

    data = meta.get("training_data")
    data = data if isinstance(data, dict) else {}
    sim = data.get("simulation")
    if data.get("source") != "simulation" or not isinstance(sim, dict):
        raise UserError(f"{source}: the model was not trained on a simulation, so there is no "
                        f"training simulation to calibrate its estimates on")
    overrides = {k: v for k, v in sim.items() if k not in PROVENANCE_KEYS}
    return build_config(preset=sim.get("preset"), overrides=overrides)


def calibrate_model(model: str | Path, n_frames: int = 100, seed: int | None = None,
                    tolerance_nm: float | None = None,
                    window_fine_px: int = DEFAULT_WINDOW_FINE_PX, device: Any = None,
                    command: list[str] | None = None, write: bool = True) -> dict:
    """Calibrate (or recalibrate) the estimates of an existing Deep-STORM model.

    Simulates ``n_frames`` frames of the model's training simulation with ``seed``
    (default: the training seed + 2; the threshold was calibrated on seed + 1), runs the
    model at its threshold and writes the ``estimates`` section into its ``model.yaml``
    (atomically; the weights are not touched).

    Returns
    -------
    dict
        The ``estimates`` section written.
    """
    from stormfold.config import dump_yaml
    from stormfold.deepstorm.engine import ENGINE, engine_from_meta
    from stormfold.io.atomic import write_text
    from stormfold.modelfile import META, load_model, resolve_model_dir
    from stormfold.training import simulated_data

    if n_frames < 1:
        raise UserError(f"--frames must be ≥ 1, got {n_frames}")
    if window_fine_px < 1 or window_fine_px % 2 == 0:
        raise UserError(f"--window must be a positive odd number, got {window_fine_px}")
    folder = resolve_model_dir(model)
    tensors, meta = load_model(folder, engine=ENGINE)
    meta = dict(meta)
    meta.pop("estimates", None)  # recalibrate from the network alone
    sim = training_simulation(meta, str(model))
    if seed is None:
        seed = int(meta.get("training", {}).get("seed", 0)) + 2
    sim = copy.deepcopy(sim)
    sim.seed, sim.n_frames = int(seed), int(n_frames)
    tol = float(tolerance_nm if tolerance_nm is not None
                else (meta.get("calibration") or {}).get("tolerance_nm", 100.0))
    engine = engine_from_meta(meta, tensors, device=device or "cpu", source=str(model),
                              options={"brightness": "none"})
    data = simulated_data(sim)
    record = calibrate_estimates(engine, data.photons, data.truth, data.pixel_size_nm, tol,
                                 window_fine_px)
    record = {"frames": f"{n_frames} simulated frames of the training simulation "
                        f"(preset {sim.preset}), seed {seed}",
              "seed": int(seed), "n_frames": int(n_frames), "command": command,
              "stormfold_version": __version__, **record}
    if write:
        meta["estimates"] = record
        write_text(folder / META, dump_yaml(meta))
    return record




def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Calibrate the photons and uncertainty_nm estimates of a Deep-STORM model "
                    "on its training simulation; rewrites MODEL/model.yaml (weights unchanged).")
    parser.add_argument("model", help="model folder or builtin:NAME")
    parser.add_argument("--frames", type=int, default=100,
                        help="simulated frames (default 100)")
    parser.add_argument("--seed", type=int, default=None,
                        help="simulation seed (default: training seed + 2)")
    parser.add_argument("--tolerance", type=float, default=None, metavar="NM",
                        help="matching radius (default: the model's calibration tolerance)")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW_FINE_PX, metavar="PX",
                        help=f"integration window in fine pixels, odd "
                             f"(default {DEFAULT_WINDOW_FINE_PX})")
    parser.add_argument("--device", default=None, help="cpu, cuda or auto (default cpu)")
    args = parser.parse_args(argv)
    try:
        from stormfold.device import get_device

        device = get_device(args.device) if args.device else "cpu"
        record = calibrate_model(args.model, args.frames, args.seed, args.tolerance,
                                 args.window, device,
                                 command=[*PROG.split(), *(sys.argv[1:] if argv is None else argv)])
    except UserError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    if "photons" not in record:
        print(f"{PROG}: {record['note']}")
        return 0
    p, u = record["photons"], record["uncertainty_nm"]
    print(f"{record['n_matched']} matched localizations ({record['frames']}): photons table of "
          f"{len(p['table'])} bins (median |error| {100 * p['median_abs_rel_error']:.1f} %, "
          f"correlation with the true photons {p['correlation']}); uncertainty "
          f"{u['table'][-1][1]:.1f}–{u['table'][0][1]:.1f} nm over {len(u['table'])} bins")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
