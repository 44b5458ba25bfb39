"""Classical engine throughput: frames/s on 64×64 frames at 0.5 and 2 emitters/µm².

Two numbers per case: the engine alone (``ClassicEngine.process`` on frames already in
photons, batches of 64 frames) and the whole ``localize_movie`` run (read the TIFF, convert
ADU → photons, localize, write the CSV and images). The engine uses one thread per process
(its ``threads`` option). Frames/s are wall-clock; on a shared machine compare
``engine_frames_per_cpu_s`` (frames per second of the process's CPU time) and the load
average recorded with each row. Also the accuracy at low density (Jaccard, RMSE against the
CRLB) and the calibration throughput.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, run_isolated, run_main  # noqa: E402

N_FRAMES = 2000
BATCH = 64


def case(preset: str, density: float, n_frames: int) -> dict:
    from stormfold.localize import localize_movie
    from stormfold.localize.classic.engine import build_engine
    from stormfold.simulate import build_config, simulate, simulate_to_folder

    overrides = [f"activation.density_per_um2={density}", "structure.kind=uniform"]
    cfg = build_config(preset, n_frames=n_frames, seed=0, overrides=overrides)
    sim = simulate(cfg)
    photons = cfg.camera.backward(sim.movie)
    engine = build_engine()
    engine.set_camera(cfg.camera)
    engine.process(photons[:BATCH], 0, cfg.pixel_size_nm)  # warm-up (kernels, caches)
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    n_locs = 0
    for a in range(0, n_frames, BATCH):
        n_locs += len(engine.process(photons[a:a + BATCH], a, cfg.pixel_size_nm).locs)
    engine_s, engine_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    with tempfile.TemporaryDirectory() as tmp:
        simulate_to_folder(cfg, Path(tmp) / "sim", progress=False)
        t0 = time.perf_counter()
        localize_movie(Path(tmp) / "sim" / "movie.tif", build_engine(), Path(tmp) / "loc",
                       batch_frames=BATCH, progress=False)
        run_s = time.perf_counter() - t0
    return {"preset": preset, "density_per_um2": density, "frames": n_frames,
            "emitters_per_frame": round(len(sim.truth) / n_frames, 1),
            "locs_per_frame": round(n_locs / n_frames, 1),
            "engine_frames_per_s": n_frames / engine_s,
            "engine_frames_per_cpu_s": n_frames / engine_cpu_s,
            "localize_frames_per_s": n_frames / run_s, "load_avg": load}


def accuracy_case(preset: str, density: float, n_frames: int) -> dict:
    """Jaccard (100 nm, 450 nm border), RMSE of the pairs matched within 50 nm against the
    reported CRLB (all pairs, and pairs whose emitter has no neighbour within 500 nm)."""
    import numpy as np
    import pandas as pd
    from scipy.spatial import cKDTree

    from stormfold.evaluate import evaluate, match
    from stormfold.evaluate.metrics import border_mask
    from stormfold.localize.classic.engine import build_engine
    from stormfold.simulate import build_config, simulate

    cfg = build_config(preset, n_frames=n_frames, seed=2, overrides=[
        f"activation.density_per_um2={density}", "structure.kind=uniform"])
    sim = simulate(cfg)
    engine = build_engine()
    engine.set_camera(cfg.camera)
    px = cfg.pixel_size_nm
    locs = pd.concat([engine.process(cfg.camera.backward(sim.movie[a:a + BATCH]), a, px).locs
                      for a in range(0, n_frames, BATCH)], ignore_index=True)
    fov = (cfg.n_cols * px, cfg.n_rows * px)
    m = evaluate(sim.truth, locs, tolerances_nm=(100,), border_nm=450, fov_nm=fov)
    t = sim.truth
    nn = cKDTree(np.stack([t.x_nm + t.frame * 1e7, t.y_nm], 1)).query(
        np.stack([t.x_nm + t.frame * 1e7, t.y_nm], 1), k=2)[0][:, 1]
    keep_t = border_mask(t.x_nm.values, t.y_nm.values, 450, fov)
    t = t[keep_t].reset_index(drop=True)
    nn = nn[keep_t]
    l = locs[border_mask(locs.x_nm.values, locs.y_nm.values, 450, fov)].reset_index(drop=True)
    pairs = match(t, l, 50)
    unc = l.uncertainty_nm.to_numpy()[pairs.locs_index]
    err2 = pairs.dx_nm ** 2 + pairs.dy_nm ** 2
    iso = nn[pairs.truth_index] > 500
    ratio = float(np.sqrt(err2.mean()) / np.sqrt(np.mean(2 * unc ** 2)))
    ratio_iso = float(np.sqrt(err2[iso].mean()) / np.sqrt(np.mean(2 * unc[iso] ** 2)))
    photons = np.median(l.photons.to_numpy()[pairs.locs_index] / t.photons.to_numpy()[pairs.truth_index])
    return {"preset": preset, "density_per_um2": density, "frames": n_frames,
            "jaccard_100nm": float(m.jaccard.iloc[0]), "rmse_50nm": float(np.sqrt(err2.mean())),
            "crlb_nm": float(np.sqrt(np.mean(2 * unc ** 2))), "rmse_over_crlb": ratio,
            "rmse_over_crlb_isolated": ratio_iso, "photons_ratio": float(photons)}


def calibrate_case(preset: str, n_frames: int, emccd: bool) -> dict:
    from stormfold.calibrate import calibrate
    from stormfold.simulate import build_config, simulate_to_folder

    cfg = build_config(preset, n_frames=n_frames, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        simulate_to_folder(cfg, Path(tmp) / "sim", progress=False)
        t0 = time.perf_counter()
        calibrate(Path(tmp) / "sim" / "movie.tif", Path(tmp) / "cal", emccd=emccd, qe=cfg.camera.qe)
        seconds = time.perf_counter() - t0
    return {"preset": preset, "density_per_um2": cfg.activation.density_per_um2,
            "frames": n_frames, "calibrate_s": seconds, "calibrate_frames_per_s": n_frames / seconds}


def main() -> None:
    rows = []
    for preset in ("zerocost", "challenge2016"):
        for density in (0.5, 2.0):
            rows.append(run_isolated(case, preset, density, N_FRAMES))
    report("classic", rows, ["preset", "density_per_um2", "frames", "emitters_per_frame",
                             "locs_per_frame", "engine_frames_per_s", "engine_frames_per_cpu_s",
                             "localize_frames_per_s", "load_avg", "peak_rss_mb"])
    acc = [run_isolated(accuracy_case, p, d, 1000) for p, d in
           (("thunderstorm", 0.1), ("challenge2016", 0.1), ("zerocost", 0.1), ("zerocost", 0.5))]
    report("classic_accuracy", acc, ["preset", "density_per_um2", "frames", "jaccard_100nm",
                                     "rmse_50nm", "crlb_nm", "rmse_over_crlb",
                                     "rmse_over_crlb_isolated", "photons_ratio", "peak_rss_mb"])
    cal = [run_isolated(calibrate_case, "zerocost", 1000, False),
           run_isolated(calibrate_case, "challenge2016", 1000, True)]
    report("calibrate", cal, ["preset", "density_per_um2", "frames", "calibrate_s",
                              "calibrate_frames_per_s", "peak_rss_mb"])


if __name__ == "__main__":
    run_main(main)
