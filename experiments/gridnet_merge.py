"""The refinement's merge test and PSF-shape test (review 14, D1 and D3), on and off.

Fresh movies of the `zerocost` preset (64 × 64 px, 20 frames, seeds 8800 + i):
- clean controls at 0.5 / 2 / 6 / 10 emitters/µm², and σ 110 nm at 157 and 220 nm pixels
  (σ 0.7 and 0.5 px) at 2/µm²;
- `bright`: 25,000–35,000 photons per emitter, 0.3/µm², background 50 photons/px (beyond
  the generalist's training maximum of 10,000: the detector reads each spot as ⌈N/≈11k⌉
  emitters);
- `hot`: 0.5/µm², background 30, with three sCMOS hot pixels of +1,800 / +1,150 / +700 ADU
  added to every frame (one-pixel spikes, neighbours at background).

Each movie is localized by the generalist with ``--set merge=false --set drop_spikes=false``
(before) and with the defaults (after). Scores: JI@100, localizations per true emitter, the
median of reported / true photons of matched pairs, and, for `hot`, localizations within
1 px of a hot pixel per frame. The PSF-shape statistic 2·(NLL_gauss − NLL_spike) of the
refined emitters without neighbours is recorded (before φ): its largest value on the clean
controls and its values at the hot pixels bracket the threshold SPIKE_LLR.

Usage: python experiments/gridnet_merge.py [--model builtin:gridnet-generalist] [--threads 1]
Writes experiments/results/gridnet_merge.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from binning import _photon_ratio  # noqa: E402
from gridnet_accuracy import run_header, scores, simulate, write_record  # noqa: E402

_BASE = ["n_frames=20"]
#: (case, simulation overrides).
CASES = [(f"{d}/µm²", [f"activation.density_per_um2={d}"]) for d in (0.5, 2, 6, 10)]
CASES += [(f"σ {s} px (pixel {p} nm), 2/µm²",
           ["activation.density_per_um2=2", f"pixel_size_nm={p}", "emitters.sigma_nm=110",
            "emitters.sigma_std_nm=0"]) for s, p in (("0.7", 157), ("0.5", 220))]
CASES += [("bright 25–35k photons, 0.3/µm²",
           ["activation.density_per_um2=0.3", "emitters.photons_distribution=uniform",
            "emitters.photons_min=25000", "emitters.photons_max=35000", "background.photons=50"]),
          ("hot pixels ×3, 0.5/µm²",
           ["activation.density_per_um2=0.5", "background.photons=30"])]
#: Hot pixels (row, column, ADU added) of the `hot` case.
HOT = [(10, 10, 1800), (40, 20, 1150), (50, 50, 700)]


def _add_hot_pixels(movie: Path) -> None:
    import tifffile

    data = tifffile.imread(movie).astype(np.int64)
    for r, c, v in HOT:
        data[:, r, c] += v
    tifffile.imwrite(movie, np.clip(data, 0, 65535).astype(np.uint16))


def _near_hot(locs, pixel_nm: float, n_frames: int) -> float:
    """Localizations within 1 px of a hot pixel's centre, per frame."""
    x, y = locs["x_nm"].to_numpy() / pixel_nm, locs["y_nm"].to_numpy() / pixel_nm
    near = np.zeros(len(locs), bool)
    for r, c, _ in HOT:
        near |= np.hypot(x - (c + 0.5), y - (r + 0.5)) <= 1.0
    return round(float(near.sum()) / n_frames, 2)


def rows_for(model: str, work: Path) -> tuple[list[dict], dict]:
    import torch

    from stormfold.io.tables import read_table
    from stormfold.localize import localize_movie
    from stormfold.localize import refine as refine_mod
    from stormfold.localize.registry import load_engine

    recorded: list[np.ndarray] = []
    statistic = refine_mod.spike_statistic

    def recording(mu, others, bg, *args):
        stat, nll, amplitude = statistic(mu, others, bg, *args)
        # The others' share of the light in the region: the test takes lone emitters only.
        own = (mu - bg[:, None, None]).flatten(1).sum(1)
        share = others.flatten(1).sum(1) / own.clamp_min(1.0)
        recorded.append(torch.stack([stat, share], 1).numpy().copy())
        return stat, nll, amplitude

    refine_mod.spike_statistic = recording
    rows, spike = [], {}
    try:
        for i, (name, over) in enumerate(CASES):
            cfg = simulate(work / f"m{i}", "zerocost", 20, 8800 + i, [*_BASE, *over])
            movie = work / f"m{i}" / "movie.tif"
            if name.startswith("hot"):
                _add_hot_pixels(movie)
            truth = read_table(work / f"m{i}" / "truth.csv")
            for label, opts in (("before", {"merge": False, "drop_spikes": False}),
                                ("after", {})):
                recorded.clear()
                engine = load_engine(model=model, options=opts)
                locs = localize_movie(movie, engine, camera=cfg.camera, batch_frames=16,
                                      progress=False, pixel_size_nm=cfg.pixel_size_nm).locs
                sc = scores(truth, locs)
                row = {"case": name, "run": label, "ji_100": sc["ji_100"],
                       "locs_per_true": round(sc["n_locs"] / max(sc["n_truth"], 1), 3),
                       "photon_ratio": _photon_ratio(truth, locs), "n_locs": sc["n_locs"],
                       "n_truth": sc["n_truth"]}
                if name.startswith("hot"):
                    row["near_hot_per_frame"] = _near_hot(locs, cfg.pixel_size_nm, 20)
                rows.append(row)
                print(row, flush=True)
                if label == "after" and recorded:
                    a = np.concatenate(recorded)
                    s = a[np.isfinite(a[:, 0]) & (a[:, 1] < 0.05), 0]
                    spike[name] = {"n": int(s.size), "max": round(float(s.max()), 1),
                                   "n_above_10": int((s > 10).sum()),
                                   "lowest_above_0": sorted(round(float(v), 1)
                                                            for v in s[s > 0])[:10]}
    finally:
        refine_mod.spike_statistic = statistic
    return rows, spike


def _markdown(result: dict) -> str:
    keys = ["case", "run", "ji_100", "locs_per_true", "photon_ratio", "n_locs", "n_truth",
            "near_hot_per_frame"]
    lines = [f"Merge test and PSF-shape test ({result['when']}, model {result['model']}, CPU "
             f"{result['cpu']}, {result['threads']} thread(s))", "",
             f"Command: `{result['command']}`", "",
             "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in result["rows"]]
    lines += ["", "PSF-shape statistic 2·(NLL_gauss − NLL_spike) of the refined emitters "
              "whose region holds < 5 % other emitters' light (before φ and the drop; > 0: the "
              "spike explains the region better; counted twice where a merge took place):", ""]
    lines += [f"- {k}: {v['n']} regions, max {v['max']}, {v['n_above_10']} above 10; lowest "
              f"above 0: {v['lowest_above_0']}" for k, v in result["spike_statistic"].items()]
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:gridnet-generalist")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    result = {**run_header("gridnet_merge.py", args.threads), "model": args.model}
    with tempfile.TemporaryDirectory() as tmp:
        result["rows"], result["spike_statistic"] = rows_for(args.model, Path(tmp))
    write_record("gridnet_merge", result, _markdown(result))


if __name__ == "__main__":
    main()
