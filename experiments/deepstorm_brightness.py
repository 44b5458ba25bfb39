"""Deep-STORM's brightness matching: emitters brighter or dimmer than its training ones.

The shipped ``builtin:deepstorm-zerocost`` was trained on emitters of 2,250 ± 250 photons.
Fresh ``zerocost`` movies (64 × 64 px, 8 frames, seeds 8900 + i) whose emitters have
700–8,000 photons (spread ± 11 %, as in training; 3,000 and 1,500 last) at 1 and 6 emitters/µm², and the real
demo movie as a control, localized with ``brightness=none`` (as before the matching) and
``brightness=match`` (the default: the ratio measured on the first frames,
:mod:`stormfold.deepstorm.brightness`). Scores: JI at 50/100 nm, precision, recall, RMSE at
100 nm, localizations and true emitters, the ratio used and the fixed-point steps.

Usage: python experiments/deepstorm_brightness.py [--threads 1]
Writes experiments/results/deepstorm_brightness.{json,md}.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import demo_movie, rows_experiment, scores, simulate  # noqa: E402

MODEL = "builtin:deepstorm-zerocost"
#: (photons per emitter, emitters per µm²).
CASES = [(700, 1), (1000, 1), (2250, 1), (5000, 1), (8000, 1), (1000, 6), (2250, 6),
         (5000, 6), (3000, 1), (1500, 1)]


def _localize(movie, camera, truth, mode, pixel_size_nm=None) -> dict:
    import warnings

    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    engine = load_engine(model=MODEL, options={"brightness": mode})
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        locs = localize_movie(movie, engine, camera=camera, pixel_size_nm=pixel_size_nm,
                              batch_frames=16, progress=False).locs
    b = engine.brightness
    return {**scores(truth, locs), "ratio": None if b is None else round(b.ratio, 3),
            "steps": None if b is None else b.steps,
            "seconds": round(time.perf_counter() - t0, 1)}


def rows_for(args, work: Path) -> list[dict]:
    import tifffile

    from stormfold.io.tables import read_table
    from stormfold.physics.camera import Camera

    movies = []
    for i, (photons, density) in enumerate(CASES):
        cfg = simulate(work / f"m{i}", "zerocost", 8, 8900 + i,
                       [f"emitters.photons_mean={photons}",
                        f"emitters.photons_std={photons / 9:.0f}",
                        f"activation.density_per_um2={density}"])
        movies.append((f"{photons} photons, {density}/µm²", work / f"m{i}" / "movie.tif",
                       cfg.camera, read_table(work / f"m{i}" / "truth.csv"), None))
    demo = demo_movie()
    if demo is not None:
        frames, truth, _ = demo
        tifffile.imwrite(work / "demo.tif", frames.astype("float32"))
        movies.append(("real demo movie", work / "demo.tif", Camera(), truth, 100.0))
    rows = []
    for name, path, camera, truth, px in movies:
        for mode in ("none", "match"):
            rows.append({"case": name, "brightness": mode,
                         **_localize(path, camera, truth, mode, px)})
            print(rows[-1], flush=True)
    return rows


_KEYS = ["case", "brightness", "ji_50", "ji_100", "precision", "recall", "rmse_nm", "n_locs",
         "n_truth", "ratio", "steps", "seconds"]


def main() -> None:
    rows_experiment(__doc__, "deepstorm_brightness.py",
                    lambda a: f"Deep-STORM brightness matching (model {MODEL})", _KEYS,
                    rows_for, lambda r: f"brightness {r['brightness']}")


if __name__ == "__main__":
    main()
