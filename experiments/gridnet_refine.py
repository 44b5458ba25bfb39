"""The joint MLE refinement of gridnet localizations: its settings and its uncertainties.

1. Settings: the shipped generalist without refinement and with (iterations, relax) pairs on
   fresh ``zerocost`` movies (0.5, 2, 6, 10 emitters/µm², background 200) and the real
   Deep-STORM demo movie: JI at 50/100 nm, RMSE at 100 nm, seconds.
2. Other microscopes: the shipped refinement against none on fresh movies of other cameras
   (PSF σ 2.0 and 0.7 camera pixels, an EMCCD with background, few photons).
3. Uncertainties: on fresh ``zerocost`` movies at 0.5, 2 and 6/µm², the std and the robust
   std (1.4826 · median |z|) of z = (x − x_true)/σx and (y − y_true)/σy for several rules
   giving a refined localization its σ: the network's σ, √CRLB, √(CRLB + (0.7σ)²), and the
   shipped max(√CRLB, 0.8σ).

Usage: python experiments/gridnet_refine.py [--model builtin:gridnet-generalist]
       [--settings 6/0.3 10/0.3 15/0.3 8/0.5] [--threads 2]
Writes experiments/results/gridnet_refine.{json,md}.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import DATA, RESULTS, _cpu, scores, simulate  # noqa: E402


def _movies(work: Path) -> list[tuple]:
    from stormfold.io.tables import read_table
    from stormfold.physics.camera import Camera

    cases = []
    for i, (name, over, frames) in enumerate([
            ("zerocost 0.5/µm²", ["activation.density_per_um2=0.5"], 40),
            ("zerocost 2/µm²", ["activation.density_per_um2=2"], 30),
            ("zerocost 6/µm²", ["activation.density_per_um2=6"], 20),
            ("zerocost 10/µm²", ["activation.density_per_um2=10"], 20),
            ("zerocost bg 200", ["background.photons=200"], 20)]):
        cfg = simulate(work / f"m{i}", "zerocost", frames, 8000 + i, over)
        cases.append((name, work / f"m{i}" / "movie.tif", cfg.camera,
                      read_table(work / f"m{i}" / "truth.csv")))
    demo = DATA / "deepstorm-demo1-train"
    if demo.is_dir():
        cases.append(("real demo movie", demo / "ArtificialDataset_demo1.tif",
                      Camera(baseline_adu=100.0, e_per_adu=0.446),
                      read_table(demo / "positions_demo1.csv")))
    return cases


def settings_rows(model: str, settings: list[str], work: Path) -> list[dict]:
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine
    from stormfold.localize.refine import RefineOptions

    engine = load_engine(model=model)
    variants = [("none", RefineOptions())] + [
        (s, RefineOptions("mle", int(s.split("/")[0]), float(s.split("/")[1]))) for s in settings]
    rows = []
    for name, movie, camera, truth in _movies(work):
        for label, options in variants:
            engine.refine = options
            t0 = time.perf_counter()
            locs = localize_movie(movie, engine, camera=camera, batch_frames=16,
                                  progress=False).locs
            sc = scores(truth, locs)
            rows.append({"case": name, "refine": label, "ji_50": sc["ji_50"],
                         "ji_100": sc["ji_100"], "rmse_nm": sc["rmse_nm"],
                         "seconds": round(time.perf_counter() - t0, 2)})
            print(rows[-1], flush=True)
    return rows


def robustness_rows(model: str, work: Path) -> list[dict]:
    from stormfold.io.tables import read_table
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    cases = [("zerocost, 55 nm pixels (PSF sigma 2.0 px), 2/um2", "zerocost",
              ["pixel_size_nm=55", "activation.density_per_um2=2", "n_rows=96", "n_cols=96"]),
             ("zerocost, 157 nm pixels (PSF sigma 0.7 px), 2/um2", "zerocost",
              ["pixel_size_nm=157", "activation.density_per_um2=2", "n_rows=48", "n_cols=48"]),
             ("challenge2016 (EMCCD), background 100, 2/um2", "challenge2016",
              ["background.photons=100", "activation.density_per_um2=2"]),
             ("thunderstorm, 500 photons, 1/um2", "thunderstorm",
              ["activation.density_per_um2=1", "emitters.photons_mean=500"])]
    rows = []
    for i, (name, preset, over) in enumerate(cases):
        cfg = simulate(work / f"r{i}", preset, 20, 8200 + i, over)
        truth = read_table(work / f"r{i}" / "truth.csv")
        for method in ("none", "mle"):
            engine = load_engine(model=model, options={"refine": method})
            locs = localize_movie(work / f"r{i}" / "movie.tif", engine, camera=cfg.camera,
                                  batch_frames=16, progress=False).locs
            sc = scores(truth, locs)
            rows.append({"case": name, "refine": method, "ji_50": sc["ji_50"],
                         "ji_100": sc["ji_100"], "rmse_nm": sc["rmse_nm"], "n_locs": len(locs)})
            print(rows[-1], flush=True)
    return rows


def uncertainty_rows(model: str, work: Path) -> list[dict]:
    """z-scores of the engine's refined localizations under several uncertainty rules.

    The engine's call of the refinement is wrapped to record, per localization, the
    network's σ, the fit's CRLB and whether the fit was accepted (the table holds only the
    shipped rule's result); rows of the table and of the record are in the same order.
    """
    import stormfold.gridnet.engine as engine_module
    from stormfold.evaluate import match
    from stormfold.io.tables import read_table
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    record: list[dict] = []
    original = engine_module.refine_localizations

    def recording(frames, frame, x, y, counts, ux, uy, *args, **kwargs):
        res = original(frames, frame, x, y, counts, ux, uy, *args, **kwargs)
        record.append({"net_x": ux.double().numpy(), "net_y": uy.double().numpy(),
                       "crlb_x": res.crlb_x_px2.double().numpy(),
                       "crlb_y": res.crlb_y_px2.double().numpy(),
                       "ok": res.accepted.numpy()})
        return res

    engine = load_engine(model=model)
    rows = []
    engine_module.refine_localizations = recording
    try:
        for density, frames, seed in ((0.5, 200, 8101), (2, 40, 8102), (6, 20, 8103)):
            folder = work / f"u{density}"
            cfg = simulate(folder, "zerocost", frames, seed,
                           [f"activation.density_per_um2={density}"])
            truth = read_table(folder / "truth.csv")
            record.clear()
            locs = localize_movie(folder / "movie.tif", engine, camera=cfg.camera,
                                  batch_frames=16, progress=False).locs
            rec = {k: np.concatenate([r[k] for r in record]) for k in record[0]}
            assert len(rec["ok"]) == len(locs)
            px = cfg.pixel_size_nm
            m = match(truth, locs, 100.0)
            i = m.locs_index
            ok = rec["ok"][i]
            net = [rec["net_x"][i] * px, rec["net_y"][i] * px]
            crlb = [np.sqrt(rec[f"crlb_{a}"][i]) * px for a in "xy"]
            crlb = [np.where(np.isfinite(c), c, n) for c, n in zip(crlb, net)]
            shipped = [locs[f"uncertainty_{a}_nm"].to_numpy()[i] for a in "xy"]
            rules = {"network sigma": net, "sqrt(CRLB)": crlb,
                     "sqrt(CRLB + (0.7 sigma)^2)": [np.sqrt(c ** 2 + (0.7 * n) ** 2)
                                                    for c, n in zip(crlb, net)],
                     "max(sqrt(CRLB), 0.8 sigma) (shipped)": shipped}
            for rule, (ux, uy) in rules.items():
                zx = m.dx_nm / np.where(ok, ux, net[0])
                zy = m.dy_nm / np.where(ok, uy, net[1])
                rows.append({"density_per_um2": density, "rule": rule, "pairs": int(len(zx)),
                             "z_std_x": round(float(np.std(zx)), 3),
                             "z_std_y": round(float(np.std(zy)), 3),
                             "z_robust_x": round(float(1.4826 * np.median(np.abs(zx))), 3),
                             "z_robust_y": round(float(1.4826 * np.median(np.abs(zy))), 3)})
                print(rows[-1], flush=True)
    finally:
        engine_module.refine_localizations = original
    return rows


def _markdown(result: dict) -> str:
    lines = [f"# gridnet refinement ({result['when']}, {result['cpu']}, threads "
             f"{result['threads']}, load {result['load_avg_start']:.2f}–"
             f"{result['load_avg_end']:.2f})", "", f"`{' '.join(result['command'])}`", ""]
    for key, rows in result["sections"].items():
        if not rows:
            continue
        cols = list(rows[0])
        lines += [f"## {key}", "", "| " + " | ".join(cols) + " |",
                  "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:gridnet-generalist")
    parser.add_argument("--settings", nargs="+", default=["6/0.3", "10/0.3", "15/0.3", "8/0.5"],
                        help="ITERATIONS/RELAX pairs")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": args.model, "cpu": _cpu(),
              "threads": args.threads, "load_avg_start": os.getloadavg()[0],
              "command": ["python", "experiments/gridnet_refine.py", *sys.argv[1:]],
              "sections": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result["sections"]["settings"] = settings_rows(args.model, args.settings, work)
        result["sections"]["other microscopes"] = robustness_rows(args.model, work)
        result["sections"]["uncertainties"] = uncertainty_rows(args.model, work)
    result["load_avg_end"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gridnet_refine.json").write_text(json.dumps(result, indent=1))
    (RESULTS / "gridnet_refine.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
