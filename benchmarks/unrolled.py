"""Unrolled solver throughput: frames/s and peak memory, 64×64 frames, L = 4, K = 100, CPU.

Inference runs the engine's whole per-batch path (x_K under ``torch.inference_mode`` and the
extraction); the training rows time one evaluation of the upper loss and its gradient
(forward + backward through the K iterations) on 8 frames. Each case is repeated and the
best pass is reported, because the machine is shared (on 2 cores under load, OpenMP threads
spin-waiting on busy cores can slow a pass several-fold).

``--reference SRC`` also times the shipped model ``builtin:unrolled-isbi2013`` of another
version of stormfold (``SRC`` = its ``src`` folder, e.g. from
``git archive <commit> src | tar -x -C /tmp/ref``) against this one, alternating the two
several times in the same run: on a loaded machine the ratio of the two is the meaningful
figure. The machine's load average and CPU model are recorded with the results.

Run: ``python benchmarks/unrolled.py [--reference /tmp/ref/src] [--only-shipped] [--threads N]
[--frames N] [--rounds N] [--record NAME]`` (writes ``benchmarks/results/NAME.json``, default
``unrolled``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, run_isolated, run_main  # noqa: E402


def _frames(n: int, seed: int = 0):
    import numpy as np

    from stormfold.simulate import build_config, simulate

    cfg = build_config("challenge2016", n_frames=n, seed=seed, overrides=[
        "structure.kind=filaments", "activation.density_per_um2=4.88",
        "emitters.photons_mean=1000", "emitters.sigma_nm=109.65", "background.photons=10",
        "camera.em_gain=1", "camera.e_per_adu=1", "camera.readout_e=0", "camera.qe=1"])
    sim = simulate(cfg)
    return np.ascontiguousarray(cfg.camera.backward(sim.movie))


def _best_pass(engine, photons, batch: int, repeats: int) -> tuple[float, int]:
    """Seconds of the fastest of ``repeats`` passes over the frames in batches, after a
    warm-up batch (allocator, matrices), and the localizations of one pass."""
    engine.process(photons[:batch], 0, 100.0)
    best, n_locs = float("inf"), 0
    for _ in range(repeats):
        n_locs = 0
        t0 = time.perf_counter()
        for a in range(0, len(photons), batch):
            n_locs += len(engine.process(photons[a:a + batch], a, 100.0).locs)
        best = min(best, time.perf_counter() - t0)
    return best, n_locs


def inference(fidelity: str, n_frames: int, batch: int, threads: int, repeats: int = 3) -> dict:
    import torch

    from stormfold.unrolled.engine import UnrolledEngine
    from stormfold.unrolled.model import build_solver

    torch.set_num_threads(threads)
    photons = _frames(n_frames)
    solver = build_solver(4, 109.65 / 25.0, iterations=100, fidelity=fidelity, rho=0.05,
                          tau=20.0 if fidelity == "ls" else 2.0, background="estimate")
    engine = UnrolledEngine(solver, 100.0, chunk_frames=batch)
    best, n_locs = _best_pass(engine, photons, batch, repeats)
    return {"case": "inference", "fidelity": fidelity, "frames": n_frames, "batch": batch,
            "threads": threads, "seconds": best, "frames_per_s": n_frames / best,
            "locs_per_frame": n_locs / n_frames}


def training_step(fidelity: str, n_frames: int, segments: int, threads: int,
                  repeats: int = 2) -> dict:
    import torch

    from stormfold.unrolled.losses import localization_loss
    from stormfold.unrolled.model import build_solver

    torch.set_num_threads(threads)
    photons = torch.from_numpy(_frames(n_frames))
    target = torch.zeros(n_frames, 256, 256)
    solver = build_solver(4, 109.65 / 25.0, iterations=100, fidelity=fidelity, rho=0.05,
                          tau=20.0, background="estimate", checkpoint_segments=segments)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        localization_loss(solver(photons), target, solver.tau).backward()
        best = min(best, time.perf_counter() - t0)
    return {"case": f"train step ({segments} segments)", "fidelity": fidelity,
            "frames": n_frames, "batch": n_frames, "threads": threads, "seconds": best,
            "frames_per_s": n_frames / best}


def shipped(src: str | None, n_frames: int, batch: int, threads: int, repeats: int = 3) -> dict:
    """The shipped model as a user runs it (``load_engine``), optionally from another tree."""
    if src:
        sys.path.insert(0, src)
    import torch

    import stormfold
    from stormfold.localize.registry import load_engine

    torch.set_num_threads(threads)
    photons = _frames(n_frames)
    engine = load_engine(model="builtin:unrolled-isbi2013", device="cpu",
                         options={"chunk_frames": batch})
    best, n_locs = _best_pass(engine, photons, batch, repeats)
    method = getattr(engine, "method", "components")
    return {"case": f"shipped model ({'reference' if src else 'this version'}, {method})",
            "fidelity": engine.solver.fidelity, "frames": n_frames, "batch": batch,
            "threads": threads, "seconds": best, "frames_per_s": n_frames / best,
            "locs_per_frame": n_locs / n_frames, "stormfold": str(Path(stormfold.__file__).parent),
            "load_average": os.getloadavg()[0]}


def extraction(n_frames: int, repeats: int = 5) -> list[dict]:
    """The two extraction methods alone on the same x_K (one thread): their cost per frame
    next to the solver's, which is the same for both."""
    import torch

    from stormfold.localize.registry import load_engine
    from stormfold.unrolled.engine import extract

    torch.set_num_threads(1)
    photons = _frames(n_frames)
    engine = load_engine(model="builtin:unrolled-isbi2013", device="cpu")
    t0 = time.perf_counter()
    x = engine.reconstruct(photons)
    solve = time.perf_counter() - t0
    rows = [{"case": "x_K only (shipped model, 1 thread)", "frames": n_frames, "threads": 1,
             "seconds": solve, "frames_per_s": n_frames / solve}]
    for method, thr in (("peaks", engine.threshold), ("components", float(engine.solver.tau))):
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            locs = extract(x, thr, 0, 25.0, method)
            best = min(best, time.perf_counter() - t0)
        rows.append({"case": f"extraction only ({method})", "frames": n_frames, "threads": 1,
                     "seconds": best, "frames_per_s": n_frames / best,
                     "locs_per_frame": len(locs) / n_frames})
    return rows


