"""Choose between gridnet models: JI@100 on 30 fresh simulated movies of several microscopes.

Each model runs as shipped (its decoder, threshold and refinement) on the same movies:
three seeds each of the ``zerocost`` camera at 0.5 and 2/µm² (100 frames) and 6 and
10/µm² (40 frames), and two seeds each of ``zerocost`` with background 50 and 200,
``thunderstorm`` (60 frames), ``challenge2016`` (40 frames, EMCCD) and PSF σ of 2.0 and
0.7 camera pixels (55 and 157 nm pixels, 2/µm², 30 frames). Seeds 9500 + i, none of the
other experiments'. The table gives the mean JI@100 per case and model, and the sum of
the means.

Usage: python experiments/gridnet_candidates.py --model NAME=SPEC [--model NAME=SPEC ...]
       [--threads 1] [--record gridnet_candidates]
Writes experiments/results/RECORD.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import localize, run_header, scores, simulate, write_record  # noqa: E402


def cases() -> list[tuple[str, str, list[str], int]]:
    out = []
    for _ in range(3):
        out += [("zerocost 0.5/µm²", "zerocost", ["activation.density_per_um2=0.5"], 100),
                ("zerocost 2/µm²", "zerocost", ["activation.density_per_um2=2"], 100),
                ("zerocost 6/µm²", "zerocost", ["activation.density_per_um2=6"], 40),
                ("zerocost 10/µm²", "zerocost", ["activation.density_per_um2=10"], 40)]
    for _ in range(2):
        out += [("zerocost bg 50", "zerocost", ["background.photons=50"], 40),
                ("zerocost bg 200", "zerocost", ["background.photons=200"], 40),
                ("thunderstorm", "thunderstorm", [], 60),
                ("challenge2016", "challenge2016", [], 40),
                ("σ 2.0 px, 2/µm²", "zerocost", ["pixel_size_nm=55", "activation.density_per_um2=2",
                                                "n_rows=96", "n_cols=96"], 30),
                ("σ 0.7 px, 2/µm²", "zerocost", ["pixel_size_nm=157", "activation.density_per_um2=2",
                                                "n_rows=48", "n_cols=48"], 30)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=SPEC")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", default="gridnet_candidates")
    args = parser.parse_args()
    import numpy as np
    import torch

    from stormfold.io.tables import read_table

    models = dict(m.split("=", 1) for m in args.model)
    torch.set_num_threads(args.threads)
    header = run_header("gridnet_candidates.py", args.threads)
    per_movie = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, preset, over, frames) in enumerate(cases()):
            folder = Path(tmp) / f"c{i}"
            cfg = simulate(folder, preset, frames, 9500 + i, over)
            truth = read_table(folder / "truth.csv")
            for label, spec in models.items():
                locs, _ = localize(spec, folder / "movie.tif", cfg.camera)
                per_movie.append({"case": name, "seed": 9500 + i, "model": label,
                                  "ji_100": scores(truth, locs)["ji_100"]})
                print(per_movie[-1], flush=True)
    names = list(dict.fromkeys(r["case"] for r in per_movie))
    means = {label: {c: round(float(np.mean([r["ji_100"] for r in per_movie
                                             if r["model"] == label and r["case"] == c])), 4)
                     for c in names} for label in models}
    result = {**header, "models": models, "mean_ji_100": means,
              "sum_of_means": {k: round(sum(v.values()), 4) for k, v in means.items()},
              "per_movie": per_movie}
    lines = [f"gridnet candidates ({result['when']}, CPU {result['cpu']}, {args.threads} "
             f"thread(s))", "", f"Command: `{result['command']}`", "",
             "Models: " + ", ".join(f"{k} = `{v}`" for k, v in models.items()), "",
             "Mean JI@100 per case (3 movies per zerocost density, 2 per other case):", "",
             "| case | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    lines += [f"| {c} | " + " | ".join(str(means[m][c]) for m in models) + " |" for c in names]
    lines += ["| **sum** | " + " | ".join(f"**{result['sum_of_means'][m]}**" for m in models)
              + " |", ""]
    write_record(args.record, result, "\n".join(lines))


if __name__ == "__main__":
    main()
