"""``python -m stormfold.deepstorm.calibrate MODEL``: calibrate the photons and uncertainty
estimates of an existing Deep-STORM model on its training simulation
(:func:`stormfold.deepstorm.estimates.calibrate_model`); rewrites ``MODEL/model.yaml`` only.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from stormfold.deepstorm.estimates import DEFAULT_WINDOW_FINE_PX, calibrate_model
from stormfold.errors import UserError

PROG = "python -m stormfold.deepstorm.calibrate"


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
