"""gridnet on structured backgrounds: the network's input flattened or not (``--set flatten=``).

The generalist was trained on backgrounds that vary by at most ±30 % over a frame. Review 14
found false positives by the thousand on a cell-like blob of background (400 on 30
photons/px: JI@100 0.07) and on steps. Fresh simulations (seeds 8200 + i) of 128 × 128
pixels of 100 nm, σ 130 nm, 1,500–3,000 photons, 0.5 emitters/µm², on backgrounds drawn from
a map: uniform 30; Gaussian blobs (σ 20 px) of 100, 250 and 400 on 30; a gradient 20 → 300
across the frame; steps 30 / 60 and 100 / 200 at the middle column. Controls without
structure: the `zerocost` preset at 2, 6 and 10/µm² and 6/µm² with background 50 (64 × 64),
and the real demo movie. Each localized as shipped (flattened, tiles of 16 px), with
``flatten=false``, and flattened on tiles of 32 px.

Usage: python experiments/background_flatten.py [--threads 1] [--frames 12]
Writes experiments/results/background_flatten.{json,md}.
"""
from __future__ import annotations

import functools
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import (SCORE_KEYS, demo_movie, rows_experiment,  # noqa: E402
                              score_row)

MODEL = "builtin:gridnet-generalist"
_SPOTS = ["n_rows=128", "n_cols=128", "activation.density_per_um2=0.5",
          "emitters.photons_distribution=uniform", "emitters.photons_min=1500",
          "emitters.photons_max=3000", "emitters.sigma_nm=130", "emitters.sigma_std_nm=0"]


def _maps(size: int = 128) -> dict[str, np.ndarray]:
    r, c = np.mgrid[:size, :size].astype(np.float64)
    blob = np.exp(-((r - size / 2) ** 2 + (c - size / 2) ** 2) / (2 * 20.0 ** 2))
    step = (c >= size // 2).astype(np.float64)
    return {"uniform 30": np.full((size, size), 30.0),
            "blob 100 on 30": 30 + 100 * blob, "blob 250 on 30": 30 + 250 * blob,
            "blob 400 on 30": 30 + 400 * blob,
            "gradient 20 → 300": 20 + 280 * c / (size - 1),
            "step 30 / 60": 30 + 30 * step, "step 100 / 200": 100 + 100 * step}


#: (label, engine options, tile side of the flattening or None).
MODES = [("flattened (16 px)", {}, None), ("not flattened", {"flatten": False}, None),
         ("flattened (32 px)", {}, 32)]


def _score_modes(case: str, photons, truth, camera, pixel_size_nm: float) -> list[dict]:
    import stormfold.gridnet.engine as gridnet_engine
    from stormfold.localize.background import flatten_structure
    from stormfold.localize.registry import load_engine

    rows = []
    for label, options, tile in MODES:
        engine = load_engine(model=MODEL, options=options)
        engine.set_camera(camera)
        if tile is not None:  # the module-level function the engine calls, with other tiles
            gridnet_engine.flatten_structure = functools.partial(flatten_structure, tile_px=tile)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                locs = engine.process_with_context(photons, None, None, 0, pixel_size_nm).locs
        finally:
            gridnet_engine.flatten_structure = flatten_structure
        rows.append(score_row({"case": case, "mode": label}, truth, locs,
                              time.perf_counter() - t0))
        print(rows[-1], flush=True)
    return rows


def rows_for(n_frames: int, work: Path) -> list[dict]:
    import tifffile

    from stormfold.simulate import build_config, simulate

    rows = []
    for i, (case, level) in enumerate(_maps().items()):
        path = work / f"map{i}.tif"
        tifffile.imwrite(path, level.astype(np.float32))
        cfg = build_config("zerocost", n_frames=n_frames, seed=8200 + i, overrides=[
            *_SPOTS, f"background.photons={level.mean()}", f"background.map={path}"])
        sim = simulate(cfg)
        rows += _score_modes(case, cfg.camera.backward(sim.movie), sim.truth, cfg.camera,
                             cfg.pixel_size_nm)
    for j, (d, bg) in enumerate([(2, 0), (6, 0), (10, 0), (6, 50)]):
        cfg = build_config("zerocost", n_frames=n_frames, seed=8300 + j, overrides=[
            f"activation.density_per_um2={d}", f"background.photons={bg}"])
        sim = simulate(cfg)
        rows += _score_modes(f"zerocost {d}/µm², background {bg}", cfg.camera.backward(sim.movie),
                             sim.truth, cfg.camera, cfg.pixel_size_nm)
    demo = demo_movie()
    if demo is not None:
        photons, truth, camera = demo
        rows += _score_modes("real demo movie", photons, truth, camera, 100.0)
    return rows


_KEYS = ["case", "mode", *SCORE_KEYS]


def main() -> None:
    rows_experiment(__doc__, "background_flatten.py",
                    lambda a: f"gridnet on structured backgrounds (model {MODEL}, {a.frames} "
                              f"frames per movie)", _KEYS,
                    lambda a, work: rows_for(a.frames, work), lambda r: r["mode"],
                    options=(("--frames", int, 12),))


if __name__ == "__main__":
    main()
