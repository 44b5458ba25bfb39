"""gridnet on the real third-party movies of ../shared/data (none was used for training).

- ISBI 2013 "bundled tubes, high density" (no truth; camera: the one stored with
  ``builtin:unrolled-isbi2013``, calibrated on this movie): localizations per frame, time,
  and a figure (widefield | Deep-STORM | gridnet) in docs/gridnet_isbi2013.png;
- Picasso's DNA-PAINT test movie (160 nm pixels, σ 0.82 px, photons = ADU): the binding
  sites of its origami grids are known from its metadata (``Structure.HandleX/Y``, px);
  distances of gridnet's, the classic engine's and Picasso's own localizations (of a
  1,000-frame version of the simulation) to the nearest site.

Usage: python experiments/gridnet_real.py [--model builtin:gridnet-generalist] [--skip-deepstorm]
Writes experiments/results/gridnet_real.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "experiments" / "results"


def localize(spec: str, movie: Path, camera, **kw):
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    engine = load_engine(engine="classic") if spec == "classic" else load_engine(model=spec)
    t0 = time.perf_counter()
    res = localize_movie(movie, engine, camera=camera, progress=False, **kw)
    return res, time.perf_counter() - t0


def isbi(model: str, skip_deepstorm: bool) -> dict:
    from stormfold.localize.runner import CameraOverrides

    movie = DATA / "isbi2013-bundled-tubes-hd" / "sequence_stack.tif"
    cam = CameraOverrides(camera_file=ROOT / "src" / "stormfold" / "models" / "unrolled-isbi2013"
                          / "model.yaml")
    out, images = {}, {}
    specs = [("gridnet", model), ("classic", "classic")]
    if not skip_deepstorm:
        specs.append(("deepstorm", "builtin:deepstorm-zerocost"))
    for name, spec in specs:
        res, secs = localize(spec, movie, cam, pixel_size_nm=100.0)
        out[name] = {"localizations": int(len(res.locs)),
                     "per_frame": round(len(res.locs) / res.run["n_frames"], 1),
                     "seconds": round(secs, 1), "frames_per_s": round(res.run["n_frames"] / secs, 2)}
        images[name] = (res.locs, res.superres, res.widefield)
        print(name, out[name], flush=True)
    figure(images)
    return out


def figure(images: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.ndimage import gaussian_filter

    from stormfold.postprocess.render import histogram_2d

    panels = [("widefield (sum)", images["gridnet"][2])]
    if "deepstorm" in images:
        panels.append(("Deep-STORM (shipped)", images["deepstorm"][1]))
    for name in ("classic", "gridnet"):
        locs = images[name][0]
        hist = histogram_2d(locs["x_nm"].to_numpy(), locs["y_nm"].to_numpy(), 10.0, (640, 640))
        panels.append((f"{name} ({len(images[name][0])} locs)", gaussian_filter(hist, 1.0)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), dpi=110)
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(img, cmap="magma", vmax=np.percentile(img, 99.7))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle("ISBI 2013 bundled tubes, high density (361 frames, real, no training on it)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(ROOT / "docs" / "gridnet_isbi2013.png")


def picasso(model: str) -> dict:
    from scipy.spatial import cKDTree

    from stormfold.io.tables import read_table
    from stormfold.physics.camera import Camera

    folder = DATA / "picasso-testdata"
    meta = yaml.safe_load((folder / "testdata.yaml").read_text())
    sites_px = np.c_[[float(v) for v in str(meta["Structure.HandleX"]).split(",")],
                     [float(v) for v in str(meta["Structure.HandleY"]).split(",")]]
    px = 160.0
    theirs = read_table(folder / "testdata_locs.hdf5")
    # Sites are in Picasso pixels (centre of pixel i at i); find the convention offset from
    # Picasso's own localizations rather than assuming it.
    tree = cKDTree(sites_px)
    their_px = np.c_[theirs["x_nm"] / px, theirs["y_nm"] / px]
    offset = 0.0
    for _ in range(3):
        d, i = tree.query(their_px - offset)
        offset = np.median(their_px - sites_px[i], axis=0)
    sites_nm = (sites_px + offset) * px
    tree = cKDTree(sites_nm)
    out = {"site_offset_px": [round(float(v), 3) for v in offset]}
    cam = Camera(baseline_adu=0.0, e_per_adu=1.0)
    for name, spec in (("gridnet", model), ("classic", "classic")):
        res, secs = localize(spec, folder / "testdata.raw", cam)
        d, _ = tree.query(res.locs[["x_nm", "y_nm"]].to_numpy())
        out[name] = _site_stats(d, len(res.locs), res.run["n_frames"])
        print(name, out[name], flush=True)
    d, _ = tree.query(theirs[["x_nm", "y_nm"]].to_numpy())
    out["picasso (1,000-frame version)"] = _site_stats(d, len(theirs), 1000)
    return out


def _site_stats(d: np.ndarray, n: int, frames: int) -> dict:
    return {"localizations": int(n), "per_frame": round(n / frames, 2),
            "median_distance_to_site_nm": round(float(np.median(d)), 1),
            "within_50nm": round(float(np.mean(d <= 50)), 3),
            "beyond_100nm": round(float(np.mean(d > 100)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:gridnet-generalist")
    parser.add_argument("--skip-deepstorm", action="store_true")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"{DATA} not found")
    result = {"model": args.model, "load_avg": os.getloadavg()[0],
              "isbi2013": isbi(args.model, args.skip_deepstorm), "picasso": picasso(args.model)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "gridnet_real.json").write_text(json.dumps(result, indent=1))
    lines = ["| movie | engine | localizations | per frame | detail |", "|---|---|---|---|---|"]
    for name, r in result["isbi2013"].items():
        lines.append(f"| ISBI 2013 HD | {name} | {r['localizations']} | {r['per_frame']} | "
                     f"{r['frames_per_s']} frames/s |")
    for name, r in result["picasso"].items():
        if isinstance(r, dict):
            lines.append(f"| Picasso test movie | {name} | {r['localizations']} | {r['per_frame']} | "
                         f"median distance to the nearest binding site "
                         f"{r['median_distance_to_site_nm']} nm; ≤ 50 nm: {r['within_50nm']:.0%}; "
                         f"> 100 nm: {r['beyond_100nm']:.0%} |")
    (RESULTS / "gridnet_real.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
