"""Deep-STORM inference: frames/s and peak memory for 64×64 and 256×256 frames, and a long movie.

Each case runs in a fresh process (peak RSS is its own). The model is the shipped
``builtin:deepstorm-zerocost`` (faithful network, L = 8). The speed cases run every
``--set precision`` value (float32, bfloat16, auto) on the same frames and report the
Jaccard index at 100 nm, so speed and accuracy of bfloat16 are compared in one run; the
JSON names the CPU, its native-bf16 flags (avx512_bf16, amx_bf16) and the load. The
long-movie case streams a simulated 10,000-frame 64×64 movie from disk through
``localize_movie`` (CSV, images and run.yaml written) to show that memory does not grow
with the movie length.

Usage: python benchmarks/deepstorm.py [--long-frames N ...] [--skip-long] [--skip-speed]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, run_isolated, run_main  # noqa: E402

MODEL = "builtin:deepstorm-zerocost"


def speed(size: int, n_frames: int, precision: str, batch_frames: int = 16) -> dict:
    """Engine throughput on simulated zerocost frames of size×size (after one warm-up batch)."""
    import numpy as np

    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate

    import pandas as pd

    from stormfold.evaluate import evaluate

    cfg = build_config("zerocost", n_frames=n_frames, seed=0,
                       overrides=[f"n_rows={size}", f"n_cols={size}"])
    sim = simulate(cfg)
    photons = cfg.camera.backward(sim.movie)
    engine = load_engine(model=MODEL, options={"precision": precision})
    engine.process(photons[:1], 0, 100.0)  # warm-up (oneDNN kernel selection)
    tables = []
    t0 = time.perf_counter()
    for start in range(0, n_frames, batch_frames):
        tables.append(engine.process(photons[start:start + batch_frames], start, 100.0).locs)
    seconds = time.perf_counter() - t0
    locs = pd.concat(tables, ignore_index=True)
    jaccard = float(evaluate(sim.truth, locs, tolerances_nm=(100,))["jaccard"].iloc[0])
    return {"case": "engine", "size": f"{size}x{size}", "precision": precision,
            "resolved": engine.precision, "frames": n_frames, "tile_px": engine.tile_px,
            "seconds": seconds, "frames_per_s": n_frames / seconds,
            "locs_per_frame": len(locs) / n_frames, "jaccard_100nm": jaccard,
            "emitters_per_frame": float(np.round(6.0 * (size * 0.1) ** 2, 1))}


def make_movie(folder: str, n_frames: int) -> dict:
    from stormfold.simulate import build_config, simulate_to_folder

    simulate_to_folder(build_config("zerocost", n_frames=n_frames, seed=3), folder, progress=False)
    return {}


def long_movie(folder: str, n_frames: int, precision: str) -> dict:
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    engine = load_engine(model=MODEL, options={"precision": precision})
    t0 = time.perf_counter()
    res = localize_movie(Path(folder) / "movie.tif", engine, Path(folder) / "out", progress=False)
    seconds = time.perf_counter() - t0
    return {"case": "localize_movie", "size": "64x64", "precision": precision, "frames": n_frames,
            "tile_px": engine.tile_px, "seconds": seconds, "frames_per_s": n_frames / seconds,
            "locs_per_frame": res.run["n_localizations"] / n_frames}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-frames", type=int, nargs="+", default=[1_000, 10_000],
                        help="movie lengths of the long-movie case (peak memory must not grow)")
    parser.add_argument("--long-precision", default="auto",
                        choices=["float32", "bfloat16", "auto"])
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--isa", default=None, metavar="ISA",
                        help="cap oneDNN's instruction set (ONEDNN_MAX_CPU_ISA, e.g. AVX2) to "
                             "see a CPU without native bf16: speed cases only, 64x64 frames, "
                             "written to deepstorm_isa-<ISA>.json")
    args = parser.parse_args()
    if args.isa:
        # Children inherit the environment; oneDNN reads it when it first runs.
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.isa
        rows = [run_isolated(speed, 64, 8, p) for p in ("float32", "bfloat16")]
        report(f"deepstorm_isa-{args.isa.lower()}", rows, [
            "case", "size", "precision", "resolved", "frames", "seconds", "frames_per_s",
            "jaccard_100nm", "peak_rss_mb"])
        if all("error" not in r for r in rows):
            print(f"64x64 with oneDNN capped at {args.isa}: bfloat16 / float32 speed = "
                  f"{rows[1]['frames_per_s'] / rows[0]['frames_per_s']:.2f}")
        return
    columns = ["case", "size", "precision", "resolved", "frames", "tile_px", "seconds",
               "frames_per_s", "locs_per_frame", "jaccard_100nm", "peak_rss_mb"]
    if not args.skip_speed:
        rows = []
        for precision in ("float32", "bfloat16", "auto"):
            rows.append(run_isolated(speed, 64, 32, precision))
            rows.append(run_isolated(speed, 256, 4, precision, 4))
        path = report("deepstorm", rows, columns)
        by = {(r["size"], r["precision"]): r["frames_per_s"] for r in rows if "error" not in r}
        for size in ("64x64", "256x256"):
            if (size, "float32") in by and (size, "bfloat16") in by:
                print(f"{size}: bfloat16 / float32 speed = "
                      f"{by[size, 'bfloat16'] / by[size, 'float32']:.2f}")
        print(f"machine: {json.loads(path.read_text())['machine']}")
    if not args.skip_long:
        rows = []
        for n_frames in args.long_frames:
            with tempfile.TemporaryDirectory() as tmp:
                run_isolated(make_movie, tmp, n_frames)
                rows.append(run_isolated(long_movie, tmp, n_frames, args.long_precision))
        report("deepstorm_long", rows, columns)


if __name__ == "__main__":
    run_main(main)
