"""Threshold of the saturation warning (review 14, D6): pixels at the sampled maximum.

:func:`stormfold.io.movie_checks.adu_warnings` warns when at least
``SATURATED_MIN_PIXELS`` of the 16 sampled frames' pixels sit at the movie's saturation
value (the dtype's maximum, or 4095 / 16383 / 65535 when that is the sampled maximum). A
movie that is not clipped can still have its maximum land on 4095 by chance; what matters
is how many pixels then share that maximum. This script counts, on uint16 `zerocost`
simulations (64 × 64 px, 16 frames, seeds 0–14) that are not clipped — photons per emitter
2,250 / 10,000 / 30,000, background 0 / 30 / 100 photons/px, 0.5 / 1 / 2 e⁻ per ADU,
0.5/µm² — the pixels equal to the sampled maximum (405 movies), and on clipped ones (the
review's case: 20–100k photons, 0.3/µm², background 50, 0.5 e⁻/ADU clipped at 4095; 0.1
e⁻/ADU, clipped at 65535 by the simulator) the pixels at the saturation value.

Usage: python experiments/saturation_check.py
Writes experiments/results/saturation_check.json.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np


def _movie(seed: int, overrides: list[str]) -> np.ndarray:
    from stormfold.simulate import build_config, simulate

    cfg = build_config("zerocost", n_frames=16, seed=seed, overrides=overrides)
    return simulate(cfg).movie


def main() -> None:
    ties = Counter()
    for photons in (2250, 10000, 30000):
        for bg in (0, 30, 100):
            for e_per_adu in (0.5, 1.0, 2.0):
                for seed in range(15):
                    m = _movie(seed, [f"emitters.photons_mean={photons}",
                                      f"emitters.photons_std={photons // 10}",
                                      f"background.photons={bg}", f"camera.e_per_adu={e_per_adu}",
                                      "activation.density_per_um2=0.5"])
                    assert m.max() < 65535  # not clipped
                    ties[int(np.count_nonzero(m == m.max()))] += 1
    bright = ["emitters.photons_distribution=uniform", "emitters.photons_min=20000",
              "emitters.photons_max=100000", "activation.density_per_um2=0.3",
              "background.photons=50"]
    clipped = {}
    for name, e_per_adu, level in (("12-bit, clipped at 4095", 0.5, 4095),
                                   ("16-bit, clipped at 65535", 0.1, 65535),
                                   ("12-bit, 10,000 photons", 0.5, 4095)):
        over = [*bright, f"camera.e_per_adu={e_per_adu}"]
        if "10,000" in name:
            over = [*over, "emitters.photons_min=8000", "emitters.photons_max=12000"]
        counts = []
        for seed in range(5):
            m = np.minimum(_movie(seed, over), level)
            counts.append(int(np.count_nonzero(m == level)))
        clipped[name] = counts
    result = {"unclipped: pixels at the sampled maximum -> movies": dict(sorted(ties.items())),
              "clipped: pixels at the saturation value (5 seeds)": clipped}
    print(json.dumps(result, indent=1))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "saturation_check.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
