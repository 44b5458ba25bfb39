"""Per-microscope training in minutes: calibrate → fine-tune the generalist → JI vs wall time.

A "microscope" the shipped models never saw (EMCCD, 110 nm pixels, σ 130 nm, blinking
kinetics, background 80 photons/px) records a 1,000-frame movie. ``stormfold calibrate``
estimates its simulation.yaml from the movie alone; ``stormfold train gridnet --config
simulation.yaml --minutes M`` fine-tunes the generalist on that domain (the default), and,
for comparison, the same budget from random weights (``--init none``). The validation
Jaccard (held-back simulated frames of the calibrated domain) is recorded against wall
time; the figure is docs/gridnet_finetune.png. Finally the generalist and both trained
models localize a fresh movie of the true microscope (not the calibrated one).

Usage: python experiments/gridnet_finetune.py [--minutes 15] [--work /tmp/gn_ft] [--skip-scratch]
Writes experiments/results/gridnet_finetune.{json,md} and docs/gridnet_finetune.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
MICROSCOPE = ["pixel_size_nm=110", "emitters.sigma_nm=130", "emitters.sigma_std_nm=5",
              "emitters.photons_mean=1500", "emitters.photons_std=300",
              "background.photons=80", "activation.model=kinetics",
              "activation.fluorophores_per_um2=40", "activation.t_on_frames=2.5",
              "activation.t_off_frames=60", "structure.kind=filaments",
              "camera.em_gain=100", "camera.e_per_adu=10", "camera.baseline_adu=200",
              "camera.readout_e=50", "camera.qe=0.9", "camera.spurious_charge=0.002"]


def cli(*args: str) -> str:
    r = subprocess.run([sys.executable, "-m", "stormfold", *args], capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"stormfold {' '.join(args)} failed: {r.stderr}")
    return r.stdout.strip()


def first_time_at(history: pd.DataFrame, fraction: float) -> tuple[float, float]:
    """Wall time (s) at which the validation JI first reaches ``fraction`` of its final value."""
    val = history.dropna(subset=["ji"])
    final = float(val["ji"].iloc[-1])
    hit = val[val["ji"] >= fraction * final]
    return float(hit["seconds"].iloc[0]), final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gn_ft"))
    parser.add_argument("--generalist", default="builtin:gridnet-generalist")
    parser.add_argument("--skip-scratch", action="store_true")
    args = parser.parse_args()
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    sets = [a for s in MICROSCOPE for a in ("--set", s)]
    if not (w / "movie" / "movie.tif").is_file():
        cli("simulate", "--preset", "zerocost", "--frames", "1000", "--seed", "21", *sets,
            "--out", str(w / "movie"))
    if not (w / "calib" / "simulation.yaml").is_file():
        cli("calibrate", str(w / "movie" / "movie.tif"), "--emccd", "--qe", "0.9",
            "--out", str(w / "calib"))
    runs = {"fine-tuned generalist": ["--init", args.generalist]}
    if not args.skip_scratch:
        runs["from scratch"] = ["--init", "none"]
    result = {"minutes": args.minutes, "cpu": _cpu(), "load_avg_start": os.getloadavg()[0],
              "microscope": MICROSCOPE, "runs": {}}
    for name, extra in runs.items():
        out = w / name.replace(" ", "_")
        if not (out / "model.yaml").is_file():
            t0 = time.time()
            cli("train", "gridnet", "--config", str(w / "calib" / "simulation.yaml"),
                "--minutes", str(args.minutes), "--seed", "3", "--quiet", *extra,
                "--set", "schedule.validation_minutes=1", "--set", "schedule.threads=2",
                "--out", str(out))
            print(f"{name}: {time.time() - t0:.0f} s", flush=True)
        hist = pd.read_csv(out / "training.csv")
        t95, final = first_time_at(hist, 0.95)
        result["runs"][name] = {"final_validation_ji": final, "seconds_to_95pct": t95,
                                "start_validation_ji": float(hist.dropna(subset=["ji"])["ji"].iloc[0]),
                                "steps": int(hist["step"].iloc[-1])}
    # Fresh movie of the true microscope.
    if not (w / "test" / "movie.tif").is_file():
        cli("simulate", "--preset", "zerocost", "--frames", "200", "--seed", "22", *sets,
            "--out", str(w / "test"))
    for name, model in [("generalist", args.generalist)] + \
            [(n, str(w / n.replace(" ", "_"))) for n in runs]:
        loc = w / f"loc_{name.replace(' ', '_')}"
        cli("localize", str(w / "test" / "movie.tif"), "--model", model, "--out", str(loc),
            "--quiet")
        ev = json.loads(_evaluate(w / "test" / "truth.csv", loc / "localizations.csv"))
        result.setdefault("test_movie", {})[name] = ev
    result["load_avg_end"] = os.getloadavg()[0]
    plot(w, runs, result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gridnet_finetune.json").write_text(json.dumps(result, indent=1))
    lines = ["| model | JI@100 on a fresh movie of the true microscope | RMSE (nm) | final "
             "validation JI | minutes to 95 % of it |", "|---|---|---|---|---|"]
    for name, ev in result["test_movie"].items():
        run = result["runs"].get(name, {})
        lines.append(f"| {name} | {ev['ji_100']:.3f} | {ev['rmse_nm']:.1f} | "
                     f"{run.get('final_validation_ji', float('nan')):.3f} | "
                     f"{run.get('seconds_to_95pct', float('nan')) / 60:.1f} |")
    (RESULTS / "gridnet_finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _evaluate(truth: Path, locs: Path) -> str:
    from stormfold.evaluate import evaluate
    from stormfold.io.tables import read_table

    m = evaluate(read_table(truth), read_table(locs), tolerances_nm=(100,)).iloc[0]
    return json.dumps({"ji_100": float(m.jaccard), "rmse_nm": float(m.rmse_lateral_nm),
                       "precision": float(m.precision), "recall": float(m.recall)})


def plot(w: Path, runs: dict, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=110)
    for name in runs:
        hist = pd.read_csv(w / name.replace(" ", "_") / "training.csv").dropna(subset=["ji"])
        ax.plot(hist["seconds"] / 60, hist["ji"], "o-", ms=3, label=name)
        t95 = result["runs"][name]["seconds_to_95pct"] / 60
        ax.axvline(t95, ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.set_xlabel("wall time on 2 shared CPU cores (min)")
    ax.set_ylabel("validation Jaccard at 100 nm")
    ax.set_title("per-microscope training from a calibrated simulation.yaml", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "gridnet_finetune.png")


def _cpu() -> str:
    from stormfold.device import cpu_model

    return cpu_model()


if __name__ == "__main__":
    main()
