"""gridnet accuracy on fresh simulations and on the real Deep-STORM demo movie, side by side
with the shipped Deep-STORM and the classic engine.

Tables (JI at 50/100/250 nm, precision, recall, RMSE at 100 nm):

1. ``zerocost`` camera at 0.5, 2, 6 and 10 emitters/µm² and the ``zerocost`` preset with
   background 50 and 200 photons/px (fresh seeds, never used for training);
2. the real ``ArtificialDataset_demo1.tif`` (``--baseline 100 --e-per-adu 0.446``);
3. generalisation: ``thunderstorm``, ``challenge2016`` and ``zerocost`` + background 100,
   the generalist against a gridnet trained for that camera (``--specific NAME=DIR``);
4. uncertainties at 0.5/µm²: std of (x − x_true)/σx and (y − y_true)/σy over pairs matched
   within 100 nm, and RMSE (pairs ≤ 50 nm) against the Cramér–Rao bound computed at the true
   parameters with the classic engine's Fisher information (PSF σ known and σ fitted);
5. temporal context: a blinking-kinetics movie and an independent-frame movie, with the
   neighbouring frames used or not (``--set temporal=false``).

Usage: python experiments/gridnet_accuracy.py [--generalist builtin:gridnet-generalist]
       [--specific thunderstorm=DIR --specific challenge2016=DIR --specific zerocost_bg100=DIR]
       [--frames-scale 1.0] [--skip-deepstorm]
Writes experiments/results/gridnet_accuracy.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEEPSTORM = "builtin:deepstorm-zerocost"
TOLERANCES = (50, 100, 250)
#: Section 1: (case, simulation overrides of the ``zerocost`` preset, frames); seeds 5000 + i.
SIMULATION_CASES = [("zerocost 0.5/µm²", ["activation.density_per_um2=0.5"], 40),
                    ("zerocost 2/µm²", ["activation.density_per_um2=2"], 30),
                    ("zerocost 6/µm²", ["activation.density_per_um2=6"], 20),
                    ("zerocost 10/µm²", ["activation.density_per_um2=10"], 20),
                    ("zerocost bg 50", ["background.photons=50"], 20),
                    ("zerocost bg 200", ["background.photons=200"], 20)]
#: What the record says about the run that measured a section.
RUN_KEYS = ("when", "generalist", "cpu", "load_avg_start", "load_avg_end", "threads")


def simulate(folder: Path, preset: str, n_frames: int, seed: int, overrides: list[str]):
    from stormfold.simulate import build_config, simulate_to_folder

    cfg = build_config(preset, n_frames=n_frames, seed=seed, overrides=overrides)
    simulate_to_folder(cfg, folder, progress=False)
    return cfg


def localize(engine_spec: str, movie: Path, camera, options: dict | None = None,
             pixel_size_nm: float | None = None) -> tuple[pd.DataFrame, float]:
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    if engine_spec == "classic":
        engine = load_engine(engine="classic", options=options)
    else:
        engine = load_engine(model=engine_spec, options=options)
    t0 = time.perf_counter()
    res = localize_movie(movie, engine, camera=camera, batch_frames=16, progress=False,
                         pixel_size_nm=pixel_size_nm)
    return res.locs, time.perf_counter() - t0


def scores(truth: pd.DataFrame, locs: pd.DataFrame) -> dict:
    from stormfold.evaluate import evaluate

    m = evaluate(truth, locs, tolerances_nm=TOLERANCES)
    out = {f"ji_{int(t)}": round(float(j), 4) for t, j in zip(m.tolerance_nm, m.jaccard)}
    row = m[m.tolerance_nm == 100].iloc[0]
    out.update(precision=round(float(row.precision), 4), recall=round(float(row.recall), 4),
               rmse_nm=round(float(row.rmse_lateral_nm), 2), n_truth=int(row.n_truth),
               n_locs=int(row.n_locs))
    return out


#: The columns :func:`score_row` adds after a row's labels.
SCORE_KEYS = ["ji_50", "ji_100", "precision", "recall", "rmse_nm", "n_locs", "n_truth", "seconds"]


def score_row(head: dict, truth: pd.DataFrame, locs: pd.DataFrame, seconds: float) -> dict:
    """``head`` (the run's labels) with the :func:`scores` of a row-per-run record."""
    sc = scores(truth, locs)
    return {**head, **{k: sc[k] for k in SCORE_KEYS[:-1]}, "seconds": round(seconds, 2)}


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean of the paired differences a − b and its standard error (std of the differences
    / √n; NaN for one pair)."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    se = float(diff.std(ddof=1) / np.sqrt(diff.size)) if diff.size > 1 else float("nan")
    return float(diff.mean()), se


def markdown_table(rows: list[dict]) -> list[str]:
    """Lines of a Markdown table whose columns are the keys of the first row."""
    keys = list(rows[0])
    return ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)] + \
        ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]


