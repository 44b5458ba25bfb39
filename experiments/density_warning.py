"""Thresholds of the first-batch density warnings (review 14, D7).

The classic MLE fits one emitter per spot and silently merges neighbours when crowded; the
gridnet generalist was trained at 0.1–10 emitters/µm² per frame. Each engine warns when the
localizations per µm² per frame of its first batch exceed a threshold
(:data:`stormfold.localize.domain.CLASSIC_DENSITY_ABOVE`, ``GRIDNET_DENSITY_MARGIN``).
This script measures, on `zerocost` simulations (64 × 64 px of 100 nm, 16 frames, 2,250 ±
250 photons, σ 110 nm; seeds 9100 + i) at true densities 0.1–40/µm² and with a background of
0 (the preset) and 30 photons/px: the density each engine *reports* on its first batch of 16
frames, its JI@100 nm, and whether it warned; then the spread of the first batch's
reported density just below each threshold (8 seeds, 9200 + i, first batches of 4 frames:
classic at a true 1.0/µm², gridnet at 10/µm²).

Usage: python experiments/density_warning.py [--threads 1]
Writes experiments/results/density_warning.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import markdown_table, scores  # noqa: E402

DENSITIES = {"classic": (0.1, 0.3, 0.5, 0.7, 1.0, 1.2, 1.5, 2.0, 3.0, 5.0, 10.0),
             "gridnet": (0.1, 1.0, 5.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0)}
BACKGROUNDS = (0.0, 30.0)
FRAMES = 16


def row(engine_name: str, density: float, background: float, seed: int,
        frames: int = FRAMES) -> dict:
    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate

    cfg = build_config("zerocost", n_frames=frames, seed=seed, overrides=[
        f"activation.density_per_um2={density}", f"background.photons={background}"])
    sim = simulate(cfg)
    photons = cfg.camera.backward(sim.movie)
    engine = load_engine(engine="classic") if engine_name == "classic" else \
        load_engine(model="builtin:gridnet-generalist")
    engine.set_camera(cfg.camera)
    engine.start_movie()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        locs = engine.process_with_context(photons, None, None, 0, cfg.pixel_size_nm).locs
    area = frames * cfg.n_rows * cfg.n_cols * (cfg.pixel_size_nm / 1000.0) ** 2
    warned = [str(w.message) for w in said if "localizations/µm²" in str(w.message)]
    sc = scores(sim.truth, locs)
    return {"engine": engine_name, "background": background, "true_density": density,
            "true_per_um2": round(len(sim.truth) / area, 2),
            "reported_per_um2": round(len(locs) / area, 2), "ji_100": sc["ji_100"],
            "recall": sc["recall"], "precision": sc["precision"], "warned": bool(warned)}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, densities in DENSITIES.items():
        for b in BACKGROUNDS:
            for i, d in enumerate(densities):
                rows.append(row(name, d, b, 9100 + i))
                print(json.dumps(rows[-1]), flush=True)
    spread = []
    for name, density in (("classic", 1.0), ("gridnet", 10.0)):
        for i in range(8):
            spread.append(row(name, density, 0.0, 9200 + i, frames=4))
            print(json.dumps(spread[-1]), flush=True)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "density_warning.json").write_text(
        json.dumps({"densities": rows, "first_batch_spread": spread}, indent=1) + "\n")
    (out / "density_warning.md").write_text("\n".join(
        ["# Density warnings: reported density and JI@100 vs the true density", "",
         *markdown_table(rows), "", "## Spread of a 4-frame first batch below the thresholds",
         "", *markdown_table(spread), ""]))


if __name__ == "__main__":
    main()
