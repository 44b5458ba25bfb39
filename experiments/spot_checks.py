"""Thresholds of the spot checks (reviews 14 D4 and 17 D1–D3).

:class:`stormfold.localize.spots.SpotCheck` measures the bright isolated spots of the first
batches: their axis ratio (warning above :data:`~stormfold.localize.spots.AXIS_RATIO_ABOVE`,
every learned engine), and for Deep-STORM and the unrolled solver their width and photons
against the model's training simulation. This script feeds it batches of 16 frames of
64 × 64 px, as an engine does (it measures the first 4 frames of each), until it has 30
isolated spots (or 256 frames, 64 of them measured: ``decided`` is then false and nothing
is said), and gives the lower quartile of the axis ratios
(``ratio_q25``, what the check compares) and the verdict:

* round PSFs from stormfold's simulator: `zerocost` (σ 110 nm on 100 nm pixels, 2,250
  photons) at 0.5–10 emitters/µm² and background 0/50/200 photons/px; σ 70 and 200 nm;
  500 and 10,000 photons; the `thunderstorm` and `challenge2016` (EMCCD) presets;
* elongated PSFs from an independent numpy generator (pixel-integrated elliptical
  Gaussian, σx = σ·√q, σy = σ/√q, σ 1.1 px, 2,000 ± 300 photons, background 20 photons/px,
  Poisson noise, 2 e⁻ read noise) with q = 1.0–1.5, elongated along x only or half along
  x and half along y (astigmatic data above and below focus), at 0.5 and 2/µm²;
* the real movies of ../shared/data (first 256 frames).

Then each shipped engine's JI@100 and RMSE on elongated spots (half along x, half along y)
at 0.5/µm², and whether it warned; and Deep-STORM's and the unrolled model's JI@100 on round
spots of other widths and brightness (the same generator, 1/µm², background 10), with the
width and photons the check measured and what it said.

Seeds 9400 + i, 9500 + i, 9600 + i. Usage: python experiments/spot_checks.py
Writes experiments/results/spot_checks.{json,md}.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.special import erf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gridnet_accuracy import markdown_table, run_header, write_record  # noqa: E402

FRAMES, SIZE = 256, 64
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def measure(photons: np.ndarray) -> dict:
    """Feed the check batches of 16 frames, as an engine does, until it decides."""
    from stormfold.localize.spots import MAX_FRAMES, MIN_SPOTS, SpotCheck

    check = SpotCheck("gridnet")
    said: list[str] = []
    check.reset(warn=said.append)
    for start in range(0, photons.shape[0], 16):
        check(photons[start:start + 16], 100.0)
        if check.done:
            break
    quartile, spots = check.axis_ratio, check.spots
    return {"frames_seen": check.frames, "spots": int(spots.measured.sum()),
            "ratio_q25": None if quartile is None else round(quartile, 3),
            "candidates": int(spots.snr.size), "decided": check.shape_done,
            "warns": bool(said)}


def round_case(label: str, preset: str, seed: int, overrides: list[str]) -> dict:
    from stormfold.simulate import build_config, simulate

    cfg = build_config(preset, n_frames=FRAMES, seed=seed,
                       overrides=[f"n_rows={SIZE}", f"n_cols={SIZE}", *overrides])
    return {"kind": "round (stormfold)", "case": label,
            **measure(cfg.camera.backward(simulate(cfg).movie))}


def elongated_movie(q: float, density: float, astigmatic: bool, seed: int,
                    frames_n: int = FRAMES, sigma: float = 1.1, photons: float = 2000.0,
                    bg: float = 20.0):
    """Photons per pixel of ``frames_n`` frames of an independent elliptical-Gaussian movie
    (100 nm pixels; σ in px, photons ± 15 %, background in photons/px), and its truth."""
    from stormfold.table import make_table

    rng = np.random.default_rng(seed)
    px_um = 0.1
    frames = np.empty((frames_n, SIZE, SIZE))
    edges = np.arange(SIZE + 1, dtype=np.float64)
    truth = []
    for t in range(frames_n):
        n = rng.poisson(density * (SIZE * px_um) ** 2)
        x, y = rng.uniform(0, SIZE, n), rng.uniform(0, SIZE, n)
        flip = rng.random(n) < 0.5 if astigmatic else np.zeros(n, bool)
        sx = np.where(flip, sigma / np.sqrt(q), sigma * np.sqrt(q))
        sy = np.where(flip, sigma * np.sqrt(q), sigma / np.sqrt(q))
        counts = rng.normal(photons, 0.15 * photons, n).clip(0.1 * photons)
        ex = np.diff(0.5 * (1 + erf((edges[None] - x[:, None]) / (np.sqrt(2) * sx[:, None]))))
        ey = np.diff(0.5 * (1 + erf((edges[None] - y[:, None]) / (np.sqrt(2) * sy[:, None]))))
        mean = bg + np.einsum("n,nr,nc->rc", counts, ey, ex)
        frames[t] = rng.poisson(mean) + rng.normal(0, 2.0, mean.shape)
        truth.append((np.full(n, t), x * 100.0, y * 100.0, counts))
    f, x, y, c = (np.concatenate(a) for a in zip(*truth))
    return frames, make_table(f.astype(np.int64), x, y, photons=c)


def engine_run(engine, frames: np.ndarray, scored: int):
    """The engine's localizations on the first ``scored`` frames (one batch: Deep-STORM is
    slow), then its spot check fed every frame in batches of 16, as the runner does."""
    said: list[str] = []
    engine.start_movie(warn=said.append)
    locs = engine.process_with_context(frames[:scored].astype(np.float32), None, None, 0,
                                       100.0).locs
    engine.spot_check.reset(warn=said.append)
    for start in range(0, len(frames), 16):
        engine.spot_check(frames[start:start + 16], 100.0)
    return locs, said


def engine_rows(engines: tuple[str, ...]) -> list[dict]:
    """JI@100 and RMSE of each engine on astigmatic-like movies (0.5/µm², 32 frames;
    Deep-STORM 16) and whether it warned (its spot check seeing 128 frames)."""
    from gridnet_accuracy import scores

    from stormfold.localize.camera import Camera
    from stormfold.localize.registry import load_engine

    models = {"gridnet": {"model": "builtin:gridnet-generalist"},
              "deepstorm": {"model": "builtin:deepstorm-zerocost"},
              "unrolled": {"model": "builtin:unrolled-isbi2013"},
              "classic": {"engine": "classic"}}
    rows = []
    for name in engines:
        for i, q in enumerate((1.0, 1.2, 1.3, 1.5)):
            frames, truth = elongated_movie(q, 0.5, True, 9500 + i, 128)
            scored = 16 if name == "deepstorm" else 32
            engine = load_engine(**models[name])
            engine.set_camera(Camera())
            if hasattr(engine, "spot_check"):
                locs, said = engine_run(engine, frames, scored)
            else:
                said = []
                locs = engine.process_with_context(frames[:scored].astype(np.float32), None,
                                                   None, 0, 100.0).locs
            truth = truth[truth["frame"] < scored]
            sc = scores(truth, locs)
            rows.append({"engine": name, "σx/σy": q, "ji_100": sc["ji_100"],
                         "rmse_nm": sc["rmse_nm"], "localizations_per_emitter":
                         round(len(locs) / max(len(truth), 1), 3),
                         "warned": any("elongated" in m for m in said)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def domain_rows() -> list[dict]:
    """Deep-STORM and the unrolled model on round spots of other widths and brightness."""
    from gridnet_accuracy import scores

    from stormfold.localize.camera import Camera
    from stormfold.localize.registry import load_engine

    cases = [("deepstorm-zerocost", 110.0, p) for p in
             (500, 700, 1000, 1500, 2250, 3000, 3600, 4000, 5000, 8000)]
    cases += [("deepstorm-zerocost", s, 2250.0) for s in (70, 80, 90, 130, 140, 150, 180)]
    cases += [("unrolled-isbi2013", s, 2000.0) for s in
              (70, 80, 90, 100, 110, 120, 125, 130, 135, 150, 180)]
    cases += [("unrolled-isbi2013", 110.0, p) for p in (300, 350, 400, 500, 700, 8000)]
    rows = []
    for i, (model, sigma_nm, photons) in enumerate(cases):
        deepstorm = model.startswith("deepstorm")
        frames, truth = elongated_movie(1.0, 1.0, False, 9600 + i, 256,
                                        sigma=sigma_nm / 100.0, photons=photons, bg=10.0)
        scored = 16 if deepstorm else 24
        engine = load_engine(model=f"builtin:{model}")
        engine.set_camera(Camera())
        locs, _ = engine_run(engine, frames, scored)
        truth = truth[truth["frame"] < scored]
        spots = engine.spot_check.spots
        width = np.median(spots.sigma_px[spots.measured]) * 100 if spots.measured.any() \
            else float("nan")
        sc = scores(truth, locs)
        rows.append({"model": model, "sigma_nm": sigma_nm, "photons": photons,
                     "ji_100": sc["ji_100"], "localizations_per_emitter":
                     round(len(locs) / max(len(truth), 1), 3),
                     "measured_sigma_nm": round(float(width), 1),
                     "measured_photons": round(float(np.median(spots.photons)), 0)
                     if spots.photons.size else None,
                     "spot_warning": "; ".join(m.split(":")[0] for m in engine.spot_check.messages)
                     or "-",
                     "domain_warning": bool(engine.domain_check.message)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def real_cases() -> list[dict]:
    from stormfold.io.movie import open_movie

    rows = []
    for label, path, baseline, px in (
            ("deepstorm-demo1", DATA / "deepstorm-demo1-train" / "ArtificialDataset_demo1.tif",
             100.0, 100.0),
            ("isbi2013-hd", DATA / "isbi2013-bundled-tubes-hd" / "sequence_stack.tif", 100.0,
             100.0),
            ("picasso-testdata", DATA / "picasso-testdata" / "testdata.raw", 0.0, 160.0)):
        if not path.exists():
            continue
        movie = open_movie(path, pixel_size_nm=px)
        frames = movie.read(0, min(FRAMES, movie.n_frames)).astype(np.float64) - baseline
        rows.append({"kind": "real", "case": label, **measure(frames)})
    return rows


def main() -> None:
    rows = []
    seed = 9400
    cases = [(f"zerocost {d:g}/µm², bg {b:g}", "zerocost",
              [f"activation.density_per_um2={d}", f"background.photons={b}"])
             for b in (0.0, 50.0, 200.0) for d in (0.5, 2.0, 6.0, 10.0)]
    cases += [(f"zerocost {d:g}/µm², σ {s:g} nm, bg {b:g}", "zerocost",
               [f"activation.density_per_um2={d}", f"emitters.sigma_nm={s}",
                f"background.photons={b}"])
              for s in (70, 200) for d in (0.5, 2.0) for b in (0.0, 100.0)]
    cases += [(f"zerocost {d:g}/µm², {p:g} photons, bg 20", "zerocost",
               [f"activation.density_per_um2={d}", f"emitters.photons_mean={p}",
                f"emitters.photons_std={p / 10}", "background.photons=20"])
              for p in (500, 10000) for d in (0.5, 2.0)]
    cases += [(f"{p} {d:g}/µm²", p, [f"activation.density_per_um2={d}"])
              for p in ("thunderstorm", "challenge2016") for d in (0.5, 2.0, 6.0)]
    for label, preset, over in cases:
        seed += 1
        rows.append(round_case(label, preset, seed, over))
        print(json.dumps(rows[-1]), flush=True)
    for astigmatic in (False, True):
        for q in (1.0, 1.1, 1.15, 1.2, 1.3, 1.5):
            for d in (0.5, 2.0):
                seed += 1
                kind = "elongated ±x/y" if astigmatic else "elongated x"
                rows.append({"kind": kind, "case": f"σx/σy {q:g}, {d:g}/µm²",
                             **measure(elongated_movie(q, d, astigmatic, seed)[0])})
                print(json.dumps(rows[-1]), flush=True)
    rows += real_cases()
    engines = engine_rows(("gridnet", "deepstorm", "unrolled", "classic"))
    domain = domain_rows()
    text = ["# Spot checks: elongation, width, brightness", "",
            "`python experiments/spot_checks.py` (see its docstring). `spots`: bright isolated",
            "spots measured before the check decided (30 needed) or gave up (256 frames here);",
            "`candidates`: isolated spots with SNR ≥ 10 (half must be measurable).", "",
            *markdown_table(rows), "",
            "## What an elongated PSF costs each engine", "",
            "Half the spots elongated along x, half along y (σ 1.1 px, 2,000 photons, 0.5/µm²,",
            "background 20), 32 frames of 64 × 64 px (Deep-STORM 16); shipped models; JI@100;",
            "`warned`: the engine's spot check, fed 128 frames in batches of 16.",
            "", *markdown_table(engines), "",
            "## Width and brightness: Deep-STORM and the unrolled model", "",
            "Round spots, 1/µm², background 10, ±15 % photons, 64 × 64 px of 100 nm; JI on 16",
            "frames (Deep-STORM) or 24; the spot check fed 256 frames in batches of 16.",
            "`spot_warning`: the start of each spot-check line;",
            "`domain_warning`: the engine's training-domain check.", "",
            *markdown_table(domain)]
    write_record("spot_checks", {**run_header("spot_checks.py", 1), "check": rows,
                                 "engines": engines, "domain": domain}, "\n".join(text) + "\n")


if __name__ == "__main__":
    main()
