"""gridnet inference speed against Deep-STORM and the classic engine, and a long movie.

Speed: frames/s of each engine's ``process`` on simulated ``zerocost`` frames already in
photons (64×64 at 6 emitters/µm², and 256×256), float32, each case in a fresh process with
the same number of torch threads, so the ratios gridnet / Deep-STORM are measured in one
run under the same load (recorded per row). gridnet's GFLOP per 64×64 frame is printed
with its model summary. Long movie: a 1,000- and a 10,000-frame 64×64 movie streamed from
disk through ``localize_movie`` with gridnet (CSV, images and run.yaml written): the peak
resident memory must not grow with the movie length.

Architectures (``--architectures``): candidate widths and depths, untrained, the bare
network with per-frame feature reuse (no decoding), GFLOP per 64×64 frame and frames/s at
64×64 and 256×256, next to the faithful Deep-STORM network in the same run.

Usage: python benchmarks/gridnet.py [--model builtin:gridnet-generalist] [--threads 2]
       [--long-frames 1000 10000] [--skip-long] [--skip-speed] [--architectures]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, run_isolated  # noqa: E402

DEEPSTORM = "builtin:deepstorm-zerocost"


def speed(engine_spec: str, size: int, n_frames: int, batch_frames: int, threads: int) -> dict:
    """Frames/s of one engine on size×size zerocost frames (after a warm-up batch)."""
    import torch

    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate

    torch.set_num_threads(threads)
    cfg = build_config("zerocost", n_frames=n_frames, seed=0,
                       overrides=[f"n_rows={size}", f"n_cols={size}"])
    photons = cfg.camera.backward(simulate(cfg).movie)
    if engine_spec == "classic":
        engine = load_engine(engine="classic")
        engine.set_camera(cfg.camera)
    else:
        engine = load_engine(model=engine_spec)
    name = engine.name
    summary = getattr(getattr(engine, "model", None), "config", None)
    engine.process(photons[:min(batch_frames, n_frames)], 0, 100.0)  # warm-up
    load = os.getloadavg()[0]
    n_locs = 0
    t0, c0 = time.perf_counter(), time.process_time()
    for start in range(0, n_frames, batch_frames):
        out = engine.process(photons[start:start + batch_frames], start, 100.0)
        n_locs += len(out.locs)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    row = {"engine": name, "size": f"{size}x{size}", "frames": n_frames, "threads": threads,
           "seconds": seconds, "frames_per_s": n_frames / seconds,
           "frames_per_cpu_s": n_frames / cpu, "locs_per_frame": n_locs / n_frames,
           "load_avg": round(load, 2)}
    if name == "gridnet" and summary is not None:
        from stormfold.gridnet.network import gflop_per_frame, summary as model_summary

        row["gflop_64"] = round(gflop_per_frame(engine.model), 3)
        row["summary"] = model_summary(engine.model)
    return row


ARCHITECTURES = [(16, 16, 2), (16, 24, 2), (24, 32, 2), (32, 32, 2), (16, 24, 3), (24, 24, 3)]


def network_speed(arch: tuple | None, threads: int) -> dict:
    """Frames/s of a bare network: gridnet (frame net once per frame + context net) or the
    faithful Deep-STORM (``arch`` None, ×8 input)."""
    import torch

    torch.set_num_threads(threads)
    row: dict = {}
    if arch is None:
        from stormfold.deepstorm.model import DeepSTORM

        net = DeepSTORM().eval().to(memory_format=torch.channels_last)

        def run(x):
            up = x.repeat_interleave(8, -2).repeat_interleave(8, -1)[:, None]
            return net(up.contiguous(memory_format=torch.channels_last))

        row.update(network="Deep-STORM (faithful, ×8)", gflop_64=48.0)
        sizes = ((64, 4), (256, 1))
    else:
        from stormfold.gridnet.network import (ArchitectureConfig, GridNet, count_parameters,
                                               gflop_per_frame)

        fw, cw, levels = arch
        net = GridNet(ArchitectureConfig(frame_width=fw, context_width=cw, levels=levels)).eval()
        net = net.to(memory_format=torch.channels_last)

        def run(x):
            feats = net.features(torch.cat([x[:1], x, x[-1:]]))
            feats = feats.contiguous(memory_format=torch.channels_last)
            return net.head_from_windows(net.window_features(feats))

        row.update(network=f"gridnet frame {fw} / context {cw}, {levels} levels",
                   parameters=count_parameters(net), gflop_64=round(gflop_per_frame(net), 3))
        sizes = ((64, 64), (256, 8))
    load = os.getloadavg()[0]
    with torch.inference_mode():
        for size, n in sizes:
            x = torch.rand(n, size, size) * 100
            run(x[:2])
            t0, c0 = time.perf_counter(), time.process_time()
            reps = 2 if arch is not None else 1
            for _ in range(reps):
                run(x)
            row[f"fps_{size}"] = round(reps * n / (time.perf_counter() - t0), 3)
            row[f"fps_cpu_{size}"] = round(reps * n / (time.process_time() - c0), 3)
    row["threads"], row["load_avg"] = threads, round(load, 2)
    return row


def make_movie(folder: str, n_frames: int) -> dict:
    from stormfold.simulate import build_config, simulate_to_folder

    simulate_to_folder(build_config("zerocost", n_frames=n_frames, seed=3), folder, progress=False)
    return {}


def long_movie(model: str, folder: str, n_frames: int, threads: int) -> dict:
    import torch

    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    torch.set_num_threads(threads)
    engine = load_engine(model=model)
    t0 = time.perf_counter()
    res = localize_movie(Path(folder) / "movie.tif", engine, Path(folder) / "out", progress=False)
    seconds = time.perf_counter() - t0
    return {"engine": "gridnet", "size": "64x64", "frames": n_frames, "threads": threads,
            "seconds": seconds, "frames_per_s": n_frames / seconds,
            "locs_per_frame": res.run["n_localizations"] / n_frames,
            "load_avg": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:gridnet-generalist")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--long-frames", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--skip-long", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--architectures", action="store_true")
    args = parser.parse_args()
    if args.architectures:
        rows = [run_isolated(network_speed, None, args.threads)]
        rows += [run_isolated(network_speed, a, args.threads) for a in ARCHITECTURES]
        report("gridnet_architectures", rows, ["network", "parameters", "gflop_64", "fps_64",
                                               "fps_cpu_64", "fps_256", "fps_cpu_256",
                                               "threads", "load_avg", "peak_rss_mb"])
    columns = ["engine", "size", "frames", "threads", "seconds", "frames_per_s",
               "frames_per_cpu_s", "locs_per_frame", "load_avg", "peak_rss_mb"]
    if not args.skip_speed:
        rows = []
        # Interleaved so that the three engines see the same load.
        for size, n_gn, n_ds, batch in ((64, 256, 16, 16), (256, 32, 2, 4)):
            rows.append(run_isolated(speed, args.model, size, n_gn, batch, args.threads))
            rows.append(run_isolated(speed, DEEPSTORM, size, n_ds, min(batch, n_ds), args.threads))
            rows.append(run_isolated(speed, "classic", size, n_gn, batch, args.threads))
        for r in rows:
            if "error" in r:
                raise SystemExit(r["error"])
        print(rows[0].get("summary", ""))
        ratios = {}
        for size in ("64x64", "256x256"):
            gn = next(r for r in rows if r["engine"] == "gridnet" and r["size"] == size)
            ds = next(r for r in rows if r["engine"] == "deepstorm" and r["size"] == size)
            ratios[size] = {"wall": gn["frames_per_s"] / ds["frames_per_s"],
                            "cpu": gn["frames_per_cpu_s"] / ds["frames_per_cpu_s"]}
            gn["speedup_vs_deepstorm"] = round(ratios[size]["wall"], 1)
            gn["speedup_vs_deepstorm_cpu"] = round(ratios[size]["cpu"], 1)
        report("gridnet", rows, columns + ["gflop_64", "speedup_vs_deepstorm",
                                           "speedup_vs_deepstorm_cpu"])
    if not args.skip_long:
        rows = []
        for n_frames in args.long_frames:
            with tempfile.TemporaryDirectory() as tmp:
                run_isolated(make_movie, tmp, n_frames)
                rows.append(run_isolated(long_movie, args.model, tmp, n_frames, args.threads))
        report("gridnet_long", rows, columns)


if __name__ == "__main__":
    main()
