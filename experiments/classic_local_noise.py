"""The classic engine's detection threshold against the frame's noise or the local noise.

The detector measures the noise of the band-passed frame in its darkest tenth; on a
background step or under a cell that is the dark region's noise, and the bright region fills
with false detections (review 14: a step 10 | 200 photons/px, JI@100 0.48). With
``local_noise`` (the default) the noise is scaled per pixel to the local background level
(√((level + γ) / (dark level + γ)), γ the read-noise variance). Fresh simulations (seed 77):
`thunderstorm`, `challenge2016` and `zerocost` at 0.1/µm² (200 frames), `zerocost` at 0.5
and 2/µm², `thunderstorm` at 0.5/µm², and `zerocost` at 0.5/µm² on a background step
10 | 200 photons/px and on a Gaussian blob of 400 on 30 (σ 12 px), 64 × 64 pixels.

Usage: python experiments/classic_local_noise.py [--threads 1]
Writes experiments/results/classic_local_noise.{json,md}.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import SCORE_KEYS, rows_experiment, score_row  # noqa: E402

_D = "activation.density_per_um2"
#: (case, preset, overrides, frames); "{step}" and "{blob}" name the background maps.
CASES = [("thunderstorm 0.1/µm²", "thunderstorm", [f"{_D}=0.1"], 200),
         ("challenge2016 0.1/µm²", "challenge2016", [f"{_D}=0.1"], 200),
         ("zerocost 0.1/µm²", "zerocost", [f"{_D}=0.1"], 200),
         ("zerocost 0.5/µm²", "zerocost", [f"{_D}=0.5"], 80),
         ("zerocost 2/µm²", "zerocost", [f"{_D}=2"], 40),
         ("thunderstorm 0.5/µm²", "thunderstorm", [f"{_D}=0.5"], 80),
         ("zerocost 0.5/µm², background step 10 / 200", "zerocost",
          [f"{_D}=0.5", "background.photons=105", "background.map={step}"], 60),
         ("zerocost 0.5/µm², background blob 400 on 30", "zerocost",
          [f"{_D}=0.5", "background.photons=80", "background.map={blob}"], 60)]


def rows_for(work: Path) -> list[dict]:
    import tifffile

    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate

    r, c = np.mgrid[:64, :64]
    maps = {"step": 10 + 190 * (c >= 32),
            "blob": 30 + 400 * np.exp(-((r - 32) ** 2 + (c - 32) ** 2) / (2 * 12.0 ** 2))}
    for name, level in maps.items():
        tifffile.imwrite(work / f"{name}.tif", level.astype(np.float32))
    rows = []
    for case, preset, over, frames in CASES:
        over = [o.format(step=work / "step.tif", blob=work / "blob.tif") for o in over]
        cfg = build_config(preset, n_frames=frames, seed=77, overrides=over)
        sim = simulate(cfg)
        photons = cfg.camera.backward(sim.movie)
        for local in (False, True):
            engine = load_engine(engine="classic", options={"local_noise": local})
            engine.set_camera(cfg.camera)
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                locs = engine.process(photons, 0, cfg.pixel_size_nm).locs
            rows.append(score_row({"case": case, "local_noise": local}, sim.truth, locs,
                                  time.perf_counter() - t0))
            print(rows[-1], flush=True)
    return rows


_KEYS = ["case", "local_noise", *SCORE_KEYS]


def main() -> None:
    rows_experiment(__doc__, "classic_local_noise.py",
                    lambda a: "Classic engine: frame noise or local noise", _KEYS,
                    lambda a, work: rows_for(work), lambda r: f"local_noise {r['local_noise']}")


if __name__ == "__main__":
    main()
