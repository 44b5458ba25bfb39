"""gridnet against Deep-STORM at low density, with the sampling error of the comparison.

The accuracy experiment (``gridnet_accuracy.py``) compares the engines on one movie per
density: 800 emitters at 0.5/µm², where one engine's JI@100 differs from the other's by
0.005 for four emitters. Here each density gets several fresh movies (``zerocost`` camera,
seeds 9000 + 100·d + k, none used for training or tuning), and the table gives per movie
JI@100, precision, recall and RMSE of the shipped generalist and the shipped Deep-STORM,
then the mean over movies and the mean paired difference (gridnet − Deep-STORM) with its
standard error (std of the per-movie differences / √movies). ``ji_100_interior`` is the
JI@100 of the truth and localizations at least 100 nm inside the frame: the simulator puts
no emitter beyond the frame (a camera cropping a sample does), so an emitter on the border
is always inside, which Deep-STORM, trained on this simulator, has learned, and gridnet,
trained with emitters beyond the frame, has not.

Usage: python experiments/gridnet_sparse.py [--movies 5] [--frames 100] [--threads 2]
       [--generalist builtin:gridnet-generalist] [--deepstorm-from RECORD.json] [--record NAME]
Writes experiments/results/gridnet_sparse.{json,md} (or NAME.{json,md}).

``--deepstorm-from`` takes Deep-STORM's rows from an earlier record of the same movies (same
seeds, frames and truth counts, checked) instead of running it again: Deep-STORM is fixed,
and it takes most of the run's time, so another gridnet model is compared in minutes.
"""
from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import (DEEPSTORM, interior_ji, localize, markdown_table,  # noqa: E402
                              paired_difference, run_header, scores, simulate, write_record)

DENSITIES = (0.5, 2.0)


def _earlier_rows(record: Path | None) -> dict:
    """Deep-STORM's rows of an earlier record, by (density, seed); the truth counts are
    checked against the movies made now (other frames or seeds give other counts)."""
    if record is None:
        return {}
    import json

    earlier = json.loads(record.read_text())
    return {(r["density_per_um2"], r["seed"]): r for r in earlier["rows"]
            if r["engine"] == "deepstorm-zerocost"}


def _interior_difference(g: list[dict], s: list[dict]) -> dict:
    """Mean JI@100 away from the frame border, and the mean paired difference ± standard
    error (rows of earlier records without it: NaN)."""
    if not all("ji_100_interior" in r for r in g + s):
        return {"ji_100_interior_gridnet": math.nan, "ji_100_interior_deepstorm": math.nan,
                "interior_difference": math.nan, "interior_standard_error": math.nan}
    n = len(g)
    mean, se = paired_difference([r["ji_100_interior"] for r in g],
                                 [r["ji_100_interior"] for r in s])
    return {"ji_100_interior_gridnet": round(sum(r["ji_100_interior"] for r in g) / n, 4),
            "ji_100_interior_deepstorm": round(sum(r["ji_100_interior"] for r in s) / n, 4),
            "interior_difference": round(mean, 4), "interior_standard_error": round(se, 4)}


def run(generalist: str, movies: int, frames: int, work: Path,
        deepstorm_from: Path | None = None) -> tuple[list[dict], list[dict]]:
    from stormfold.io.tables import read_table

    earlier = _earlier_rows(deepstorm_from)

    rows = []
    for d, density in enumerate(DENSITIES):
        for k in range(movies):
            seed = 9000 + 100 * d + k
            folder = work / f"d{d}_{k}"
            cfg = simulate(folder, "zerocost", frames, seed,
                           [f"activation.density_per_um2={density}"])
            truth = read_table(folder / "truth.csv")
            for label, spec in (("gridnet-generalist", generalist), ("deepstorm-zerocost", DEEPSTORM)):
                if label == "deepstorm-zerocost" and earlier:
                    old = earlier[(density, seed)]
                    if old["n_truth"] != len(truth):
                        raise SystemExit(f"seed {seed}: {len(truth)} emitters, the earlier "
                                         f"record had {old['n_truth']}")
                    rows.append({**old, "engine": label})
                    continue
                locs, seconds = localize(spec, folder / "movie.tif", cfg.camera)
                sc = scores(truth, locs)
                rows.append({"density_per_um2": density, "seed": seed, "engine": label,
                             "ji_100": sc["ji_100"],
                             "ji_100_interior": interior_ji(truth, locs, cfg),
                             "precision": sc["precision"],
                             "recall": sc["recall"], "rmse_nm": sc["rmse_nm"],
                             "n_truth": sc["n_truth"], "seconds": round(seconds, 1)})
                print(rows[-1], flush=True)
    summary = []
    for density in DENSITIES:
        mine = [r for r in rows if r["density_per_um2"] == density]
        g = [r for r in mine if r["engine"] == "gridnet-generalist"]
        s = [r for r in mine if r["engine"] == "deepstorm-zerocost"]
        n = len(g)
        mean, se = paired_difference([r["ji_100"] for r in g], [r["ji_100"] for r in s])
        summary.append({"density_per_um2": density, "movies": n,
                        "emitters": sum(r["n_truth"] for r in g),
                        "ji_100_gridnet": round(sum(r["ji_100"] for r in g) / n, 4),
                        "ji_100_deepstorm": round(sum(r["ji_100"] for r in s) / n, 4),
                        "difference": round(mean, 4), "standard_error": round(se, 4),
                        **_interior_difference(g, s),
                        "rmse_nm_gridnet": round(sum(r["rmse_nm"] for r in g) / n, 2),
                        "rmse_nm_deepstorm": round(sum(r["rmse_nm"] for r in s) / n, 2)})
    return rows, summary


def _markdown(result: dict) -> str:
    table = markdown_table
    return "\n".join([f"gridnet vs Deep-STORM at low density ({result['when']}, generalist "
                      f"{result['generalist']}, CPU {result['cpu']}, {result['threads']} "
                      f"thread(s))", "", f"Command: `{result['command']}`", "",
                      "## Summary (difference = gridnet − Deep-STORM in JI@100, mean over "
                      "movies ± standard error)", "", *table(result["summary"]), "",
                      "## Per movie", "", *table(result["rows"]), ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generalist", default="builtin:gridnet-generalist")
    parser.add_argument("--movies", type=int, default=5)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--deepstorm-from", type=Path, default=None)
    parser.add_argument("--record", default="gridnet_sparse")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = {**run_header("gridnet_sparse.py", args.threads), "generalist": args.generalist,
              "deepstorm_from": str(args.deepstorm_from) if args.deepstorm_from else None}
    with tempfile.TemporaryDirectory() as tmp:
        result["rows"], result["summary"] = run(args.generalist, args.movies, args.frames,
                                                Path(tmp), args.deepstorm_from)
    write_record(args.record, result, _markdown(result))


if __name__ == "__main__":
    main()
