"""Compare the gridnet decoders (3×3 peaks vs clusters of components) and write a model
recalibrated for the better one.

1. Calibration: for each decoder variant (peaks with p_keep 0.5…0.8 and off; clusters with
   the radii of ``ValidationConfig.radii_px``) the score threshold is calibrated on the
   held-back simulated samples the trainer uses at its end (both activation models, 64×64
   px, the model's training seed, stream 3); the best Jaccard at 100 nm of each variant.
2. Why peaks fail at high density: on a fresh ``zerocost`` movie at 6 emitters/µm², the
   recall of each decoder by the distance to the emitter's nearest neighbour, and the p the
   network puts on the two pixels of pairs 1–2 px apart.
3. Check on fresh simulations of other cameras (seeds apart from the accuracy experiment's):
   JI@100, precision, recall and RMSE of the model's stored decoder and of the calibrated
   cluster decoder.

With ``--out`` the model is written again (same weights) with the best variant of (1) and
its threshold in model.yaml, and the command in ``decoder_calibration``.

Usage::

    python experiments/gridnet_decoder.py --model builtin:gridnet-generalist \\
        [--samples 256] [--out DIR] [--threads 2]

Record: ``experiments/results/gridnet_decoder.{json,md}`` (``--results DIR`` elsewhere).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import simulate  # noqa: E402  (the same fresh simulations)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:gridnet-generalist")
    parser.add_argument("--samples", type=int, default=256,
                        help="held-back samples per activation model")
    parser.add_argument("--out", default=None, help="write the recalibrated model here")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", default=str(RESULTS), help="folder of the record")
    parser.add_argument("--density-sampling", choices=("log", "linear"), default=None,
                        help="calibrate on the training domain with this density sampling "
                             "(default: the model's own)")
    args = parser.parse_args()
    results = Path(args.results)
    import torch

    from stormfold.config import from_dict
    from stormfold.device import cpu_model
    from stormfold.gridnet.config import ValidationConfig
    from stormfold.gridnet.loader import read_gridnet, require_section
    from stormfold.gridnet.normalization import InputNormalization
    from stormfold.gridnet.sampler import DomainConfig
    from stormfold.gridnet.validation import (decoder_variants, held_back, jaccard_curve,
                                              variant_label)
    from stormfold.modelfile import save_model

    torch.set_num_threads(args.threads)
    model, meta = read_gridnet(args.model)
    domain = from_dict(DomainConfig, require_section(meta, "domain", args.model), where="domain")
    if args.density_sampling:
        domain = replace(domain, density_sampling=args.density_sampling)
    norm = from_dict(InputNormalization, meta["normalization"], where="normalization")
    seed = int((meta.get("training") or {}).get("seed") or 0)
    vcfg = ValidationConfig(calibration_samples=args.samples)
    variants = decoder_variants(replace(vcfg, decoder="peaks")) + \
        decoder_variants(replace(vcfg, decoder="clusters"))
    t0 = time.perf_counter()
    sets = held_back(domain, vcfg, model.config.context_frames, args.samples, seed, 3)
    curve = jaccard_curve(model, norm, sets, domain.pixel_size_nm, vcfg.thresholds, variants,
                          vcfg.tolerance_nm)
    rows = []
    for k, dec in enumerate(variants):
        j = int(np.argmax(curve["all"][k]))
        rows.append({"decoder": dec.method, "variant": variant_label(dec).split(" ", 1)[1],
                     "threshold": vcfg.thresholds[j],
                     **{f"ji_{kind}": round(float(v[k, j]), 4) for kind, v in curve.items()}})
        print(rows[-1], flush=True)
    best = int(np.argmax([r["ji_all"] for r in rows]))
    command = ["python", "experiments/gridnet_decoder.py", *sys.argv[1:]]
    result = {"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "model": args.model,
              "cpu": cpu_model(), "threads": args.threads, "load_avg": os.getloadavg()[0],
              "samples": f"{args.samples} + {args.samples} held-back simulated samples "
                         f"(64×64 px, density sampling {domain.density_sampling}), "
                         f"seed ({seed}, 3)",
              "seconds": round(time.perf_counter() - t0, 1), "command": command,
              "rows": rows, "best": rows[best]}
    results.mkdir(parents=True, exist_ok=True)
    chosen = variants[best]
    result["pairs"] = pair_analysis(model, meta, args.model, chosen, rows[best]["threshold"])
    result["presets"] = preset_check(args.model, chosen, rows[best]["threshold"])
    (results / "gridnet_decoder.json").write_text(json.dumps(result, indent=1))
    lines = [f"gridnet decoders on held-back samples of {args.model}'s training domain "
             f"({result['when']}, {result['samples']}, CPU {result['cpu']})", "",
             "| decoder | variant | threshold | JI@100 all | independent | kinetics |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['decoder']} | {r['variant']} | {r['threshold']} | {r['ji_all']} | "
              f"{r.get('ji_independent', '')} | {r.get('ji_kinetics', '')} |" for r in rows]
    lines += ["", f"Fresh `zerocost` movie at 6/µm² ({result['pairs']['n_truth']} emitters): "
              f"recall by nearest-neighbour distance; p at the two pixels of pairs 1–2 px "
              f"apart: median {result['pairs']['pair_pixel_p_median']}, sum of p over the "
              f"5×5 pixels around the pair: median {result['pairs']['pair_window_p_median']}",
              "", "| nearest neighbour (nm) | emitters | recall, stored decoder | recall, "
              f"{variant_label(chosen)} |", "|---|---|---|---|"]
    lines += [f"| {b['range_nm']} | {b['n']} | {b['recall_stored']} | {b['recall_clusters']} |"
              for b in result["pairs"]["by_distance"]]
    lines += ["", "Fresh simulations (JI@100, precision / recall, RMSE nm):", "",
              f"| case | stored decoder | {variant_label(chosen)} (calibrated) |", "|---|---|---|"]
    lines += [f"| {r['case']} | {r['stored']} | {r['clusters']} |" for r in result["presets"]]
    (results / "gridnet_decoder.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.out:
        dec = variants[best]
        k = best
        j = vcfg.thresholds.index(rows[best]["threshold"])
        new = {key: v for key, v in meta.items() if key not in ("p_raw", "p_keep")}
        new["threshold"] = float(rows[best]["threshold"])
        new["decoder"] = dec.metadata()
        calibration = dict(meta.get("calibration") or {})
        calibration.pop("jaccard_by_p_keep", None)
        calibration.update({
            "frames": result["samples"],
            "jaccard": {kind: round(float(v[k, j]), 4) for kind, v in curve.items()},
            "jaccard_by_decoder": {variant_label(d): r["ji_all"] for d, r in zip(variants, rows)},
            "curve": [[t, round(float(v), 4)] for t, v in zip(vcfg.thresholds, curve["all"][k])]})
        new["calibration"] = calibration
        new["decoder_calibration"] = {"command": command, "when": result["when"]}
        save_model(args.out, {k2: v.detach().cpu() for k2, v in model.state_dict().items()}, new)
        print(f"wrote {args.out}")


def _stored_engine(spec: str):
    from stormfold.localize.registry import load_engine

    return load_engine(model=spec)


def pair_analysis(model, meta, spec: str, chosen, threshold: float) -> dict:
    """Recall by nearest-neighbour distance (stored decoder vs ``chosen``) on a fresh
    zerocost movie at 6/µm², and the p on the pixels of pairs 1–2 px apart."""
    import tempfile

    import pandas as pd
    from scipy.spatial import cKDTree

    from stormfold.evaluate import match
    from stormfold.gridnet.decode import to_table
    from stormfold.io.movie import open_movie
    from stormfold.io.tables import read_table

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cfg = simulate(folder, "zerocost", 20, 9101, ["activation.density_per_um2=6"])
        truth = read_table(folder / "truth.csv")
        with open_movie(folder / "movie.tif") as movie:
            photons = cfg.camera.backward(movie.read(0, movie.n_frames))
    engine = _stored_engine(spec)
    out = engine.outputs(photons)
    px = cfg.pixel_size_nm
    stored = to_table(engine.decoder.candidates(out), 0, px)
    stored = stored[stored["confidence"] >= engine.threshold]
    clusters = to_table(chosen.candidates(out), 0, px)
    clusters = clusters[clusters["confidence"] >= threshold]
    nn = np.full(len(truth), np.inf)
    pair_p, window_p = [], []
    p = out.p.numpy()
    for f, idx in pd.Series(np.arange(len(truth))).groupby(truth["frame"].to_numpy()):
        idx = idx.to_numpy()
        pts = truth.iloc[idx][["x_nm", "y_nm"]].to_numpy() / px
        d, j = cKDTree(pts).query(pts, k=2)
        nn[idx] = d[:, 1] * px
        for a in range(len(pts)):
            b = j[a, 1]
            if 1.0 <= d[a, 1] < 2.0 and a < b:
                ca, cb = np.floor(pts[a]).astype(int), np.floor(pts[b]).astype(int)
                pair_p += [p[f, ca[1], ca[0]], p[f, cb[1], cb[0]]]
                mid = np.floor((pts[a] + pts[b]) / 2).astype(int)
                r0, c0 = max(0, mid[1] - 2), max(0, mid[0] - 2)
                window_p.append(p[f, r0:r0 + 5, c0:c0 + 5].sum())
    found = {}
    for name, table in (("stored", stored), ("clusters", clusters)):
        hit = np.zeros(len(truth), bool)
        hit[match(truth, table, 100.0).truth_index] = True
        found[name] = hit
    bins = []
    for lo, hi in ((0, 50), (50, 100), (100, 150), (150, 200), (200, 300), (300, np.inf)):
        sel = (nn >= lo) & (nn < hi)
        bins.append({"range_nm": f"{lo}–{hi:g}" if np.isfinite(hi) else f"≥ {lo}",
                     "n": int(sel.sum()),
                     "recall_stored": round(float(found["stored"][sel].mean()), 3),
                     "recall_clusters": round(float(found["clusters"][sel].mean()), 3)})
    return {"n_truth": int(len(truth)), "by_distance": bins,
            "pair_pixel_p_median": round(float(np.median(pair_p)), 3),
            "pair_window_p_median": round(float(np.median(window_p)), 2)}


def preset_check(spec: str, chosen, threshold: float) -> list[dict]:
    """The stored decoder and the calibrated cluster decoder on fresh simulations."""
    import tempfile

    from stormfold.evaluate import evaluate
    from stormfold.io.tables import read_table
    from stormfold.localize import localize_movie
    from stormfold.localize.runner import CameraOverrides

    cases = [("zerocost 2/µm²", "zerocost", ["activation.density_per_um2=2"], 30),
             ("zerocost 10/µm²", "zerocost", ["activation.density_per_um2=10"], 20),
             ("zerocost background 50", "zerocost", ["background.photons=50"], 20),
             ("zerocost background 200", "zerocost", ["background.photons=200"], 20),
             ("thunderstorm", "thunderstorm", [], 60), ("challenge2016", "challenge2016", [], 40)]
    options = {"decoder": chosen.method, **({"radius_px": chosen.radius_px}
                                            if chosen.method == "clusters" else
                                            {"p_raw": chosen.p_raw, "p_keep": chosen.p_keep})}
    rows = []

    def score(truth, locs) -> str:
        m = evaluate(truth, locs, tolerances_nm=(100.0,)).iloc[0]
        return (f"{m.jaccard:.3f} ({m.precision:.2f} / {m.recall:.2f}, "
                f"{m.rmse_lateral_nm:.1f} nm)")

    from stormfold.localize.registry import load_engine

    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, preset, over, frames) in enumerate(cases):
            folder = Path(tmp) / f"c{i}"
            cfg = simulate(folder, preset, frames, 6100 + i, over)
            truth = read_table(folder / "truth.csv")
            row = {"case": name}
            for key, engine in (("stored", _stored_engine(spec)),
                                ("clusters", load_engine(model=spec, threshold=threshold,
                                                         options=options))):
                locs = localize_movie(folder / "movie.tif", engine, camera=cfg.camera,
                                      batch_frames=16, progress=False).locs
                row[key] = score(truth, locs)
            rows.append(row)
            print(row, flush=True)
    return rows


if __name__ == "__main__":
    main()