def interior_ji(truth: pd.DataFrame, locs: pd.DataFrame, cfg, margin_nm: float = 100.0) -> float:
    """JI@100 of the truth and the localizations at least ``margin_nm`` inside the frame of
    the simulation ``cfg``: the border band left out, where an emitter has part of its light
    outside the frame and the simulator (unlike a camera cropping a sample) puts none
    beyond it."""
    from stormfold.evaluate import evaluate

    w, h = cfg.n_cols * cfg.pixel_size_nm, cfg.n_rows * cfg.pixel_size_nm

    def inside(t):
        return t[(t.x_nm >= margin_nm) & (t.x_nm <= w - margin_nm) & (t.y_nm >= margin_nm)
                 & (t.y_nm <= h - margin_nm)]
    m = evaluate(inside(truth), inside(locs), tolerances_nm=(100,))
    return round(float(m.jaccard.iloc[0]), 4)


def score_engines(name: str, engines: list[tuple[str, str]], movie: Path, camera,
                  truth: pd.DataFrame) -> list[dict]:
    """One row per engine: the scores of its localizations of ``movie`` against ``truth``."""
    rows = []
    for label, spec in engines:
        locs, secs = localize(spec, movie, camera)
        rows.append({"case": name, "engine": label, **scores(truth, locs),
                     "seconds": round(secs, 1)})
        print(rows[-1], flush=True)
    return rows


def crlb_nm(truth: pd.DataFrame, camera, pixel_size_nm: float, background: float,
            fit_sigma: bool) -> np.ndarray:
    """Lateral CRLB √(CRLB_x + CRLB_y) (nm) of each true emitter, alone in an 11×11 ROI,
    with the classic engine's Fisher information (Poisson + read noise as γ)."""
    import torch

    from stormfold.localize.classic.fit import fisher_information, gaussian_model

    size = 11
    excess = 2.0 if camera.em_gain > 1 else 1.0
    scale = camera.qe / excess  # photons → Poisson counts (classic engine convention)
    gamma = (camera.readout_e / (camera.em_gain * excess)) ** 2 + \
        (camera.e_per_adu / (camera.em_gain * excess)) ** 2 / 12
    n = len(truth)
    theta = torch.tensor(np.c_[np.full(n, size / 2 + 0.25), np.full(n, size / 2 - 0.15),
                               truth["photons"].to_numpy() * scale,
                               np.full(n, background * scale + camera.spurious_charge / excess),
                               truth["sigma_nm"].to_numpy() / pixel_size_nm], dtype=torch.float64)
    mu, jac = gaussian_model(theta, size)
    info = fisher_information(jac, mu, gamma)
    k = 5 if fit_sigma else 4
    cov = torch.linalg.inv(info[:, :k, :k])
    return np.sqrt((cov[:, 0, 0] + cov[:, 1, 1]).numpy()) * pixel_size_nm


