"""Simulator throughput: frames per second for each preset (written to disk, as the CLI does)."""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, run_isolated, run_main  # noqa: E402


def case(preset: str, n_frames: int, overrides: list[str]) -> dict:
    from stormfold.simulate import build_config, simulate_to_folder

    cfg = build_config(preset, n_frames=n_frames, overrides=overrides, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        simulate_to_folder(cfg, tmp, progress=False)
        seconds = time.perf_counter() - t0
    area = cfg.area_um2
    density = cfg.activation.density_per_um2 if cfg.activation.model == "independent" else None
    return {"preset": preset, "frames": n_frames, "size": f"{cfg.n_rows}x{cfg.n_cols}",
            "emitters_per_frame": None if density is None else round(density * area, 1),
            "seconds": seconds, "frames_per_s": n_frames / seconds}


def main() -> None:
    cases = [("zerocost", 1000, []), ("thunderstorm", 1000, []), ("challenge2016", 1000, []),
             ("zerocost", 1000, ["activation.density_per_um2=1"]), ("sofi", 1000, [])]
    rows = []
    for preset, n, over in cases:
        row = run_isolated(case, preset, n, over)
        row["overrides"] = " ".join(over) or "-"
        rows.append(row)
    report("simulate", rows, ["preset", "overrides", "size", "frames", "emitters_per_frame",
                              "seconds", "frames_per_s", "peak_rss_mb"])


if __name__ == "__main__":
    run_main(main)
