"""The refinement's split test: which emitters to test, on movies no setting was tuned on.

The shipped generalist with its refinement and four split settings:
- ``off``: no split test (``split_llr`` 0);
- ``lone``: only emitters alone in their region (``split_neighbours`` 0, the setting shipped
  before this experiment);
- ``≤1`` and ``≤2``: emitters with up to one or two other emitters in their region too.

Fresh simulated movies (seeds 7400 + i, none of the accuracy experiment's): the ``zerocost``
camera at 0.5–10 emitters/µm² and with background 50, other PSF widths in camera pixels, an
EMCCD with background, few photons. Scores: JI at 50/100 nm, precision, recall, RMSE at
100 nm, seconds (all four settings run one after another on the same movie).

Usage: python experiments/gridnet_split.py [--model builtin:gridnet-generalist] [--threads 1]
Writes experiments/results/gridnet_split.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import run_header, scores, simulate, write_record  # noqa: E402

#: (case, preset, simulation overrides, frames); seeds 7400 + i.
CASES = [("zerocost 0.5/µm²", "zerocost", ["activation.density_per_um2=0.5"], 60),
         ("zerocost 1/µm²", "zerocost", ["activation.density_per_um2=1"], 40),
         ("zerocost 2/µm²", "zerocost", ["activation.density_per_um2=2"], 30),
         ("zerocost 4/µm²", "zerocost", ["activation.density_per_um2=4"], 20),
         ("zerocost 6/µm²", "zerocost", ["activation.density_per_um2=6"], 20),
         ("zerocost 10/µm²", "zerocost", ["activation.density_per_um2=10"], 20),
         ("zerocost bg 50", "zerocost", ["background.photons=50"], 20),
         ("σ 2.0 px (55 nm pixels), 2/µm²", "zerocost",
          ["pixel_size_nm=55", "activation.density_per_um2=2", "n_rows=96", "n_cols=96"], 20),
         ("σ 0.7 px (157 nm pixels), 2/µm²", "zerocost",
          ["pixel_size_nm=157", "activation.density_per_um2=2", "n_rows=48", "n_cols=48"], 30),
         ("challenge2016 bg 100, 2/µm²", "challenge2016",
          ["background.photons=100", "activation.density_per_um2=2"], 20),
         ("thunderstorm 500 photons, 1/µm²", "thunderstorm",
          ["emitters.photons_mean=500", "activation.density_per_um2=1"], 40)]
#: (label, engine options).
SETTINGS = [("off", {"split_llr": 0.0}), ("lone", {"split_neighbours": 0}),
            ("≤1", {"split_neighbours": 1}), ("≤2", {"split_neighbours": 2})]


def rows_for(model: str, work: Path) -> list[dict]:
    from stormfold.io.tables import read_table
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    rows = []
    for i, (name, preset, over, frames) in enumerate(CASES):
        cfg = simulate(work / f"m{i}", preset, frames, 7400 + i, over)
        truth = read_table(work / f"m{i}" / "truth.csv")
        for label, options in SETTINGS:
            engine = load_engine(model=model, options=options)
            t0 = time.perf_counter()
            locs = localize_movie(work / f"m{i}" / "movie.tif", engine, camera=cfg.camera,
                                  batch_frames=16, progress=False).locs
            sc = scores(truth, locs)
            rows.append({"case": name, "split": label, "ji_50": sc["ji_50"],
                         "ji_100": sc["ji_100"], "precision": sc["precision"],
                         "recall": sc["recall"], "rmse_nm": sc["rmse_nm"],
                         "n_locs": sc["n_locs"], "n_truth": sc["n_truth"],
                         "seconds": round(time.perf_counter() - t0, 2)})
            print(rows[-1], flush=True)
    return rows


def _markdown(result: dict) -> str:
    keys = ["case", "split", "ji_50", "ji_100", "precision", "recall", "rmse_nm", "n_locs",
            "n_truth", "seconds"]
    lines = [f"gridnet split test ({result['when']}, model {result['model']}, CPU "
             f"{result['cpu']}, {result['threads']} thread(s))", "",
             f"Command: `{result['command']}`", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in result["rows"]]
    lines += ["", "Sum of JI@100 over the cases, per setting: " + ", ".join(
        f"{k} {v}" for k, v in result["sum_ji_100"].items()), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:gridnet-generalist")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = {**run_header("gridnet_split.py", args.threads), "model": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        rows = rows_for(args.model, Path(tmp))
    result["rows"] = rows
    result["sum_ji_100"] = {label: round(sum(r["ji_100"] for r in rows if r["split"] == label), 4)
                            for label, _ in SETTINGS}
    write_record("gridnet_split", result, _markdown(result))

if __name__ == "__main__":
    main()
