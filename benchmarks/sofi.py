"""SOFI: streaming cumulant throughput and memory vs movie length; reconstruction time.

Statistics cases stream a uint16 TIFF movie (128×128 pixels) once, as ``stormfold sofi``
does; the peak of the numpy/Python allocations (``peak_alloc_mb``, tracemalloc) must not
grow with the number of frames (the resident size also counts the movie's memory-mapped
pages, which are page cache). Reconstruction cases run
the unrolled solver (K = 100) on one cumulant image.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, run_isolated, run_main  # noqa: E402


def write_movie(path: Path, n_frames: int, size: int) -> None:
    import numpy as np

    from stormfold.io import TiffStackWriter

    rng = np.random.default_rng(0)
    with TiffStackWriter(path, n_frames, (size, size), np.uint16, pixel_size_nm=100.0) as w:
        for a in range(0, n_frames, 500):
            b = min(a + 500, n_frames)
            w.write(a, rng.poisson(300, (b - a, size, size)).astype(np.uint16))


def statistics_case(path: str, batch: int) -> dict:
    import tracemalloc

    from stormfold.io import open_movie
    from stormfold.sofi import sofi_cumulant

    with open_movie(path) as movie:
        n_frames, shape = movie.n_frames, movie.shape
        tracemalloc.start()  # numpy buffers; the movie's memory map is page cache, not heap
        t0 = time.perf_counter()
        sofi_cumulant(movie, lag=1, batch_frames=batch)
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return {"case": "cumulant (lag 1)", "size": f"{shape[0]}x{shape[1]}", "frames": n_frames,
            "batch": batch, "seconds": seconds, "frames_per_s": n_frames / seconds,
            "peak_alloc_mb": peak}


def reconstruction_case(size: int, iterations: int) -> dict:
    import numpy as np
    import torch

    from stormfold.sofi.model import SofiModel, build_sofi_solver

    torch.set_num_threads(1)
    solver = build_sofi_solver(4, 4.8, learn_sigma=False, iterations=iterations).eval()
    model = SofiModel(solver, 100.0, 0, 3.6e4)
    y = np.random.default_rng(0).uniform(0, 4e4, (size, size))
    model.reconstruct(y)
    t0 = time.perf_counter()
    for _ in range(5):
        model.reconstruct(y)
    seconds = (time.perf_counter() - t0) / 5
    return {"case": f"reconstruction K={iterations}", "size": f"{size}x{size}", "frames": None,
            "batch": None, "seconds": seconds, "frames_per_s": None}


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n_frames, batch in ((1000, 256), (8000, 256), (8000, 64)):
            path = Path(tmp) / f"movie{n_frames}.tif"
            if not path.exists():
                write_movie(path, n_frames, 128)
            rows.append(run_isolated(statistics_case, str(path), batch))
    rows += [run_isolated(reconstruction_case, s, 100) for s in (32, 64, 128)]
    report("sofi", rows, ["case", "size", "frames", "batch", "seconds", "frames_per_s",
                          "peak_alloc_mb", "peak_rss_mb"])


if __name__ == "__main__":
    run_main(main)
