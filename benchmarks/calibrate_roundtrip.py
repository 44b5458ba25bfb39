"""Calibration round trip: simulate with known parameters, calibrate the movie, compare.

Prints one row per case (true → estimated) and writes benchmarks/results/calibrate_roundtrip.json.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, run_isolated, run_main  # noqa: E402

CASES = [
    # name, preset, frames, overrides, calibrate options
    ("zerocost (6/µm²)", "zerocost", 1000, [], {}),
    ("challenge2016 (EMCCD, filaments)", "challenge2016", 5000, [],
     {"emccd": True, "qe": 0.9, "em_gain": 300.0}),
    ("low density (zerocost camera, 0.5/µm²)", "zerocost", 1000,
     ["activation.density_per_um2=0.5"], {}),
    ("thunderstorm (0.1/µm², no read noise)", "thunderstorm", 2000, [], {}),
    # Review 20 D1: wide PSFs with background read the gain 15–40 % low before the
    # deviance cut took its spread from the lower quartile.
    ("wide PSF, background 100 (σ 180 nm, 2 e⁻/ADU, 0.5/µm²)", "zerocost", 1000,
     ["emitters.sigma_nm=180", "emitters.sigma_std_nm=0", "background.photons=100",
      "camera.e_per_adu=2", "camera.readout_e=2", "camera.baseline_adu=100",
      "activation.density_per_um2=0.5"], {}),
    ("wide PSF, background 200 (σ 150 nm, 0.5 e⁻/ADU, 1/µm²)", "zerocost", 1000,
     ["emitters.sigma_nm=150", "emitters.sigma_std_nm=0", "background.photons=200",
      "camera.e_per_adu=0.5", "camera.readout_e=2", "camera.baseline_adu=100",
      "activation.density_per_um2=1"], {}),
]


def case(name: str, preset: str, n_frames: int, overrides: list[str], options: dict) -> dict:
    from stormfold.calibrate import calibrate
    from stormfold.simulate import build_config, simulate_to_folder

    cfg = build_config(preset, n_frames=n_frames, seed=1, overrides=overrides)
    cam = cfg.camera
    with tempfile.TemporaryDirectory() as tmp:
        simulate_to_folder(cfg, Path(tmp) / "sim", progress=False)
        t0 = time.perf_counter()
        r = calibrate(Path(tmp) / "sim" / "movie.tif", Path(tmp) / "cal", **options)
        seconds = time.perf_counter() - t0
    c, e, sim = r.camera, r.emitters, r.simulation
    return {
        "case": name, "frames": n_frames,
        "baseline": f"{cam.baseline_adu:g} → {c.baseline_adu:.1f}",
        "read_noise_adu": f"{cam.readout_e / cam.e_per_adu:.3g} → {c.read_noise_adu:.3g}",
        "e_per_adu": f"{cam.e_per_adu:.4g} → {r.e_per_adu:.4g}" + (
            "" if r.line.identifiable or options.get("emccd") else " (assumed)"),
        "sigma_nm": f"{cfg.emitters.sigma_nm:.1f} → {e.sigma_nm:.1f}",
        "photons": f"{cfg.emitters.mean_photons:.0f} → {e.photons_mean:.0f}",
        "background": f"{cfg.background.photons:g} → {sim['background']['photons']:.3g}",
        "density": f"{cfg.activation.density_per_um2:g} → {e.density_per_um2:.3g}",
        "counted": f"{e.density_counted_per_um2:.3g}",
        "source": e.source.split(" (")[0], "seconds": seconds,
        "errors": {"baseline_adu": c.baseline_adu - cam.baseline_adu,
                   "read_noise_rel": c.read_noise_adu / max(cam.readout_e / cam.e_per_adu, 1e-12) - 1,
                   "sigma_rel": e.sigma_nm / cfg.emitters.sigma_nm - 1,
                   "photons_rel": e.photons_mean / cfg.emitters.mean_photons - 1,
                   "background_rel": (sim["background"]["photons"] / cfg.background.photons - 1)
                   if cfg.background.photons else None,
                   "counted_over_true": e.density_counted_per_um2 / cfg.activation.density_per_um2},
        "notes": r.provenance["notes"],
    }


def main() -> None:
    rows = [run_isolated(case, *c) for c in CASES]
    report("calibrate_roundtrip", rows, ["case", "frames", "baseline", "read_noise_adu",
                                         "e_per_adu", "sigma_nm", "photons", "background",
                                         "density", "counted", "source", "seconds"])
    for r in rows:
        for note in r.get("notes", []):
            print(f"[{r['case']}] {note}")


if __name__ == "__main__":
    run_main(main)
