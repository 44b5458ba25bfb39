"""Choosing an engine: every shipped engine on the same simulated movies, in one run.

For each emitter density (per µm² and frame) a 64×64 movie of the ``zerocost`` preset
(uniform emitters, 2250 ± 250 photons, PSF σ 110 nm, 100 nm pixels) is simulated once; every
engine of :data:`ENGINES` localizes its first frames (converted to photons with the movie's
own camera, which the engine is also given, as the runner does; after one warm-up batch) in a fresh process. Reported per engine and density:
frames/s of the engine, the Jaccard index and lateral RMSE at 100 nm, localizations and true
emitters per frame, peak memory; and each engine's speed relative to the classic engine in
the same run (the machine is shared: only ratios within one run compare). Written to
``benchmarks/results/engines.json`` with the CPU and the load.

To add an engine, add a line to :data:`ENGINES` (label, ``load_engine`` arguments, frames
to time per density) and one row to README's "Choosing an engine" table.

Usage: python benchmarks/engines.py [--densities 0.5 2 6] [--only LABEL ...]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, run_isolated, run_main  # noqa: E402

#: (label, keyword arguments of ``stormfold.localize.registry.load_engine``, frames timed).
#: Slow engines time fewer frames; every engine sees the same first frames of a movie.
ENGINES = [
    ("classic", {"engine": "classic"}, 200),
    ("deepstorm-zerocost", {"model": "builtin:deepstorm-zerocost"}, 16),
    ("unrolled-isbi2013", {"model": "builtin:unrolled-isbi2013"}, 100),
    ("gridnet-generalist", {"model": "builtin:gridnet-generalist"}, 200),
]
DENSITIES = (0.5, 2.0, 6.0)
BATCH_FRAMES = 16
SEED = 11


def movie(density: float, n_frames: int):
    """The simulated frames in photons and their truth."""
    from stormfold.simulate import build_config, simulate

    cfg = build_config("zerocost", n_frames=n_frames, seed=SEED,
                       overrides={"activation": {"density_per_um2": density}})
    sim = simulate(cfg)
    return cfg.camera.backward(sim.movie), sim.truth, cfg.pixel_size_nm, cfg.camera


def case(label: str, spec: dict, density: float, n_frames: int) -> dict:
    """One engine on one density: throughput of ``engine.process`` and accuracy."""
    import pandas as pd

    from stormfold.evaluate import evaluate
    from stormfold.localize.registry import load_engine

    photons, truth, px, camera = movie(density, n_frames)
    engine = load_engine(**spec)
    engine.set_camera(camera)  # as the runner does: the noise model of the movie's camera
    engine.process(photons[:1], 0, px)  # warm-up (kernel selection, lazy set-up)
    tables = []
    t0 = time.perf_counter()
    for start in range(0, n_frames, BATCH_FRAMES):
        tables.append(engine.process(photons[start:start + BATCH_FRAMES], start, px).locs)
    seconds = time.perf_counter() - t0
    locs = pd.concat(tables, ignore_index=True)
    row = evaluate(truth, locs, tolerances_nm=(100,)).iloc[0]
    return {"engine": label, "density_per_um2": density, "frames": n_frames,
            "seconds": round(seconds, 3), "frames_per_s": n_frames / seconds,
            "jaccard_100nm": float(row["jaccard"]), "rmse_nm": float(row["rmse_lateral_nm"]),
            "locs_per_frame": len(locs) / n_frames,
            "emitters_per_frame": len(truth) / n_frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--densities", type=float, nargs="+", default=list(DENSITIES),
                        metavar="PER_UM2", help="emitter densities (default 0.5 2 6)")
    parser.add_argument("--only", nargs="+", default=None, metavar="LABEL",
                        help="run only these engines (labels of ENGINES)")
    args = parser.parse_args()
    engines = [e for e in ENGINES if args.only is None or e[0] in args.only]
    rows = [{"engine": label, "density_per_um2": density,
             **run_isolated(case, label, spec, density, frames)}
            for density in args.densities for label, spec, frames in engines]
    reference = {r["density_per_um2"]: r["frames_per_s"] for r in rows
                 if r.get("engine") == "classic"}
    for r in rows:
        if "error" not in r and r["density_per_um2"] in reference:
            r["speed_vs_classic"] = r["frames_per_s"] / reference[r["density_per_um2"]]
    report("engines", rows, ["engine", "density_per_um2", "frames", "frames_per_s",
                             "speed_vs_classic", "jaccard_100nm", "rmse_nm", "locs_per_frame",
                             "emitters_per_frame", "peak_rss_mb"])


if __name__ == "__main__":
    run_main(main)
