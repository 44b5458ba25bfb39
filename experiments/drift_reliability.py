"""RCC reliability: what the figures of :class:`stormfold.postprocess.drift.DriftReliability`
look like on data that support a drift estimate and on data that do not.

Cases (3 seeds each, RCC at 20 nm, 64 × 64 camera pixels of 100 nm, field 6.4 µm):

* **filaments** (preset ``challenge2016``: 6 filaments) at 0.5 and 0.1 active emitters per
  µm², 20–2000 frames, without drift and with a 300 nm linear drift; the table is the
  truth with 15 nm Gaussian localization noise;
* **no structure** (preset ``zerocost`` and ``thunderstorm``: fresh uniform positions every
  frame), without drift: nothing to correlate;
* **localized**: the case of issue 13 — a 20-frame ``zerocost`` simulation without drift,
  localized with ``--engine classic``, RCC with 4 bins.

For each case: localizations per bin, median correlation-peak z, pairs rejected,
split-half precision, RMS of the estimated drift, the error of the estimate against the
true drift (RMS over frames, constant offset removed), the verdict, and the error of what
is applied (zero drift when nothing is applied).

Writes ``experiments/results/drift_reliability.json`` and ``.md``. Run (about 5 minutes
of 2 CPU cores):

    nice -n 10 python experiments/drift_reliability.py
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"

FILAMENT_RUNS = [(20, 4), (100, 10), (200, 10), (1000, 10), (2000, 10)]


def _jitter(table, sigma_nm: float, seed: int):
    rng = np.random.default_rng(seed)
    out = table.copy()
    out["x_nm"] = out["x_nm"] + rng.normal(0, sigma_nm, len(out))
    out["y_nm"] = out["y_nm"] + rng.normal(0, sigma_nm, len(out))
    return out


def _truth_case(preset: str, n_frames: int, density, drift_nm: float, seed: int):
    from stormfold.simulate import build_config, simulate_truth

    velocity = drift_nm / n_frames / math.sqrt(2)
    overrides = [f"drift.velocity_nm_per_frame=[{velocity},{-velocity}]"]
    if density is not None:
        overrides.append(f"activation.density_per_um2={density}")
    cfg = build_config(preset, n_frames=n_frames, seed=seed, overrides=overrides)
    truth, true_drift = simulate_truth(cfg)
    return _jitter(truth, 15.0, seed), true_drift


def _localized_case(seed: int, folder: Path):
    import pandas as pd

    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate_to_folder

    sim = folder / f"zerocost-{seed}"
    simulate_to_folder(build_config("zerocost", n_frames=20, seed=seed), sim, progress=False)
    locs = localize_movie(sim / "movie.tif", load_engine(engine="classic"), progress=False).locs
    return locs, pd.read_csv(sim / "drift.csv") if (sim / "drift.csv").is_file() else None


def measure(kind: str, locs, true_drift, n_frames: int, bins: int, **labels) -> dict:
    import pandas as pd

    from stormfold.postprocess.drift import estimate_drift_rcc, residual_rms_nm

    t0 = time.perf_counter()
    result = estimate_drift_rcc(locs, n_bins=bins, pixel_nm=20, n_frames=n_frames,
                                field_nm=6400.0)
    seconds = time.perf_counter() - t0
    if true_drift is None:
        true_drift = pd.DataFrame({"frame": np.arange(n_frames), "dx_nm": 0.0, "dy_nm": 0.0})
    r = result.reliability
    error = residual_rms_nm(result.drift, true_drift)
    applied = result.drift if r.applied else result.drift.assign(dx_nm=0.0, dy_nm=0.0)
    return {"kind": kind, **labels, "frames": n_frames, "bins": bins,
            "locs_per_bin": round(r.locs_per_bin_min), "peak_z": round(r.peak_z_median, 1),
            "rejected": f"{r.pairs_rejected}/{r.pairs}",
            # The table's column is the split-half figure (the significance test's).
            "precision_nm": (None if r.precision_split_half_nm is None
                             else round(r.precision_split_half_nm, 1)),
            "precision_with_temporal_nm": (None if r.precision_nm is None
                                           else round(r.precision_nm, 1)),
            "estimate_rms_nm": round(r.drift_rms_nm, 1), "drift_max_nm": round(r.drift_max_nm),
            "estimate_error_nm": round(error, 1),
            "applied_error_nm": round(residual_rms_nm(applied, true_drift), 1),
            "verdict": r.verdict, "problems": r.problems, "seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    import tempfile

    rows = []
    seeds = range(1, args.seeds + 1)
    for seed in seeds:
        for density in (0.5, 0.1):
            for n_frames, bins in FILAMENT_RUNS:
                for drift_nm in (0.0, 300.0):
                    locs, true_drift = _truth_case("challenge2016", n_frames, density, drift_nm,
                                                   seed)
                    rows.append(measure("filaments", locs, true_drift, n_frames, bins,
                                        density=density, drift_nm=drift_nm, seed=seed))
                    print(rows[-1], flush=True)
        for preset, n_frames, bins in (("zerocost", 20, 4), ("zerocost", 200, 10),
                                       ("thunderstorm", 1000, 10)):
            locs, true_drift = _truth_case(preset, n_frames, None, 0.0, seed)
            rows.append(measure(f"no structure ({preset})", locs, true_drift, n_frames, bins,
                                density=None, drift_nm=0.0, seed=seed))
            print(rows[-1], flush=True)
        with tempfile.TemporaryDirectory() as folder:
            locs, true_drift = _localized_case(seed, Path(folder))
        rows.append(measure("localized zerocost (issue 13)", locs, true_drift, 20, 4,
                            density=None, drift_nm=0.0, seed=seed))
        print(rows[-1], flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "drift_reliability.json").write_text(json.dumps(
        {"experiment": "drift_reliability", "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
         "rows": rows}, indent=1))
    (RESULTS / "drift_reliability.md").write_text(markdown(rows))
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    """One line per condition: seeds pooled (ranges min–max)."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["kind"], row["density"], row["frames"], row["bins"], row["drift_nm"])
        groups.setdefault(key, []).append(row)

    def span(values, fmt="{:g}"):
        values = [v for v in values if v is not None]
        if not values:
            return "–"
        lo, hi = min(values), max(values)
        return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}–{fmt.format(hi)}"

    lines = ["| data | density /µm² | frames / bins | drift (nm) | locs per bin | peak z | "
             "pairs rejected | split-half precision (nm) | estimate error (nm) | verdicts | "
             "applied error (nm) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (kind, density, frames, bins, drift), group in groups.items():
        verdicts = {}
        for row in group:
            verdicts[row["verdict"]] = verdicts.get(row["verdict"], 0) + 1
        rejected = [int(r["rejected"].split("/")[0]) for r in group]
        lines.append(
            f"| {kind} | {density if density is not None else '–'} | {frames} / {bins} | "
            f"{drift:g} | {span([r['locs_per_bin'] for r in group])} | "
            f"{span([r['peak_z'] for r in group])} | "
            f"{span(rejected)}/{group[0]['rejected'].split('/')[1]} | "
            f"{span([r['precision_nm'] for r in group])} | "
            f"{span([r['estimate_error_nm'] for r in group])} | "
            f"{', '.join(f'{n}× {v}' for v, n in verdicts.items())} | "
            f"{span([r['applied_error_nm'] for r in group])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
