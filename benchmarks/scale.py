"""The main job at scale: a 10⁵-frame 64×64 movie through `stormfold run`, locally and on Dask.

The movie is simulated once (streamed to disk, then read chunk by chunk) and cached in
``benchmarks/results/scale_movie/``. The classical engine is used because the point is the
streaming machinery (memory must not grow with the movie length); the engines' own speeds are
in their benchmarks. Peak memory is the run's process (and, for Dask, the largest worker).

    python benchmarks/scale.py [--frames 100000] [--workers 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, report, run_isolated, run_main  # noqa: E402


def make_movie(n_frames: int) -> Path:
    from stormfold.simulate import build_config, simulate_to_folder

    folder = RESULTS / "scale_movie"
    movie = folder / "movie.tif"
    if movie.is_file():
        from stormfold.io.movie import open_movie

        with open_movie(movie) as m:
            if m.n_frames == n_frames:
                return movie
    cfg = build_config("thunderstorm", n_frames=n_frames, seed=1,
                       overrides=["activation.density_per_um2=0.5"])
    t0 = time.perf_counter()
    simulate_to_folder(cfg, folder, progress=True)
    print(f"simulated {n_frames} frames in {time.perf_counter() - t0:.0f} s")
    return movie


def case(movie: str, scheduler_workers: int) -> dict:
    from stormfold.pipeline import load_run_config, run

    with tempfile.TemporaryDirectory() as tmp:
        settings = {"movie": movie, "output": tmp, "engine": {"engine": "classic", "batch_frames": 64},
                    "chunk_frames": 1024, "report": False, "postprocess": {}}
        worker_peak = None
        t0 = time.perf_counter()
        if scheduler_workers:
            from distributed import Client, LocalCluster

            with LocalCluster(n_workers=scheduler_workers, threads_per_worker=1,
                              dashboard_address=None) as cluster:
                settings["scheduler"] = cluster.scheduler_address
                result = run(load_run_config(overrides=settings), quiet=True)
                with Client(cluster.scheduler_address) as client:
                    import resource

                    peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                    worker_peak = max(peaks.values()) / 1024.0
        else:
            result = run(load_run_config(overrides=settings), quiet=True)
        seconds = time.perf_counter() - t0
        n = result.meta["movie"]["frames"][1]
        return {"path": f"dask ({scheduler_workers} workers)" if scheduler_workers else "local",
                "frames": n, "localizations": len(result.locs), "seconds": seconds,
                "frames_per_s": n / seconds, "worker_peak_rss_mb": worker_peak}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    movie = str(make_movie(args.frames))
    rows = [run_isolated(case, movie, 0), run_isolated(case, movie, args.workers)]
    report("scale", rows, ["path", "frames", "localizations", "seconds", "frames_per_s",
                           "peak_rss_mb", "worker_peak_rss_mb"])


if __name__ == "__main__":
    run_main(main)
