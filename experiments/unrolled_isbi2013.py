"""The shipped model ``builtin:unrolled-isbi2013`` on the real ISBI 2013 "bundled tubes, high
density" movie (361 frames of 64×64, 100 nm pixels; no ground truth).

Runs what a user runs::

    stormfold localize ../shared/data/isbi2013-bundled-tubes-hd/sequence_stack.tif \\
        --model builtin:unrolled-isbi2013 --out OUT

(the camera comes from the model's training simulation: baseline 100 ADU, 0.22 photons per
ADU — see README) and writes ``docs/unrolled_isbi2013.png``: the widefield sum next to the
super-resolved image (sum of x_K) and the rendered localizations.

Run: ``python experiments/unrolled_isbi2013.py [--out DIR]`` (about a minute).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MOVIE = ROOT.parent / "shared" / "data" / "isbi2013-bundled-tubes-hd" / "sequence_stack.tif"
FIGURE = ROOT / "docs" / "unrolled_isbi2013.png"


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile

    from stormfold.cli import main as cli

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--movie", type=Path, default=MOVIE)
    parser.add_argument("--out", type=Path, default=None, help="localize output folder")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="unrolled_isbi_"))
    t0 = time.perf_counter()
    code = cli(["localize", str(args.movie), "--model", "builtin:unrolled-isbi2013",
                "--out", str(out), "--quiet"])
    if code != 0:
        raise SystemExit(code)
    seconds = time.perf_counter() - t0
    wf = tifffile.imread(out / "widefield.tif").astype(np.float64)
    sr = tifffile.imread(out / "superres.tif").astype(np.float64)
    import pandas as pd

    locs = pd.read_csv(out / "localizations.csv")
    n_frames = 361
    fig, ax = plt.subplots(1, 3, figsize=(15, 5.2))
    ax[0].imshow(wf, cmap="gray", extent=(0, 6.4, 6.4, 0))
    ax[0].set_title("widefield (sum of 361 frames, 100 nm pixels)")
    ax[1].imshow(np.sqrt(sr), cmap="magma", extent=(0, 6.4, 6.4, 0),
                 vmax=np.sqrt(np.percentile(sr, 99.9)))
    ax[1].set_title("unrolled APG: sum of x_K (25 nm pixels, √ scale)")
    h, _, _ = np.histogram2d(locs["y [nm]"], locs["x [nm]"], bins=(320, 320),
                             range=((0, 6400), (0, 6400)))
    ax[2].imshow(h, cmap="hot", extent=(0, 6.4, 6.4, 0), vmax=np.percentile(h[h > 0], 99)
                 if (h > 0).any() else 1)
    ax[2].set_title(f"{len(locs)} localizations (20 nm histogram)")
    for a in ax:
        a.set_xlabel("x (µm)")
    ax[0].set_ylabel("y (µm)")
    fig.suptitle("ISBI 2013 bundled tubes, high density — builtin:unrolled-isbi2013")
    fig.tight_layout()
    FIGURE.parent.mkdir(exist_ok=True)
    fig.savefig(FIGURE, dpi=110)
    run = (out / "run.yaml").read_text()
    summary = {"localizations": int(len(locs)), "per_frame": len(locs) / n_frames,
               "seconds": round(seconds, 1), "output": str(out)}
    print(json.dumps(summary, indent=1))
    print(run)
    print(f"wrote {FIGURE}")


if __name__ == "__main__":
    main()
