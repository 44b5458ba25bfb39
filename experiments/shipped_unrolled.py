"""The shipped model ``builtin:unrolled-isbi2013`` on fresh ISBI-like frames with ground truth,
used as a user uses it (``load_engine`` with the model's own threshold and extraction).

Test sets:

- the 361 test frames of ``experiments/isbi.py`` (seed 1; 1000 ± 300 photons per emitter) in
  its three noise cases, given in photons (as ``isbi.py`` gives them to every model);
- a fresh movie of the model's own training simulation (``experiments/configs/
  unrolled_isbi2013.yaml``: 470 ± 150 photons, background 8.8 photons, the camera calibrated
  on the real ISBI 2013 movie) with another seed, converted to photons by that camera.

Metrics: ``stormfold.evaluate`` (optimal one-to-one matching) at 50, 100 and 250 nm:
Jaccard, RMSE, localizations per frame.

Run: ``python experiments/shipped_unrolled.py [--model DIR] [--name NAME] [--frames N]``
(``--model`` defaults to ``builtin:unrolled-isbi2013``). Writes
``experiments/results/<name>.json`` and ``.md`` (default name ``shipped_unrolled``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RESULTS = HERE / "results"
CONFIG = HERE / "configs" / "unrolled_isbi2013.yaml"


def run_engine(engine, photons: np.ndarray, batch: int = 16):
    import pandas as pd

    parts = [engine.process(photons[a:a + batch], a, 100.0).locs
             for a in range(0, len(photons), batch)]
    return pd.concat(parts, ignore_index=True)


def scores(truth, locs, n_frames: int, seconds: float) -> dict:
    from stormfold.evaluate import evaluate

    m = evaluate(truth, locs, tolerances_nm=(50, 100, 250))
    return {"jaccard": [float(v) for v in m["jaccard"]],
            "rmse_nm": [float(v) for v in m["rmse_lateral_nm"]],
            "locs_per_frame": len(locs) / n_frames, "true_per_frame": len(truth) / n_frames,
            "frames_per_s": n_frames / seconds}


def main() -> None:
    import isbi
    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate
    from stormfold.unrolled.train import load_train_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:unrolled-isbi2013")
    parser.add_argument("--name", default="shipped_unrolled")
    parser.add_argument("--frames", type=int, default=361)
    args = parser.parse_args()
    torch.set_num_threads(1)
    engine = load_engine(model=args.model, device="cpu")
    out = {"model": args.model, "engine": engine.describe(), "cases": {}}
    truth, signal, _ = isbi.scene(args.frames, seed=1)
    for name, case in isbi.CASES.items():
        y = isbi.noisy(signal, case, seed=11)
        t0 = time.perf_counter()
        locs = run_engine(engine, y)
        out["cases"][f"isbi.py {name}"] = scores(truth, locs, args.frames,
                                                 time.perf_counter() - t0)
        print(name, out["cases"][f"isbi.py {name}"], flush=True)
    cfg = load_train_config(CONFIG)
    sim_cfg = build_config(preset=cfg.data.preset, overrides=dict(cfg.data.simulation),
                           n_frames=args.frames, seed=1001)
    sim = simulate(sim_cfg)
    photons = sim_cfg.camera.backward(sim.movie).astype(np.float32)
    t0 = time.perf_counter()
    locs = run_engine(engine, photons)
    out["cases"]["training simulation, seed 1001"] = scores(sim.truth, locs, args.frames,
                                                            time.perf_counter() - t0)
    print("training simulation", out["cases"]["training simulation, seed 1001"], flush=True)
    lines = ["| test frames | loc. J 50 / 100 / 250 nm | RMSE at 100 nm (nm) | locs/frame "
             "(true) |", "|---|---|---|---|"]
    for name, r in out["cases"].items():
        j = r["jaccard"]
        lines.append(f"| {name} | {j[0]:.3f} / {j[1]:.3f} / {j[2]:.3f} | {r['rmse_nm'][1]:.1f} | "
                     f"{r['locs_per_frame']:.0f} ({r['true_per_frame']:.0f}) |")
    out.update({"when": time.strftime("%Y-%m-%dT%H:%M:%S"), "frames": args.frames,
                "command": sys.argv})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1))
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
