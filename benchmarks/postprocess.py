"""Post-processing of 10⁷ localizations: seconds and peak memory per step, plus accuracy.

The table is synthetic but realistic: 10⁶ fluorophores on 80 filaments over a 51.2 µm
field (512 × 512 camera pixels of 100 nm), each blinking in ON-events of geometric length
(mean 3 frames), 20 000 frames, 500 localizations per frame; per-localization precision
8–26 nm (``uncertainty_nm`` from the photons) and a drift of a few hundred nm (constant
velocity + random walk). Each step runs in a fresh process (peak RSS is its own: the
table plus the step); the table is loaded from a .npy file before the clock starts.

Steps: drift = RCC (10 bins, 20 nm); link = 80 nm, 1 dark frame; renderings at 10 nm
(5120 × 5120); filter = an expression; FRC at 10 nm. Accuracy column: drift — residual
drift RMS against the true trajectory (nm, after removing the constant offset); link —
pairwise precision/recall of the groups against the true ON-events (runs of one
fluorophore with gaps ≤ max_dark). The first row is the table alone (its loading).

    python benchmarks/postprocess.py [--n 10000000]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, run_isolated, run_main  # noqa: E402

N_FRAMES = 20_000
FOV_PX = 512
PIXEL_NM = 100.0


def generate(folder: str, n_target: int, seed: int = 0) -> dict:
    """Write frame, x, y, photons, uncertainty, site and the true drift as .npy files."""
    from stormfold.simulate import build_config
    from stormfold.simulate.structures import make_structure

    rng = np.random.default_rng(seed)
    cfg = build_config("challenge2016", overrides=[f"n_rows={FOV_PX}", f"n_cols={FOV_PX}",
                                                   "structure.n_filaments=80"], seed=seed)
    n_events = n_target // 3
    n_sites = n_events // 3
    sx, sy = make_structure(cfg, rng).sample(n_sites, rng)
    site = rng.integers(0, n_sites, n_events)
    length = rng.geometric(1 / 3, n_events)
    start = rng.integers(0, N_FRAMES, n_events)
    rep = np.repeat(np.arange(n_events), length)
    frame = start[rep] + (np.arange(rep.size) - np.repeat(np.cumsum(length) - length, length))
    keep = frame < N_FRAMES
    rep, frame = rep[keep], frame[keep]
    order = np.argsort(frame, kind="stable")
    rep, frame = rep[order], frame[order]
    t = np.arange(N_FRAMES, dtype=np.float64)
    walk = np.cumsum(rng.normal(0, 0.1, (N_FRAMES, 2)), axis=0)
    drift = np.column_stack([0.02 * t, -0.015 * t]) + walk - walk[0]
    photons = rng.uniform(500, 5000, rep.size)
    uncertainty = 15.0 * np.sqrt(1500.0 / photons)
    x = sx[site[rep]] + drift[frame, 0] + rng.normal(0, 1, rep.size) * uncertainty
    y = sy[site[rep]] + drift[frame, 1] + rng.normal(0, 1, rep.size) * uncertainty
    arrays = {"frame": frame, "x_nm": x, "y_nm": y, "photons": photons,
              "uncertainty_nm": uncertainty, "site": site[rep], "drift": drift}
    for name, values in arrays.items():
        np.save(Path(folder) / f"{name}.npy", values)
    return {"n": int(rep.size)}


def _table(folder: str):
    from stormfold.table import make_table

    load = {n: np.load(Path(folder) / f"{n}.npy")
            for n in ("frame", "x_nm", "y_nm", "photons", "uncertainty_nm")}
    return make_table(load.pop("frame"), load.pop("x_nm"), load.pop("y_nm"), **load)


def case(folder: str, step: str) -> dict:
    import pandas as pd

    from stormfold.postprocess import correct_drift, filter_table, frc, link, render
    from stormfold.postprocess.drift import residual_rms_nm
    from stormfold.postprocess.link import on_events, pair_precision_recall

    table = _table(folder)
    row: dict = {"step": step, "n": len(table)}
    t0 = time.perf_counter()
    if step == "load table (baseline)":
        row["seconds"] = 0.0
        row["accuracy"] = "peak RSS of the table alone"
    elif step == "drift rcc":
        _, result = correct_drift(table, "rcc", n_frames=N_FRAMES, bins=10, pixel_nm=20)
        row["seconds"] = time.perf_counter() - t0
        drift = np.load(Path(folder) / "drift.npy")
        truth = pd.DataFrame({"frame": np.arange(N_FRAMES), "dx_nm": drift[:, 0],
                              "dy_nm": drift[:, 1]})
        row["accuracy"] = f"residual {residual_rms_nm(result.drift, truth):.2f} nm RMS " \
                          f"(drift RMS {result.stats['drift_rms_nm']:.0f} nm)"
    elif step == "link":
        result = link(table, radius_nm=80, max_dark=1, weight="photons")
        row["seconds"] = time.perf_counter() - t0
        events = on_events(table["frame"].to_numpy(), np.load(Path(folder) / "site.npy"), 1)
        s = pair_precision_recall(events, result.labels)
        row["accuracy"] = (f"{len(result.table)} groups; pairwise precision "
                           f"{s['precision']:.4f}, recall {s['recall']:.4f}")
    elif step.startswith("render"):
        fov = (FOV_PX * PIXEL_NM, FOV_PX * PIXEL_NM)
        if step == "render histogram":
            image = render(table, 10.0, "histogram", fov_nm=fov)
        elif step == "render gaussian fixed":
            image = render(table, 10.0, "gaussian", 20.0, fov_nm=fov)
        else:
            image = render(table, 10.0, "gaussian", "uncertainty", fov_nm=fov)
        row["seconds"] = time.perf_counter() - t0
        row["accuracy"] = f"{image.shape[1]} × {image.shape[0]} px of 10 nm"
    elif step == "filter":
        out, _ = filter_table(table, expr="photons > 1000 and uncertainty_nm < 20")
        row["seconds"] = time.perf_counter() - t0
        row["accuracy"] = f"kept {len(out)}"
    elif step == "frc":
        result = frc(table, pixel_nm=10.0)
        row["seconds"] = time.perf_counter() - t0
        row["accuracy"] = f"resolution {result.resolution_nm:.1f} nm"
    else:
        raise ValueError(step)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="localizations (about)")
    args = parser.parse_args()
    steps = ["load table (baseline)", "drift rcc", "link", "render histogram", "render gaussian fixed",
             "render gaussian uncertainty", "filter", "frc"]
    with tempfile.TemporaryDirectory() as folder:
        info = run_isolated(generate, folder, args.n)
        if "error" in info:
            raise SystemExit(info["error"])
        rows = []
        for step in steps:
            row = run_isolated(case, folder, step)
            if "error" in row:
                row = {"step": step, "error": row["error"]}
            rows.append(row)
            print(row, flush=True)
    report("postprocess", rows, ["step", "n", "seconds", "peak_rss_mb", "accuracy"])


if __name__ == "__main__":
    run_main(main)