def _extraction_rows(n_frames: int) -> dict:
    return {"rows": extraction(n_frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", default=None,
                        help="src folder of another stormfold version to compare with")
    parser.add_argument("--only-shipped", action="store_true",
                        help="only the shipped-model rows")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternations of this version and the reference")
    parser.add_argument("--frames", type=int, default=160,
                        help="frames per shipped-model pass (fewer on a busy machine)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads of the shipped-model rows")
    parser.add_argument("--record", default="unrolled",
                        help="name of the record under benchmarks/results/ (NAME.json)")
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()
    if args.reference:
        for _ in range(args.rounds):
            for src in (None, args.reference):
                rows.append(run_isolated(shipped, src, args.frames, 16, args.threads))
    else:
        rows.append(run_isolated(shipped, None, args.frames, 16, args.threads))
    ext = run_isolated(_extraction_rows, 64)
    rows.extend(ext.get("rows", [ext]))
    if not args.only_shipped:
        for fid in ("ls", "kl"):
            for threads in (1, 2):
                rows.append(run_isolated(inference, fid, 160, 16, threads))
        rows.append(run_isolated(inference, "ls", 160, 4, 1))
        for fid in ("ls", "kl"):
            rows.append(run_isolated(training_step, fid, 8, 4, 1))
        rows.append(run_isolated(training_step, "ls", 8, 1, 1))
    if args.reference:
        ours = max(r["frames_per_s"] for r in rows if "this version" in r.get("case", ""))
        ref = max(r["frames_per_s"] for r in rows if "reference" in r.get("case", ""))
        rows.append({"case": "ratio this version / reference (best of each)",
                     "frames_per_s": ours / ref})
    for r in rows:
        r.setdefault("load_average", None)
    report(args.record, rows, ["case", "fidelity", "frames", "batch", "threads", "seconds",
                              "frames_per_s", "locs_per_frame", "peak_rss_mb", "load_average"])
    import json

    from _common import RESULTS

    path = RESULTS / f"{args.record}.json"
    payload = json.loads(path.read_text())
    from stormfold.device import cpu_model

    payload["machine"].update({"cpu_model": cpu_model(), "load_average_before": load_before,
                               "load_average_after": os.getloadavg(),
                               "reference": args.reference})
    path.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    run_main(main)
