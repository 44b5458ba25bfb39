"""Deep-STORM's background matching: the excess over the training background taken away.

The shipped `builtin:deepstorm-zerocost` saw no background in training. Fresh simulations
(seeds 7900 + i) of its own `zerocost` preset at 0.5–10 emitters/µm² with background 0, 15,
50 and 200 photons/px, a background gradient 20 → 300 photons/px across the frame, and the
real demo movie (`--baseline 100 --e-per-adu 0.446`, as in gridnet_accuracy.py), each
localized with `--set background=none` (as before), with matching at the shipped tolerance,
and with tolerances of 0 and 20 photons/px. Scores: JI at 50/100 nm, precision, recall and
RMSE at 100 nm.

Usage: python experiments/background_match.py [--threads 1] [--frames 8]
Writes experiments/results/background_match.{json,md}.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import (SCORE_KEYS, demo_movie, rows_experiment,  # noqa: E402
                              score_row)

MODEL = "builtin:deepstorm-zerocost"
#: (case, simulation overrides); the gradient case gets its map file added.
CASES = [(f"{d}/µm², background {bg}", [f"activation.density_per_um2={d}",
                                        f"background.photons={bg}"])
         for d, bg in [(0.5, 0), (2, 0), (6, 0), (10, 0), (2, 15), (6, 15), (2, 50), (6, 50),
                       (10, 50), (2, 200), (6, 200)]]
CASES.append(("2/µm², background 20 → 300 across the frame", ["activation.density_per_um2=2",
                                                               "background.photons=160"]))
#: (label, tolerance in photons/px; None: no matching, "shipped": the model's default).
MODES = [("none", None), ("shipped", "shipped"), ("tolerance 0", 0.0), ("tolerance 20", 20.0)]


def _engine(mode):
    from stormfold.localize.registry import load_engine

    if mode is None:
        return load_engine(model=MODEL, options={"background": "none"})
    engine = load_engine(model=MODEL)
    if mode != "shipped":
        engine.background = dataclasses.replace(engine.background, tolerance_photons=mode)
    return engine


def _score_modes(case: str, photons: np.ndarray, truth, pixel_size_nm: float) -> list[dict]:
    rows = []
    for label, mode in MODES:
        engine = _engine(mode)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            locs = engine.process(photons, 0, pixel_size_nm).locs
        rows.append(score_row({"case": case, "background": label}, truth, locs,
                              time.perf_counter() - t0))
        print(rows[-1], flush=True)
    return rows


def rows_for(n_frames: int, work: Path) -> list[dict]:
    import tifffile

    from stormfold.simulate import build_config, simulate

    gradient = work / "gradient.tif"
    tifffile.imwrite(gradient, np.tile(np.linspace(20.0, 300.0, 64, dtype=np.float32), (64, 1)))
    rows = []
    for i, (case, over) in enumerate(CASES):
        extra = [f"background.map={gradient}"] if "across" in case else []
        cfg = build_config("zerocost", n_frames=n_frames, seed=7900 + i,
                           overrides=[*over, *extra])
        sim = simulate(cfg)
        rows += _score_modes(case, cfg.camera.backward(sim.movie), sim.truth, cfg.pixel_size_nm)
    demo = demo_movie()
    if demo is not None:
        photons, truth, _ = demo
        rows += _score_modes("real demo movie", photons, truth, 100.0)
    return rows


_KEYS = ["case", "background", *SCORE_KEYS]


def main() -> None:
    rows_experiment(__doc__, "background_match.py",
                    lambda a: f"Deep-STORM background matching (model {MODEL}, {a.frames} "
                              f"frames per simulation)", _KEYS,
                    lambda a, work: rows_for(a.frames, work), lambda r: r["background"],
                    options=(("--frames", int, 8),))


if __name__ == "__main__":
    main()
