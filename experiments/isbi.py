"""Paper experiment 2 (SPEC §5, item 2; Tables 2–4 of Bonettini et al.): ISBI-2013-like
high-density microtubules, three noise cases, LS and KL fidelity, and Deep-STORM.

Data (our reconstruction of the paper's set-up; its noise levels were lost with its
symbols): 64×64 frames of 100 nm pixels, Gaussian PSF of FWHM 258.21 nm (σ = 109.65 nm),
filament structure (8 random filaments), about 200 active emitters per frame (4.88 /µm²),
photons per emitter Normal(1000, 300); fine grid L = 4 (25 nm pixels). Test: 361 frames
(seed 1); training: 6 other frames (seed 2). Noise cases, in photons:

- ``gaussian``: noise-free image + Normal(0, 10²), no background (LS only, as in the
  paper's Table 2);
- ``poisson_low``: Poisson(image + 5);
- ``poisson_high``: Poisson(image + 50).

Unrolled models (the defaults of ``stormfold train unrolled``): K = 100, cubic
P_ε, known constant background, ρ₀ = 0.02, α_k = 1 (units of 1/Lip) in the box [0, 4/3]
(``--ls-alpha-max``; the first version's was 2); for KL α_k starts at 30 in the box [0, 200], because
the Lipschitz bound ‖H‖²·max(y/b²) is 10–100 times the curvature met near the
solution and steps ≤ 2/Lip barely move x in 100 iterations at low background. SGP 20 outer
iterations (stopping after 10 failed Armijo trials), losses (13) and (14) — (14) with the
tolerance r = 1 fine pixel (see :func:`stormfold.unrolled.losses.localization_loss`; with
the exact-pixel loss, trained for LS in the cases named by ``--exact`` (default
``poisson_low``), the optimiser reaches an empty reconstruction on these data). τ starts at
the count-matching value, bounded by half the largest pixel of x_K at the initial θ.
``--extensions`` adds (14) rows with options beyond the paper: ``rho_k`` (one ρ per
iteration), ``learned_bg`` (b in θ). (A third one, a per-pixel background map for KL,
lowered the Jaccard and was removed; its row in ``results/isbi_extensions.json`` came from
the commit that added it.)

Metrics on the 361 test frames: the paper-style pixel Jaccard at δ = 0, 2, 4 fine pixels
(0, 50, 100 nm) of the detected pixels (x ≥ τ; x > 0 for (13)), their mean, the frame-wise
PSNR of x_K (peak = max of the ground-truth fine image); and the SMLM localization Jaccard
(``stormfold.evaluate``, optimal matching) at 50/100/250 nm of the engine's localizations,
with both extractions (``--extraction`` names the one in the main columns, default the 3×3
peaks; the other's Jaccard at 100 nm has its own column), each with its threshold
calibrated on the training frames (best localization Jaccard at 100 nm). Deep-STORM
(``builtin:deepstorm-zerocost``, if shipped): its localizations for the localization
Jaccard, the same localizations rendered on the L = 4 grid for the pixel Jaccard, and, as in
the paper, the PSNR of its summed super-resolved image (×8, summed to ×4) against the summed
ground truth after the least-squares intensity scale; ``--deepstorm-from FILE`` copies these
rows from an earlier run on the same test frames.

Run: ``python experiments/isbi.py`` (about 50 minutes on one idle CPU core, 13 of them for
Deep-STORM; ``--resume`` keeps the rows already in the results file). Writes
``experiments/results/isbi.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from stormfold.evaluate import evaluate, pixel_jaccard, psnr
from stormfold.localize.components import components_to_table, find_components
from stormfold.simulate import build_config, expected_photons, simulate_truth
from stormfold.unrolled.model import build_solver
from stormfold.unrolled.engine import extract
from stormfold.unrolled.solver import estimate_background
from stormfold.unrolled.train import (ExtractionConfig, LossConfig, OptimConfig,
                                      calibrate_threshold, fine_targets, fit, initial_threshold)

RESULTS = Path(__file__).resolve().parent / "results"
PX = 100.0
L = 4
FINE_NM = PX / L
SIGMA_NM = 109.65
K = 100
OUTER = 20
KL_ALPHA = (30.0, 200.0)  # initial value and upper bound of α_k for KL, in units of 1/Lip
LS_ALPHA_MAX = 4.0 / 3.0  # the stability bound of the accelerated iteration (docs/unrolled.md)
RHO0 = 0.02
EXTENSIONS = {"rho_k": "per-iteration ρ_k", "learned_bg": "learned b"}
CASES = {"gaussian": {"background": 0.0, "gaussian_std": 10.0},
         "poisson_low": {"background": 5.0},
         "poisson_high": {"background": 50.0}}
PAPER = {  # J at the paper's three tolerances, mean J, PSNR (Tables 2–4)
    "gaussian": {"(13) LS": [0.1147, 0.2175, 0.2194, 0.1839, 34.27],
                 "(14) LS": [0.1309, 0.4889, 0.5921, 0.4040, 22.45],
                 "Deep-STORM": [0.0453, 0.4563, 0.5688, 0.3568, 20.10]},
    "poisson_low": {"(13) KL": [0.0921, 0.2633, 0.3159, 0.2238, 33.94],
                    "(13) LS": [0.1057, 0.1205, 0.1211, 0.1158, 34.74],
                    "(14) KL": [0.0907, 0.4250, 0.5924, 0.3694, 22.66],
                    "(14) LS": [0.1287, 0.4494, 0.5358, 0.3713, 22.52],
                    "Deep-STORM": [0.0381, 0.4568, 0.5890, 0.3613, 19.52]},
    "poisson_high": {"(13) KL": [0.0589, 0.0909, 0.0987, 0.0828, 34.35],
                     "(13) LS": [0.0544, 0.0778, 0.0829, 0.0717, 34.36],
                     "(14) KL": [0.0982, 0.3684, 0.4771, 0.3146, 25.31],
                     "(14) LS": [0.0950, 0.3902, 0.5012, 0.3288, 25.74],
                     "Deep-STORM": [0.0106, 0.1949, 0.3185, 0.1747, 17.56]},
}


def sim_config(n_frames: int, seed: int):
    return build_config("challenge2016", n_frames=n_frames, seed=seed, overrides={
        "n_rows": 64, "n_cols": 64, "pixel_size_nm": PX,
        "structure": {"kind": "filaments", "n_filaments": 8},
        "activation": {"model": "independent", "density_per_um2": 4.88,
                       "density_std_per_um2": 0.5},
        "emitters": {"photons_distribution": "normal", "photons_mean": 1000.0,
                     "photons_std": 300.0, "sigma_nm": SIGMA_NM, "sigma_std_nm": 0.0},
        "background": {"photons": 0.0}})


def scene(n_frames: int, seed: int):
    """Ground truth, the noise-free signal (photons) and the fine-grid targets."""
    cfg = sim_config(n_frames, seed)
    truth, _ = simulate_truth(cfg)
    signal = expected_photons(cfg, truth, 0, n_frames)
    target = fine_targets(truth, n_frames, (64 * L, 64 * L), FINE_NM)
    return truth, signal, target


def noisy(signal: np.ndarray, case: dict, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if "gaussian_std" in case:
        return (signal + case["background"] + rng.normal(0, case["gaussian_std"], signal.shape)
                ).astype(np.float32)
    return rng.poisson(signal + case["background"]).astype(np.float32)


def train_model(fidelity: str, loss_kind: str, tolerance: int, background: float,
                y: np.ndarray, target: np.ndarray, log, outer: int = OUTER,
                ls_alpha_max: float = LS_ALPHA_MAX, rho0: float = RHO0,
                extension: str | None = None):
    """Train one unrolled model on the training frames (see the module notes).

    ``extension``: ``rho_k`` (one ρ per iteration) or ``learned_bg`` (b in θ, starting from
    the per-frame estimate's mean) — options beyond the paper.
    """
    kw = {}
    if extension == "rho_k":
        kw["rho_per_iteration"] = True
    if extension == "learned_bg":
        b0 = float(estimate_background(torch.from_numpy(y)).mean())
        kw.update(background="learned",
                  background_photons=max(b0, 1.0 if fidelity == "kl" else 0.0))
    else:
        kw.update(background="given", background_photons=max(background, 0.0))
    solver = build_solver(L, SIGMA_NM / FINE_NM, iterations=K, fidelity=fidelity, eps=0.1,
                          rho=rho0, alpha=KL_ALPHA[0] if fidelity == "kl" else 1.0,
                          checkpoint_segments=4, **kw)
    if fidelity == "kl":
        solver.set_bounds("alpha", 0.0, KL_ALPHA[1])
    else:
        solver.set_bounds("alpha", 0.0, ls_alpha_max)
    solver.project_parameters_()
    yt = torch.from_numpy(y)
    if loss_kind == "localization":
        tau0, tau_max = initial_threshold(solver, yt, target)
        with torch.no_grad():
            solver.tau.fill_(tau0)
        solver.set_bounds("tau", 1e-3 * tau_max, tau_max)
    t0 = time.perf_counter()
    history, _ = fit(solver, yt, torch.from_numpy(target), LossConfig(kind=loss_kind,
                                                                      tolerance_px=tolerance),
                     OptimConfig(outer_iterations=outer), progress=False,
                     on_iteration=lambda it, r, o: log(
                         f"    it {it:2d} loss {r['loss']:.5g} rho "
                         f"{r.get('rho', r.get('rho_mean', 0.0)):.4g} tau "
                         f"{r['tau']:.4g} alpha_mean {r['alpha_mean']:.3g} ({r['seconds']:.0f} s)"))
    return solver, history, time.perf_counter() - t0


def calibrate(solver, y: np.ndarray, truth, method: str) -> dict:
    """Extraction threshold with the best localization Jaccard at 100 nm on the training
    frames (``stormfold.unrolled.train.calibrate_threshold``)."""
    ext = ExtractionConfig(calibrate=True, tolerance_nm=100.0, method=method)
    return calibrate_threshold(solver, torch.from_numpy(y), truth, PX, ext)


TOLERANCES_PX = (0.0, 2.0, 4.0)  # 0, 50, 100 nm on the 25 nm grid


def pixel_metrics(det: np.ndarray, target: np.ndarray) -> list[float]:
    return [pixel_jaccard(det, target, radius=r).jaccard for r in TOLERANCES_PX]


def evaluate_unrolled(solver, loss_kind: str, y: np.ndarray, truth, target: np.ndarray,
                      thresholds: dict[str, float], method: str) -> dict:
    """Pixel Jaccard and PSNR of x_K; localization Jaccard of both extraction methods
    (``thresholds``: calibrated per method); ``method`` is the one reported in the table."""
    import pandas as pd

    tau = solver.theta()["tau"] if loss_kind == "localization" else 0.0
    dets, psnrs = [], []
    locs: dict[str, list] = {m: [] for m in thresholds}
    with torch.inference_mode():
        for a in range(0, len(y), 16):
            x = solver(torch.from_numpy(y[a:a + 16])).numpy()
            dets.append(((x >= tau) & (x > 0)).astype(np.uint8))
            psnrs += [psnr(target[a + i], x[i], data_range=float(target[a + i].max()))
                      for i in range(len(x))]
            for m, thr in thresholds.items():
                locs[m].append(extract(x, thr, a, FINE_NM, m))
    js = pixel_metrics(np.concatenate(dets), target)
    by_method = {}
    for m, parts in locs.items():
        table = pd.concat(parts, ignore_index=True)
        ev = evaluate(truth, table, tolerances_nm=(50, 100, 250))
        by_method[m] = {"threshold": thresholds[m],
                        "loc_jaccard": [float(v) for v in ev["jaccard"]],
                        "rmse_100nm": float(ev["rmse_lateral_nm"].iloc[1]),
                        "locs_per_frame": len(table) / len(y)}
    out = {"pixel_jaccard": js, "pixel_jaccard_mean": float(np.mean(js)),
           "psnr_db": float(np.mean(psnrs)), "extraction": method, "by_extraction": by_method}
    out.update({k: by_method[method][k] for k in ("loc_jaccard", "rmse_100nm", "locs_per_frame")})
    return out


def evaluate_deepstorm(engine, y: np.ndarray, truth, target: np.ndarray) -> dict:
    import pandas as pd

    locs, sr = [], None
    for a in range(0, len(y), 16):
        out = engine.process(y[a:a + 16], a, PX)
        locs.append(out.locs)
        if out.superres is not None:
            sr = out.superres if sr is None else sr + out.superres
    locs = pd.concat(locs, ignore_index=True)
    m = evaluate(truth, locs, tolerances_nm=(50, 100, 250))
    det = np.zeros_like(target, dtype=np.uint8)
    r = np.floor(locs["y_nm"].to_numpy() / FINE_NM).astype(int)
    c = np.floor(locs["x_nm"].to_numpy() / FINE_NM).astype(int)
    ok = (r >= 0) & (r < target.shape[1]) & (c >= 0) & (c < target.shape[2])
    det[locs["frame"].to_numpy()[ok], r[ok], c[ok]] = 1
    js = pixel_metrics(det, target)
    ref = target.sum(0)
    f = engine.upsampling // L
    img = sr.reshape(ref.shape[0], f, ref.shape[1], f).sum((1, 3)) if sr is not None else \
        det.sum(0).astype(float)
    scale = float((img * ref).sum() / max((img * img).sum(), 1e-12))
    return {"pixel_jaccard": js, "pixel_jaccard_mean": float(np.mean(js)),
            "psnr_db": psnr(ref, scale * img, data_range=float(ref.max())),
            "psnr_note": "summed image, least-squares intensity scale",
            "loc_jaccard": [float(v) for v in m["jaccard"]],
            "rmse_100nm": float(m["rmse_lateral_nm"].iloc[1]),
            "locs_per_frame": len(locs) / len(y)}


def format_tables(results: dict, n_test: int) -> str:
    lines = []
    for case_name, rows in results.items():
        lines.append(f"\n**{case_name}** ({n_test} test frames)\n")
        lines.append("| model | pixel J δ = 0 / 50 / 100 nm | mean J | PSNR (dB) "
                     "| loc. J 50/100/250 nm | loc. J 100 nm, components | locs/frame "
                     "| paper: J (3 tol.) / mean / PSNR |")
        lines.append("|---|---|---|---|---|---|---|---|")
        ordered = [n for n in rows if n != "Deep-STORM"] + [n for n in rows if n == "Deep-STORM"]
        for name in ordered:
            r = rows[name]
            p = PAPER.get(case_name, {}).get(name.replace(" exact", ""))
            ptxt = (f"{p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f} / {p[3]:.3f} / {p[4]:.2f}"
                    if p else "—")
            j = r["pixel_jaccard"]
            lj = r["loc_jaccard"]
            comp = (r.get("by_extraction") or {}).get("components")
            ctxt = f"{comp['loc_jaccard'][1]:.3f}" if comp else "—"
            lines.append(f"| {name} | {j[0]:.3f} / {j[1]:.3f} / {j[2]:.3f} | "
                         f"{r['pixel_jaccard_mean']:.3f} | {r['psnr_db']:.2f} | "
                         f"{lj[0]:.3f} / {lj[1]:.3f} / {lj[2]:.3f} | {ctxt} | "
                         f"{r['locs_per_frame']:.0f} | {ptxt} |")
        if "Deep-STORM" not in rows:
            p = PAPER.get(case_name, {}).get("Deep-STORM")
            lines.append(f"| Deep-STORM | not run | | | | | | {p[0]:.3f} / {p[1]:.3f} / "
                         f"{p[2]:.3f} / {p[3]:.3f} / {p[4]:.2f} |")
    return "\n".join(lines)


def planned_runs(case_name: str, fidelities: list[str], exact: list[str],
                 extensions: list[str]) -> list[tuple[str, str, str, int, str | None]]:
    """(row name, fidelity, loss, tolerance, extension) of one noise case."""
    fids = [f for f in (["ls"] if case_name == "gaussian" else ["kl", "ls"]) if f in fidelities]
    runs = [(f"(13) {f.upper()}", f, "reconstruction", 0, None) for f in fids]
    runs += [(f"(14) {f.upper()}", f, "localization", 1, None) for f in fids]
    if case_name in exact:
        runs += [("(14) LS exact", "ls", "localization", 0, None)]
    for ext in extensions:
        for f in fids:
            runs.append((f"(14) {f.upper()} + {EXTENSIONS[ext]}", f, "localization", 1, ext))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--test-frames", type=int, default=361)
    parser.add_argument("--train-frames", type=int, default=6)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--exact", default="poisson_low",
                        help="cases (comma-separated, or 'none') where (14) LS is also trained "
                             "with the paper's exact-pixel loss (r = 0)")
    parser.add_argument("--outer", type=int, default=OUTER, help="outer (SGP) iterations")
    parser.add_argument("--no-deepstorm", action="store_true")
    parser.add_argument("--fidelities", default="kl,ls", help="unrolled fidelities to train")
    parser.add_argument("--ls-alpha-max", type=float, default=LS_ALPHA_MAX,
                        help="upper bound of the LS steps α_k in units of 1/Lip (default 4/3, "
                             "the stability bound; the first version's: 2)")
    parser.add_argument("--rho0", type=float, default=RHO0, help="initial ρ")
    parser.add_argument("--extraction", default="peaks", choices=("peaks", "components"),
                        help="extraction reported in the loc. J columns (both are computed)")
    parser.add_argument("--extensions", default="",
                        help=f"extension rows to add (comma-separated: {', '.join(EXTENSIONS)})")
    parser.add_argument("--name", default="isbi", help="results file stem under results/")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in results/<name>.json and run the others")
    parser.add_argument("--tables-only", action="store_true",
                        help="rewrite results/<name>.md from results/<name>.json")
    parser.add_argument("--deepstorm-only", action="store_true",
                        help="add the Deep-STORM rows to an existing results/isbi.json")
    parser.add_argument("--deepstorm-from", type=Path, default=None,
                        help="copy the Deep-STORM rows from an earlier results file of the same "
                             "test frames (same seeds and frame count) instead of rerunning it")
    args = parser.parse_args()
    if args.tables_only:
        done = json.loads((RESULTS / f"{args.name}.json").read_text())
        table = format_tables(done["results"], done["setup"]["test_frames"])
        (RESULTS / f"{args.name}.md").write_text(table + "\n")
        print(table)
        return
    torch.set_num_threads(1)  # the CPU is shared: one thread avoids OpenMP spin-waits
    torch.manual_seed(0)
    RESULTS.mkdir(parents=True, exist_ok=True)
    extensions = [e for e in args.extensions.split(",") if e]
    unknown = set(extensions) - set(EXTENSIONS)
    if unknown:
        raise SystemExit(f"unknown extensions {sorted(unknown)}")

    def log(msg: str) -> None:
        print(msg, flush=True)

    truth, signal, target = scene(args.test_frames, seed=1)
    truth_tr, signal_tr, target_tr = scene(args.train_frames, seed=2)
    engine, ds_note = None, None
    if not args.no_deepstorm:
        from stormfold.errors import UserError
        from stormfold.localize.registry import load_engine

        try:
            engine = load_engine(model="builtin:deepstorm-zerocost", device="cpu")
        except (UserError, ImportError, ModuleNotFoundError) as exc:
            ds_note = f"Deep-STORM not evaluated: {exc}"
            log(ds_note)
    results: dict = {}
    previous: dict = {}
    out_json = RESULTS / f"{args.name}.json"
    if args.deepstorm_only or args.resume:
        if out_json.is_file():
            previous = json.loads(out_json.read_text())
            results = previous["results"]
        elif args.deepstorm_only:
            raise SystemExit(f"--deepstorm-only: {out_json} does not exist")
        if args.deepstorm_only and engine is None:
            raise SystemExit(ds_note)

    def save() -> None:
        payload = {"experiment": "isbi", "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                   "setup": {"px_nm": PX, "L": L, "sigma_nm": SIGMA_NM, "iterations": K,
                             "outer_iterations": args.outer, "test_frames": args.test_frames,
                             "train_frames": args.train_frames, "cases": CASES,
                             "ls_alpha_max": args.ls_alpha_max, "rho0": args.rho0,
                             "extraction": args.extraction,
                             "extraction_note": "threshold calibrated on the training frames "
                                                "(best localization Jaccard at 100 nm)",
                             "photons": "Normal(1000, 300)", "density_per_um2": 4.88},
                   "results": results, "paper": PAPER, "deepstorm_note": ds_note,
                   "commands": (previous.get("commands", [previous.get("command")])
                                if previous else []) + [sys.argv]}
        out_json.write_text(json.dumps(payload, indent=1))
        (RESULTS / f"{args.name}.md").write_text(format_tables(results, args.test_frames) + "\n")

    if args.deepstorm_from is not None:
        earlier = json.loads(args.deepstorm_from.read_text())
        if earlier["setup"]["test_frames"] != args.test_frames:
            raise SystemExit(f"{args.deepstorm_from}: other test frames")
        for case_name, rows in earlier["results"].items():
            if "Deep-STORM" in rows:
                results.setdefault(case_name, {})["Deep-STORM"] = dict(
                    rows["Deep-STORM"], copied_from=str(args.deepstorm_from))
        engine = None
    for case_name in args.cases.split(","):
        case = CASES[case_name]
        y = noisy(signal, case, seed=11)
        y_tr = noisy(signal_tr, case, seed=12)
        runs = [] if args.deepstorm_only else planned_runs(
            case_name, args.fidelities.split(","), args.exact.split(","), extensions)
        results.setdefault(case_name, {})
        for name, fid, kind, tol, ext in runs:
            if name in results[case_name]:
                log(f"[{case_name}] {name}: kept from {out_json.name}")
                continue
            log(f"[{case_name}] training {name}")
            bg = case["background"] if fid == "ls" else max(case["background"], 1.0)
            solver, history, seconds = train_model(fid, kind, tol, bg, y_tr, target_tr, log,
                                                   args.outer, args.ls_alpha_max, args.rho0, ext)
            cal = {m: calibrate(solver, y_tr, truth_tr, m) for m in ("peaks", "components")}
            res = evaluate_unrolled(solver, kind, y, truth, target,
                                    {m: c["threshold"] for m, c in cal.items()}, args.extraction)
            th = solver.theta()
            res.update({"train_seconds": round(seconds, 1), "outer_iterations": len(history),
                        "rho": float(np.mean(th["rho"])),
                        "alpha_mean": float(np.mean(th["alpha"])),
                        "alpha_max": float(np.max(th["alpha"])),
                        "tau": th["tau"] if kind == "localization" else None,
                        "background": th.get("background"), "extension": ext,
                        "calibration": cal,
                        "initial_loss": history[0]["loss"], "final_loss": history[-1]["loss"]})
            results[case_name][name] = res
            log(f"    → pixel J {np.round(res['pixel_jaccard'], 3)}, PSNR {res['psnr_db']:.2f}, "
                f"loc J {np.round(res['loc_jaccard'], 3)} ({args.extraction}), components "
                f"{res['by_extraction']['components']['loc_jaccard'][1]:.3f}")
            save()
        if engine is not None and (args.deepstorm_only or "Deep-STORM" not in results[case_name]):
            log(f"[{case_name}] Deep-STORM")
            t0 = time.perf_counter()
            results[case_name]["Deep-STORM"] = evaluate_deepstorm(engine, y, truth, target)
            results[case_name]["Deep-STORM"]["seconds"] = round(time.perf_counter() - t0, 1)
            save()
    save()
    print(format_tables(results, args.test_frames))
    if ds_note:
        print(f"\n{ds_note}")
    print(f"\n(written to {out_json} and .md)")


if __name__ == "__main__":
    main()
