"""Which input normalisation for the generalist? Two short trainings side by side.

Trains the same network on the generalist domain (σ 0.7–2 px, 200–10,000 photons,
background 0–300 photons/px, 0.1–10 emitters/µm², sCMOS- and EMCCD-like cameras) for the
same wall time with the two normalisations of :mod:`stormfold.gridnet.normalization`
(``affine``, SPEC §10's fixed map, and ``frame_median``), in two processes with one torch
thread each, then compares the Jaccard index at 100 nm on held-back samples binned by
background and by photons.

Usage: python experiments/gridnet_normalization.py [--minutes 20] [--work /tmp/gn_norm]
Writes experiments/results/gridnet_normalization.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("affine", "frame_median")


def train(method: str, out: Path, minutes: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "stormfold", "train", "gridnet", "--init", "none",
           "--minutes", str(minutes), "--seed", "1", "--quiet", "--out", str(out),
           "--set", f"normalization.method={method}", "--set", "schedule.threads=1",
           "--set", "schedule.validation_minutes=5"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def binned_jaccard(model_dir: Path, n: int = 256) -> dict:
    """JI@100 nm at the model's threshold on held-back samples, by background and photons."""
    import torch

    from stormfold.evaluate import evaluate
    from stormfold.gridnet.decode import to_table
    from stormfold.gridnet.loader import engine_from_meta, read_gridnet
    from stormfold.gridnet.normalization import InputNormalization
    from stormfold.gridnet.sampler import DomainConfig
    from stormfold.gridnet.train import ValidationConfig, held_back, held_back_outputs
    from stormfold.config import from_dict

    torch.set_num_threads(2)
    model, meta = read_gridnet(model_dir)
    norm = from_dict(InputNormalization, meta["normalization"])
    domain = from_dict(DomainConfig, meta["domain"])
    sets = held_back(domain, ValidationConfig(), 3, n // 2, seed=99, stream=7)
    rows = []
    for hb in sets:
        out = held_back_outputs(model, norm, hb.batch)
        # The model's own decoder (peaks for models written before the decoder section).
        cand = engine_from_meta(meta, model).decoder.candidates(out)
        table = to_table(cand.select(cand.score >= meta["threshold"]), 0, domain.pixel_size_nm)
        for i, params in hb.batch.params.iterrows():
            t = hb.truth[hb.truth["frame"] == i]
            l = table[table["frame"] == i]
            m = evaluate(t, l, tolerances_nm=(100,)).iloc[0]
            rows.append({**params.to_dict(), "tp": int(m.tp), "fp": int(m.fp), "fn": int(m.fn)})
    import pandas as pd

    df = pd.DataFrame(rows)
    out = {}
    for name, col, edges in (("background", "background", [-1, 10, 100, 1000]),
                             ("photons", "photons", [0, 600, 2000, 20000]),
                             ("kind", "kind", None)):
        groups = df.groupby(pd.cut(df[col], edges) if edges else df[col], observed=True)
        out[name] = {str(k): round(g.tp.sum() / max(1, g.tp.sum() + g.fp.sum() + g.fn.sum()), 4)
                     for k, g in groups}
    out["all"] = round(df.tp.sum() / max(1, df.tp.sum() + df.fp.sum() + df.fn.sum()), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gn_norm"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    procs = {m: train(m, args.work / m, args.minutes) for m in METHODS}
    for m, p in procs.items():
        log = p.communicate()[0]
        if p.returncode:
            raise SystemExit(f"{m} failed:\n{log}")
    result = {"minutes": args.minutes, "wall_s": round(time.time() - t0), "methods": {}}
    for m in METHODS:
        import yaml

        meta = yaml.safe_load((args.work / m / "model.yaml").read_text())
        result["methods"][m] = {"steps": meta["training"]["steps"],
                                "validation": meta["validation"],
                                "threshold": meta["threshold"],
                                "held_back": binned_jaccard(args.work / m)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gridnet_normalization.json").write_text(json.dumps(result, indent=1))
    lines = ["| normalisation | steps | JI all | " + " | ".join(
        f"bg {k}" for k in result["methods"][METHODS[0]]["held_back"]["background"]) + " | "
        + " | ".join(f"photons {k}" for k in result["methods"][METHODS[0]]["held_back"]["photons"])
        + " |", "|---" * (3 + 6) + "|"]
    for m, r in result["methods"].items():
        hb = r["held_back"]
        lines.append(f"| {m} | {r['steps']} | {hb['all']:.3f} | "
                     + " | ".join(f"{v:.3f}" for v in hb["background"].values()) + " | "
                     + " | ".join(f"{v:.3f}" for v in hb["photons"].values()) + " |")
    (RESULTS / "gridnet_normalization.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