def uncertainty_rows(gridnet: str, work: Path, frames: int) -> list[dict]:
    """z-scores and RMSE/CRLB at 0.5/µm² (zerocost camera), all and isolated emitters."""
    from scipy.spatial import cKDTree

    from stormfold.evaluate import match

    folder = work / "sparse"
    cfg = simulate(folder, "zerocost", frames, 7001, ["activation.density_per_um2=0.5"])
    from stormfold.io.tables import read_table

    truth = read_table(folder / "truth.csv")
    rows = []
    for spec in (gridnet, "classic"):
        locs, _ = localize(spec, folder / "movie.tif", cfg.camera)
        m = match(truth, locs, 100.0)
        t = truth.iloc[m.truth_index]
        l = locs.iloc[m.locs_index]
        dx, dy = m.dx_nm, m.dy_nm
        close = m.distance_nm <= 50.0
        # Emitters with no other emitter of the same frame within 500 nm.
        iso = np.ones(len(t), bool)
        for f, idx in pd.Series(np.arange(len(truth))).groupby(truth["frame"].to_numpy()):
            pts = truth.iloc[idx.to_numpy()][["x_nm", "y_nm"]].to_numpy()
            if len(pts) > 1:
                d, _ = cKDTree(pts).query(pts, k=2)
                crowded = set(idx.to_numpy()[d[:, 1] < 500.0])
                iso &= ~np.isin(m.truth_index, list(crowded))
        row = {"engine": spec, "pairs": int(len(t)),
               "rmse_nm_pairs_le_50": round(float(np.sqrt(np.mean(dx[close] ** 2 + dy[close] ** 2))), 2),
               "rmse_nm_isolated": round(float(np.sqrt(np.mean(dx[close & iso] ** 2 +
                                                                 dy[close & iso] ** 2))), 2)}
        for fit_sigma in (False, True):
            c = crlb_nm(t[close], cfg.camera, cfg.pixel_size_nm, cfg.background.photons, fit_sigma)
            key = "crlb_nm_sigma_fitted" if fit_sigma else "crlb_nm_sigma_known"
            row[key] = round(float(np.sqrt(np.mean(c ** 2))), 2)
        row["rmse_over_crlb_known"] = round(row["rmse_nm_pairs_le_50"] / row["crlb_nm_sigma_known"], 3)
        row["rmse_over_crlb_fitted"] = round(row["rmse_nm_pairs_le_50"] / row["crlb_nm_sigma_fitted"], 3)
        if "uncertainty_x_nm" in l:
            zx = dx / l["uncertainty_x_nm"].to_numpy()
            zy = dy / l["uncertainty_y_nm"].to_numpy()
            row.update(z_std_x=round(float(np.std(zx)), 3), z_std_y=round(float(np.std(zy)), 3),
                       z_std_x_isolated=round(float(np.std(zx[iso])), 3),
                       z_std_y_isolated=round(float(np.std(zy[iso])), 3))
        elif "uncertainty_nm" in l:
            u = l["uncertainty_nm"].to_numpy()
            row.update(z_std_x=round(float(np.std(dx / u)), 3), z_std_y=round(float(np.std(dy / u)), 3))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generalist", default="builtin:gridnet-generalist")
    parser.add_argument("--specific", action="append", default=[], metavar="CASE=DIR",
                        help="camera-specific gridnet for thunderstorm, challenge2016, zerocost_bg100")
    parser.add_argument("--frames-scale", type=float, default=1.0)
    parser.add_argument("--skip-deepstorm", action="store_true")
    parser.add_argument("--only", default=None, help="comma-separated sections 1-5")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    sections = set((args.only or "1,2,3,4,5").split(","))
    specific = dict(s.split("=", 1) for s in args.specific)
    engines = [("gridnet-generalist", args.generalist), ("classic", "classic")]
    if not args.skip_deepstorm:
        engines.insert(1, ("deepstorm-zerocost", DEEPSTORM))
    scale = args.frames_scale
    result: dict = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "generalist": args.generalist,
                    "cpu": _cpu(), "load_avg_start": os.getloadavg()[0], "threads": args.threads,
                    "command": ["python", "experiments/gridnet_accuracy.py", *sys.argv[1:]],
                    "sections": {}}
    from stormfold.io.tables import read_table

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "1" in sections:
            # Every engine sees the same frames; Deep-STORM (≈ 1–3 frames/s at 64×64 on
            # 2 cores) bounds their number.
            rows = []
            for i, (name, over, frames) in enumerate(SIMULATION_CASES):
                folder = work / f"s1_{i}"
                cfg = simulate(folder, "zerocost", max(2, int(frames * scale)), 5000 + i, over)
                truth = read_table(folder / "truth.csv")
                rows += score_engines(name, engines, folder / "movie.tif", cfg.camera, truth)
            result["sections"]["simulations"] = rows
        if "2" in sections:
            from stormfold.localize.runner import CameraOverrides

            demo = DATA / "deepstorm-demo1-train"
            rows = []
            if demo.is_dir():
                truth = read_table(demo / "positions_demo1.csv")
                cam = CameraOverrides(baseline_adu=100.0, e_per_adu=0.446)
                rows = score_engines("real demo movie", engines,
                                     demo / "ArtificialDataset_demo1.tif", cam, truth)
            result["sections"]["demo"] = rows
        if "3" in sections:
            cases = [("thunderstorm", "thunderstorm", [], 60),
                     ("challenge2016", "challenge2016", [], 40),
                     ("zerocost_bg100", "zerocost", ["background.photons=100"], 20)]
            rows = []
            for i, (name, preset, over, frames) in enumerate(cases):
                folder = work / f"s3_{i}"
                cfg = simulate(folder, preset, max(2, int(frames * scale)), 6000 + i, over)
                truth = read_table(folder / "truth.csv")
                models = [("gridnet-generalist", args.generalist)]
                if name in specific:
                    models.append((f"gridnet-{name}", specific[name]))
                models += [(l, s) for l, s in engines if l != "gridnet-generalist"]
                rows += score_engines(name, models, folder / "movie.tif", cfg.camera, truth)
            result["sections"]["generalisation"] = rows
        if "4" in sections:
            rows = uncertainty_rows(args.generalist, work, max(20, int(200 * scale)))
            for r in rows:
                print(r, flush=True)
            result["sections"]["uncertainty"] = rows
        if "5" in sections:
            rows = []
            for name, over in (("blinking kinetics (t_on 4 frames)",
                                ["activation.model=kinetics", "activation.fluorophores_per_um2=60",
                                 "activation.t_on_frames=4", "activation.t_off_frames=60"]),
                               ("independent frames", ["activation.density_per_um2=3"])):
                folder = work / f"s5_{len(rows)}"
                cfg = simulate(folder, "zerocost", max(10, int(100 * scale)), 8000 + len(rows),
                               over + ["background.photons=50", "emitters.photons_mean=1200",
                                       "emitters.photons_std=200"])
                truth = read_table(folder / "truth.csv")
                for temporal in (True, False):
                    locs, _ = localize(args.generalist, folder / "movie.tif", cfg.camera,
                                       options={"temporal": temporal})
                    rows.append({"case": name, "temporal_context": temporal, **scores(truth, locs)})
                    print(rows[-1], flush=True)
            result["sections"]["temporal"] = rows
    result["load_avg_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "gridnet_accuracy.json"
    if args.only and previous.is_file():
        # A partial run keeps the other sections of the record, each with its own run's facts.
        old = json.loads(previous.read_text())
        runs = old.get("runs", {}) or {k: {key: old.get(key) for key in RUN_KEYS}
                                        for k in old.get("sections", {})}
        runs.update({k: {key: result.get(key) for key in RUN_KEYS} for k in result["sections"]})
        result["sections"] = {**old.get("sections", {}), **result["sections"]}
        result["runs"] = runs
    (RESULTS / "gridnet_accuracy.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "gridnet_accuracy.md").write_text(markdown(result))
    print(markdown(result))


def run_header(script: str, threads: int) -> dict:
    """The fields every record starts with: time, CPU, threads, load and the command."""
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu": _cpu(), "threads": threads,
            "load_avg_start": os.getloadavg()[0],
            "command": " ".join(["python", f"experiments/{script}", *sys.argv[1:]])}


def write_record(stem: str, result: dict, text: str) -> None:
    """Write ``results/STEM.json`` and ``results/STEM.md`` and print the Markdown."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (RESULTS / f"{stem}.md").write_text(text)
    print(text)


def rows_markdown(title: str, result: dict, keys: list[str], sums: str = "sum_ji_100") -> str:
    """A record's Markdown: title line, command, one table row per ``result["rows"]`` entry
    over ``keys``, and the sums of JI@100 per setting in ``result[sums]``."""
    lines = [f"{title} ({result['when']}, CPU {result['cpu']}, {result['threads']} thread(s))",
             "", f"Command: `{result['command']}`", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in result["rows"]]
    lines += ["", "Sum of JI@100 over the cases: " + ", ".join(
        f"{k} {v}" for k, v in result[sums].items()), ""]
    return "\n".join(lines)


def demo_movie():
    """The real demo movie in photons (its camera: baseline 100 ADU, 0.446 e⁻/ADU), its truth
    and the camera; None when ../shared/data is absent."""
    import tifffile

    from stormfold.io.tables import read_table
    from stormfold.physics.camera import Camera

    demo = DATA / "deepstorm-demo1-train"
    if not demo.is_dir():
        return None
    camera = Camera(baseline_adu=100.0, e_per_adu=0.446)
    photons = camera.backward(tifffile.imread(demo / "ArtificialDataset_demo1.tif"))
    return photons, read_table(demo / "positions_demo1.csv"), camera


def rows_experiment(doc: str, script: str, title, keys: list[str], rows_for, group,
                    options: tuple = ()) -> None:
    """The ``main`` of a row-per-run experiment: parse ``--threads`` and ``options``
    ((flag, type, default), ...), run ``rows_for(args, work_dir)`` in a temporary folder, sum
    JI@100 per ``group(row)`` and write ``results/<script stem>.{json,md}`` with ``title(args)``.
    """
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    for flag, kind, default in options:
        parser.add_argument(flag, type=kind, default=default)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = {**run_header(script, args.threads),
              **{k: v for k, v in vars(args).items() if k != "threads"}}
    with tempfile.TemporaryDirectory() as tmp:
        rows = rows_for(args, Path(tmp))
    result["rows"] = rows
    labels = list(dict.fromkeys(group(r) for r in rows))
    result["sum_ji_100"] = {label: round(sum(r["ji_100"] for r in rows if group(r) == label), 4)
                            for label in labels}
    write_record(Path(script).stem, result, rows_markdown(title(args), result, keys))


def _cpu() -> str:
    from stormfold.device import cpu_model

    return cpu_model()


def markdown(result: dict) -> str:
    out = [f"gridnet accuracy ({result['when']}, model {result['generalist']}, CPU {result['cpu']})", ""]
    cols = ["case", "engine", "ji_50", "ji_100", "ji_250", "precision", "recall", "rmse_nm",
            "n_truth", "n_locs"]
    for key in ("simulations", "demo", "generalisation"):
        rows = result["sections"].get(key)
        if rows:
            out += [f"## {key}", "", "| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
            out += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
            out.append("")
    for key in ("uncertainty", "temporal"):
        rows = result["sections"].get(key)
        if rows:
            keys = list(dict.fromkeys(k for r in rows for k in r))
            out += [f"## {key}", "", "| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
            out += ["| " + " | ".join(str(r.get(c, "")) for c in keys) + " |" for r in rows]
            out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    main()
