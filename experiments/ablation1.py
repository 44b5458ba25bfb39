"""Ablation of the unrolled method on paper experiment 1: one change at a time.

Every row of ``experiments/configs/ablation1.yaml`` is the base setting (today's
``experiments/experiment1.py``: 256×256 fine images with 75–150 active pixels of U(50, 255),
σ = 2.5 fine pixels, L = 4 sum-downsampling, Gaussian noise σ = 2, 10 training / 25 test
images, K = 100, cubic P_ε with ε = 0.5, x₀ = 0, ρ₀ = 0.1, α_k = 1/Lip in the box [0, 2]/Lip,
τ₀ the count-matching value in [1, half the brightest true pixel], loss (14), SGP with 25
outer iterations, stopped when a line search of 10 trials fails) with the keys of its
``set`` mapping changed (dotted names of :data:`BASE`).

For each row the driver trains θ on the training images and reports on the test images:

- the paper-style pixel Jaccard (``stormfold.evaluate.pixel_jaccard``: one-to-one, closest
  pairs first — the TP rule of the paper's Fig. 2) at δ = 0, 1, 2 fine pixels, pooled over
  the images and as the mean of the per-image values (the paper "averages over all the
  frames"), and, for comparison, a lenient count without the one-to-one rule (a true pixel is
  found when any detection is within δ; a detection is false only when no true pixel is);
- the same Jaccard at the best threshold on the test images (an oracle: it separates what
  the solver can do from how well τ was learned);
- the PSNR of x_K (peak = the brightest true pixel of each image), and stability figures (x_K
  finite, its maximum, its total against the true total);
- the learned θ (ρ, τ, α_k statistics) and the training history.

Each row writes ``experiments/results/ablation1/<row>.json``; an interrupted row continues
from ``experiments/results/ablation1/<row>.ckpt/`` (SGP/Adam state after every outer
iteration), finished rows are skipped (unless their configuration changed), and the summary
``experiments/results/ablation1.json`` and ``.md`` are rewritten after every row.

Run (one thread; the machine is shared): ``python experiments/ablation1.py`` (all rows),
``--rows a,b`` (some rows), ``--list``, ``--summary`` (only rebuild the summary).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from stormfold.checkpoint import load_checkpoint, save_checkpoint
from stormfold.evaluate import pixel_jaccard, psnr
from stormfold.evaluate.matching import candidate_pairs
from stormfold.unrolled.model import build_solver
from stormfold.unrolled.train import (LossConfig, OptimConfig, build_optimizer, default_learn,
                                      fit, matching_threshold)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ROW_DIR = RESULTS / "ablation1"
CONFIG = HERE / "configs" / "ablation1.yaml"
TOLERANCES = (0.0, 1.0, 2.0)
#: SGP stops when 10 Armijo trials (step 0.4¹⁰ ≈ 1e-4 of the projected step) do not decrease
#: the loss. The default 30 only adds evaluations once the loss has stalled (the first rows
#: spent up to 12 evaluations per iteration at a loss constant to 5 digits).
MAX_BACKTRACKS = 10
ORACLE_TAUS = (1, 2, 3, 5, 7, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130)
PAPER = {"(13) reconstruction, R/RS = 0/8": [0.3878, 0.4179, 0.4179, 0.4079, 35.76],
         "(14) localization, R/RS = 10/0": [0.7452, 0.8480, 0.8583, 0.8172, 33.09]}

#: Today's setting of experiments/experiment1.py; rows change one key at a time.
BASE = {
    "data": {"fine_px": 256, "upsampling": 4, "sigma_fine_px": 2.5, "active": [75, 150],
             "intensity": [50.0, 255.0], "noise_std": 2.0, "n_train": 10, "n_test": 25,
             "special": False, "n_special": 8, "special_active": 4, "seed": 2024},
    "solver": {"iterations": 100, "projection": "cubic", "eps": 0.5, "init": "zero",
               "alpha_units": "lipschitz", "rho_per_iteration": False,
               "checkpoint_segments": 2},
    # rho_absolute: initial λ in image units (converted to ρ with the mean λ_max of the
    # training images); tau: "match" = the count-matching value, else a number.
    "params": {"rho": 0.1, "rho_absolute": None, "alpha": 1.0, "alpha_bounds": [0.0, 2.0],
               "tau": "match", "tau_bounds": "paper"},
    "loss": {"kind": "localization", "tolerance_px": 0, "huber_delta": 0.1,
             "binarise_eps": 0.5},
    "optim": {"optimizer": "sgp", "outer_iterations": 25, "adam_lr": 0.02, "first_move": 0.02},
    "eval": {"detection": "auto"},
}


# --------------------------------------------------------------------------- configuration
def set_key(cfg: dict, dotted: str, value) -> None:
    node = cfg
    *path, last = dotted.split(".")
    for p in path:
        if p not in node:
            raise SystemExit(f"unknown key {dotted!r}")
        node = node[p]
    if last not in node:
        raise SystemExit(f"unknown key {dotted!r}")
    node[last] = value


def row_config(row: dict) -> dict:
    cfg = copy.deepcopy(BASE)
    for key, value in (row.get("set") or {}).items():
        set_key(cfg, key, value)
    return cfg


def config_hash(cfg: dict) -> str:
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def load_rows(path: Path) -> list[dict]:
    rows = yaml.safe_load(path.read_text(encoding="utf-8"))["rows"]
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate row names in the configuration")
    return rows


def _float(v) -> float:
    return math.inf if v in (None, "inf", ".inf") else float(v)


# --------------------------------------------------------------------------- data
def make_images(n: int, active: tuple[int, int], intensity: tuple[float, float], fine: int,
                rng: np.random.Generator) -> np.ndarray:
    """n fine-grid ground-truth images with a random number of active pixels."""
    x = np.zeros((n, fine * fine))
    for i in range(n):
        k = int(rng.integers(active[0], active[1] + 1))
        idx = rng.choice(fine * fine, size=k, replace=False)
        x[i, idx] = rng.uniform(intensity[0], intensity[1], size=k)
    return x.reshape(n, fine, fine).astype(np.float32)


def make_data(d: dict, op) -> dict:
    """Training, special and test sets (same draws as experiment1.py for the base setting)."""
    rng = np.random.default_rng(d["seed"])
    fine, inten = d["fine_px"], tuple(d["intensity"])
    x_train = make_images(d["n_train"], tuple(d["active"]), inten, fine, rng)
    x_special = make_images(d["n_special"], (d["special_active"],) * 2, inten, fine, rng)
    x_test = make_images(d["n_test"], tuple(d["active"]), inten, fine, rng)

    def observe(x):
        with torch.no_grad():
            y = op.A(torch.from_numpy(x)).numpy()
        return torch.from_numpy((y + rng.normal(0.0, d["noise_std"], y.shape)).astype(np.float32))

    y_train, y_special, y_test = observe(x_train), observe(x_special), observe(x_test)
    if d["special"]:
        x_train, y_train = x_special, y_special
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


# --------------------------------------------------------------------------- model
def make_solver(cfg: dict, data: dict):
    s, p, d = cfg["solver"], cfg["params"], cfg["data"]
    solver = build_solver(d["upsampling"], d["sigma_fine_px"], iterations=s["iterations"],
                          fidelity="ls", projection=s["projection"], eps=s["eps"],
                          init=s["init"], alpha_units=s["alpha_units"],
                          rho_per_iteration=s["rho_per_iteration"], rho=p["rho"],
                          alpha=p["alpha"], tau=0.0, background="given",
                          background_photons=0.0, checkpoint_segments=s["checkpoint_segments"])
    solver.set_bounds("alpha", _float(p["alpha_bounds"][0]), _float(p["alpha_bounds"][1]))
    y, x = data["y_train"], data["x_train"]
    if p["rho_absolute"] is not None:
        lam_max = float(solver.op.lambda_max(y, 0.0, "ls").mean())
        with torch.no_grad():
            solver.rho.fill_(float(p["rho_absolute"]) / lam_max)
    if cfg["loss"]["kind"] == "localization":
        tau = matching_threshold(solver, y, x) if p["tau"] == "match" else float(p["tau"])
        if p["tau_bounds"] == "paper":
            lo, hi = 1.0, 0.5 * float(x.max())  # the paper: half the maximum pixel value
        else:
            lo, hi = (_float(v) for v in p["tau_bounds"])
        solver.set_bounds("tau", lo, hi)
        with torch.no_grad():
            solver.tau.fill_(min(max(tau, lo), hi))
    solver.project_parameters_()
    return solver


# --------------------------------------------------------------------------- evaluation
def lenient_jaccard(det: np.ndarray, truth: np.ndarray, radius: float) -> float:
    """Jaccard without the one-to-one rule: TP = true pixels with a detection within δ,
    FP = detections with no true pixel within δ, FN = true pixels with none."""
    d = np.argwhere(det)
    t = np.argwhere(truth > 0)

    def fxy(c):
        return c[:, 0], c[:, 2].astype(float), c[:, 1].astype(float)

    ti, li, _ = candidate_pairs(fxy(t), fxy(d), radius)
    tp = len(np.unique(ti))
    fp = len(d) - len(np.unique(li))
    fn = len(t) - tp
    return tp / max(tp + fp + fn, 1)


def jaccards(det: np.ndarray, truth: np.ndarray) -> dict:
    res = [pixel_jaccard(det, truth, radius=r) for r in TOLERANCES]
    return {"pooled": [r.jaccard for r in res],
            "per_image": [float(np.nanmean(r.jaccard_per_image)) for r in res],
            "lenient": [lenient_jaccard(det, truth, r) for r in TOLERANCES]}


def evaluate_row(solver, cfg: dict, y: torch.Tensor, x: np.ndarray) -> dict:
    with torch.inference_mode():
        rec = solver(y).numpy()
    finite = bool(np.isfinite(rec).all())
    learned_tau = cfg["loss"]["kind"] == "localization"
    mode = cfg["eval"]["detection"]
    tau = float(solver.tau.detach()) if (mode == "tau" or (mode == "auto" and learned_tau)) \
        else 0.0
    det = (rec >= tau) & (rec > 0) if finite else np.zeros(rec.shape, bool)
    out = {"threshold": tau, "jaccard": jaccards(det, x)}
    out["jaccard_mean"] = float(np.mean(out["jaccard"]["pooled"]))
    out["jaccard_mean_per_image"] = float(np.mean(out["jaccard"]["per_image"]))
    best = (-1.0, None, None)
    if finite:
        for t in ORACLE_TAUS:
            js = [pixel_jaccard((rec >= t) & (rec > 0), x, radius=r).jaccard for r in TOLERANCES]
            if np.mean(js) > best[0]:
                best = (float(np.mean(js)), t, js)
    out["oracle"] = {"threshold": best[1], "jaccard": best[2], "jaccard_mean": best[0]}
    out["psnr_db"] = float(np.mean([psnr(x[i], np.nan_to_num(rec[i]),
                                         data_range=float(x[i].max())) for i in range(len(x))]))
    out["stability"] = {"finite": finite, "max": float(np.nanmax(rec)) if rec.size else 0.0,
                        "total_over_true": float(np.nansum(rec) / x.sum())}
    out["detections_per_image"] = float(det.sum() / len(x))
    out["true_pixels_per_image"] = float((x > 0).sum() / len(x))
    return out


def theta_summary(solver) -> dict:
    th = solver.theta()
    a = np.asarray(th["alpha"], dtype=float)
    r = np.atleast_1d(np.asarray(th["rho"], dtype=float))
    out = {"rho": float(r[0]) if r.size == 1 else None, "rho_mean": float(r.mean()),
           "rho_first_last": [float(r[0]), float(r[-1])], "tau": float(th["tau"]),
           "alpha_mean": float(a.mean()), "alpha_min": float(a.min()),
           "alpha_max": float(a.max()), "alpha_first_last": [float(a[0]), float(a[-1])],
           "alpha_units": solver.alpha_units,
           "alpha_at_upper_bound": float(np.mean(a >= solver.bounds["alpha"][1] - 1e-6))}
    if r.size > 1:
        out["rho_schedule"] = [float(v) for v in r]
    out["alpha_schedule"] = [float(v) for v in a]
    return out


# --------------------------------------------------------------------------- one row
def run_row(row: dict, log) -> dict:
    cfg = row_config(row)
    h = config_hash(cfg)
    out_file = ROW_DIR / f"{row['name']}.json"
    if out_file.is_file():
        done = json.loads(out_file.read_text())
        if done.get("config_hash") == h:
            log(f"[{row['name']}] done already")
            return done
    d = cfg["data"]
    op = build_solver(d["upsampling"], d["sigma_fine_px"], iterations=1).op
    data = make_data(d, op)
    torch.manual_seed(0)
    solver = make_solver(cfg, data)
    loss = LossConfig(kind=cfg["loss"]["kind"], tolerance_px=cfg["loss"]["tolerance_px"],
                      huber_delta=cfg["loss"]["huber_delta"],
                      binarise_eps=cfg["loss"]["binarise_eps"])
    o = cfg["optim"]
    optim = OptimConfig(optimizer=o["optimizer"], outer_iterations=o["outer_iterations"],
                        adam_lr=o["adam_lr"], first_move=o["first_move"],
                        max_backtracks=MAX_BACKTRACKS)
    initial = theta_summary(solver)
    learn = default_learn(solver, loss.kind)
    optimizer = build_optimizer(solver, learn, optim)
    ckpt = ROW_DIR / f"{row['name']}.ckpt"
    history, start = [], 0
    restored = load_checkpoint(ckpt, solver, optimizer) if (ckpt / "state.json").is_file() \
        else None
    if restored is not None and restored[1].get("config_hash") == h:
        history = restored[1]["history"]
        start = int(restored[1]["iteration"])
        log(f"[{row['name']}] resumed at outer iteration {start}")
    elif restored is not None:  # another configuration: start afresh
        solver = make_solver(cfg, data)
        optimizer = build_optimizer(solver, learn, optim)

    def on_iteration(it, record, opt):
        history.append({k: v for k, v in record.items()
                        if not (k.startswith("alpha_") and k[6:].isdigit())
                        and not (k.startswith("rho_") and k[4:].isdigit())})
        save_checkpoint(ckpt, solver, opt, state={"iteration": it, "history": history,
                                                  "config_hash": h})
        log(f"[{row['name']}] it {it:3d} loss {record['loss']:.5g} "
            f"rho {record.get('rho', record.get('rho_mean', 0)):.4g} tau {record['tau']:.4g} "
            f"alpha mean {record['alpha_mean']:.3g} ({record['seconds']:.0f} s)")

    if start < optim.outer_iterations and not getattr(optimizer, "converged", False):
        fit(solver, data["y_train"], torch.from_numpy(data["x_train"]), loss, optim, learn=learn,
            optimizer=optimizer, start_iteration=start, history=list(history),
            on_iteration=on_iteration, progress=False)
    seconds = history[-1]["seconds"] if history else 0.0
    res = {"name": row["name"], "group": row.get("group", ""), "label": row.get("label", ""),
           "set": row.get("set") or {}, "config": cfg, "config_hash": h,
           "initial_theta": initial, "theta": theta_summary(solver),
           "train": {"seconds": round(seconds, 1), "outer_iterations": len(history),
                     "evaluations": int(getattr(optimizer, "n_evaluations", len(history))),
                     "initial_loss": history[0]["loss"] if history else None,
                     "final_loss": history[-1]["loss"] if history else None,
                     "history": history},
           "test": evaluate_row(solver, cfg, data["y_test"], data["x_test"]),
           "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch_threads": torch.get_num_threads()}
    ROW_DIR.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(out_file)
    t = res["test"]
    log(f"[{row['name']}] J {np.round(t['jaccard']['pooled'], 3)} mean {t['jaccard_mean']:.3f} "
        f"PSNR {t['psnr_db']:.2f} oracle {t['oracle']['jaccard_mean']:.3f}")
    return res


# --------------------------------------------------------------------------- summary
def _theta_text(th: dict) -> str:
    rho = f"{th['rho']:.3g}" if th["rho"] is not None else (
        f"{th['rho_first_last'][0]:.2g}→{th['rho_first_last'][1]:.2g}")
    units = "" if th["alpha_units"] == "lipschitz" else " abs"
    return (f"{rho}, {th['tau']:.1f}, {th['alpha_mean']:.2f}{units} "
            f"[{th['alpha_min']:.2f}–{th['alpha_max']:.2f}]")


def summary(rows: list[dict]) -> str:
    header = ("| row | change from today | J δ=0 / 1 / 2 | mean J | mean J per image | "
              "lenient mean J | oracle-τ mean J | PSNR (dB) | learned ρ, τ, mean α [min–max] "
              "| det./true per image | train s |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for r in rows:
        t = r["test"]
        j = t["jaccard"]["pooled"]
        stab = "" if t["stability"]["finite"] else " (x_K not finite)"
        lines.append(
            f"| {r['name']} | {r['label']}{stab} | {j[0]:.3f} / {j[1]:.3f} / {j[2]:.3f} | "
            f"**{t['jaccard_mean']:.3f}** | {t['jaccard_mean_per_image']:.3f} | "
            f"{np.mean(t['jaccard']['lenient']):.3f} | {t['oracle']['jaccard_mean']:.3f} | "
            f"{t['psnr_db']:.2f} | {_theta_text(r['theta'])} | "
            f"{t['detections_per_image']:.0f}/{t['true_pixels_per_image']:.0f} | "
            f"{r['train']['seconds']:.0f} |")
    for name, p in PAPER.items():
        lines.append(f"| paper | {name} | {p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f} | {p[3]:.3f} | "
                     f"| | | {p[4]:.2f} | | | |")
    return "\n".join(lines)


def write_summary(config_rows: list[dict]) -> None:
    done = []
    for row in config_rows:
        f = ROW_DIR / f"{row['name']}.json"
        if f.is_file():
            r = json.loads(f.read_text())
            if r.get("config_hash") == config_hash(row_config(row)):
                done.append(r)
    table = summary(done)
    slim = [{k: v for k, v in r.items() if k != "train"} | {
        "train": {k: v for k, v in r["train"].items() if k != "history"}} for r in done]
    payload = {"experiment": "ablation1", "base": BASE, "paper": PAPER,
               "when": time.strftime("%Y-%m-%dT%H:%M:%S"), "rows": slim,
               "command": sys.argv, "row_files": str(ROW_DIR)}
    (RESULTS / "ablation1.json").write_text(json.dumps(payload, indent=1))
    (RESULTS / "ablation1.md").write_text(table + "\n")


def main() -> None:
    global RESULTS, ROW_DIR
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--rows", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--summary", action="store_true", help="only rebuild the summary")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=None,
                        help="folder of the summary; rows go to its ablation1/ subfolder")
    args = parser.parse_args()
    if args.results is not None:
        RESULTS, ROW_DIR = args.results, args.results / "ablation1"
    torch.set_num_threads(args.threads)
    rows = load_rows(args.config)
    if args.list:
        for r in rows:
            print(f"{r['name']:28s} {r.get('set') or {}}")
        return
    selected = rows if args.rows is None else [r for r in rows if r["name"] in
                                               args.rows.split(",")]
    if args.rows is not None and len(selected) != len(args.rows.split(",")):
        raise SystemExit(f"unknown rows in {args.rows}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.summary:
        for row in selected:
            run_row(row, lambda m: print(m, flush=True))
            write_summary(rows)
    write_summary(rows)
    print((RESULTS / "ablation1.md").read_text())


if __name__ == "__main__":
    main()
