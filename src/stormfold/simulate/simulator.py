"""The SMLM movie simulator (SPEC §2): ground truth first, then frames in chunks.

The ground truth (one row per emitter and frame in which it is ON) is drawn for the whole
movie; frames are then rendered and passed through the camera chunk by chunk, so memory
does not grow with the movie length. Each chunk's noise comes from its own random stream
(derived from the seed and the chunk index), so the movie does not depend on how it is
written.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from stormfold import __version__
from stormfold.config import dump_yaml, to_dict
from stormfold.physics.psf import render_emitters
from stormfold.simulate.activation import independent_counts, telegraph_on_fractions
from stormfold.simulate.config import SimulationConfig
from stormfold.simulate.structures import load_mask, make_structure
from stormfold.table import make_table

CHUNK_FRAMES = 64  # frames per noise stream and per rendering chunk
# Peak float64 arrays per pixel of a chunk (photons, photons + background, electrons, noise)
# and bytes per truth row (the table's float64/int64 columns and pandas' copies while built).
_CHUNK_ARRAYS = 4
_TRUTH_ROW_BYTES = 160


@dataclass
class Simulation:
    """An in-memory simulation: the movie (uint16 ADU), its ground truth and the drift."""

    movie: np.ndarray
    truth: pd.DataFrame
    drift: pd.DataFrame
    config: SimulationConfig


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def drift_trajectory(config: SimulationConfig, rng: np.random.Generator) -> pd.DataFrame:
    """Per-frame drift (frame, dx_nm, dy_nm): constant velocity plus a Gaussian random walk.

    Frame 0 has zero drift; positions in frame t are the drift-free positions plus d(t).
    """
    t = np.arange(config.n_frames, dtype=np.float64)
    vx, vy = config.drift.velocity_nm_per_frame
    dx, dy = vx * t, vy * t
    if config.drift.random_walk_nm > 0:
        steps = rng.normal(0, config.drift.random_walk_nm, (config.n_frames, 2))
        steps[0] = 0.0
        walk = np.cumsum(steps, axis=0)
        dx, dy = dx + walk[:, 0], dy + walk[:, 1]
    return pd.DataFrame({"frame": t.astype(np.int64), "dx_nm": dx, "dy_nm": dy})


def _draw_photons(config: SimulationConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    e = config.emitters
    if e.photons_distribution == "uniform":
        return rng.uniform(e.photons_min, e.photons_max, n)
    return np.maximum(rng.normal(e.photons_mean, e.photons_spread, n), 0.0)


def _draw_sigma(config: SimulationConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    e = config.emitters
    # A PSF narrower than a tenth of a pixel is unphysical for a camera-sampled microscope.
    floor = 0.1 * config.pixel_size_nm
    return np.maximum(rng.normal(e.sigma_nm, e.sigma_spread_nm, n), floor)


def simulate_truth(config: SimulationConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the ground truth of a whole movie.

    Returns
    -------
    truth : DataFrame
        Localization table (SPEC §1) sorted by frame, with ``photons`` (before QE),
        ``sigma_nm``, ``bg`` (background photons per pixel) and ``emitter_id`` (the
        fluorophore; constant across frames under blinking kinetics).
    drift : DataFrame
        (frame, dx_nm, dy_nm), already included in the truth positions.
    """
    rng = _rng(config.seed, 0)
    structure = make_structure(config, rng)
    act = config.activation
    area = config.area_um2
    if act.model == "independent":
        counts = independent_counts(config.n_frames, act.density_per_um2 * area,
                                    act.density_std_per_um2 * area, rng)
        n = int(counts.sum())
        frame = np.repeat(np.arange(config.n_frames), counts)
        x, y = structure.sample(n, rng)
        photons = _draw_photons(config, n, rng)
        sigma = _draw_sigma(config, n, rng)
        emitter = np.arange(n)
    else:
        n_fluo = int(rng.poisson(act.fluorophores_per_um2 * area))
        fx, fy = structure.sample(n_fluo, rng)
        fsigma = _draw_sigma(config, n_fluo, rng)
        emitter, frame, fraction = telegraph_on_fractions(n_fluo, config.n_frames, act, rng)
        order = np.lexsort((emitter, frame))
        emitter, frame, fraction = emitter[order], frame[order], fraction[order]
        x, y, sigma = fx[emitter], fy[emitter], fsigma[emitter]
        photons = _draw_photons(config, frame.size, rng) * fraction
    drift = drift_trajectory(config, rng)
    x = x + drift["dx_nm"].to_numpy()[frame]
    y = y + drift["dy_nm"].to_numpy()[frame]
    width = config.n_cols * config.pixel_size_nm
    height = config.n_rows * config.pixel_size_nm
    # Emitters drifted out of the field of view are neither imaged nor in the truth.
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    truth = make_table(frame[inside], x[inside], y[inside], photons=photons[inside],
                       sigma_nm=sigma[inside], bg=np.full(int(inside.sum()), config.background.photons),
                       emitter_id=emitter[inside])
    return truth, drift


def background_image(config: SimulationConfig) -> np.ndarray:
    """Background photons per pixel and frame, (n_rows, n_cols) float64."""
    bg = config.background
    if bg.map is None:
        return np.full((config.n_rows, config.n_cols), bg.photons, dtype=np.float64)
    # The same reader: a non-negative image; rescaled to mean 1 below.
    prob = load_mask(bg.map, "background.map")
    from scipy.ndimage import zoom

    image = zoom(prob, (config.n_rows / prob.shape[0], config.n_cols / prob.shape[1]), order=1)
    image = np.maximum(image, 0)
    return bg.photons * image / image.mean()


def expected_photons(config: SimulationConfig, truth: pd.DataFrame, start: int, stop: int,
                     background: np.ndarray | None = None) -> np.ndarray:
    """Noise-free photons per pixel (signal + background) of frames [start, stop).

    Returns (stop − start, n_rows, n_cols) float64.
    """
    frames = truth["frame"].to_numpy()
    lo, hi = np.searchsorted(frames, [start, stop])
    rows = truth.iloc[lo:hi]
    px = config.pixel_size_nm
    image = render_emitters((stop - start, config.n_rows, config.n_cols),
                            rows["frame"].to_numpy() - start, rows["x_nm"].to_numpy() / px,
                            rows["y_nm"].to_numpy() / px, rows["photons"].to_numpy(),
                            rows["sigma_nm"].to_numpy() / px)
    if background is None:
        background = background_image(config)
    return image + background[None]


def iter_movie(config: SimulationConfig, truth: pd.DataFrame) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (first_frame, uint16 ADU frames) in chunks of :data:`CHUNK_FRAMES`."""
    background = background_image(config)
    for start in range(0, config.n_frames, CHUNK_FRAMES):
        stop = min(start + CHUNK_FRAMES, config.n_frames)
        photons = expected_photons(config, truth, start, stop, background)
        yield start, config.camera.forward(photons, _rng(config.seed, 1, start))


def expected_rows(config: SimulationConfig) -> float:
    """Expected number of rows of the ground truth (emitter-frames)."""
    act = config.activation
    if act.model == "independent":
        return act.density_per_um2 * config.area_um2 * config.n_frames
    on_fraction = act.t_on_frames / (act.t_on_frames + act.t_off_frames)
    # Each ON period may straddle a frame boundary: one more row per switch.
    switches = config.n_frames / (act.t_on_frames + act.t_off_frames)
    return act.fluorophores_per_um2 * config.area_um2 * (on_fraction * config.n_frames + switches)


def check_simulation_memory(config: SimulationConfig, in_memory: bool = False) -> None:
    """Refuse, before any work, a simulation whose rendering chunk, ground truth or (for
    :func:`simulate`) whole movie would not fit in memory (a one-line UserError)."""
    from stormfold.io.readers import check_memory

    pixels = float(config.n_rows) * float(config.n_cols)
    rows = expected_rows(config)
    chunk = min(CHUNK_FRAMES, config.n_frames) * pixels * 8.0 * _CHUNK_ARRAYS
    truth = rows * _TRUTH_ROW_BYTES + config.n_frames * 64.0
    movie = 2.0 * config.n_frames * pixels if in_memory else 0.0
    check_memory(chunk + truth + movie,
                 f"simulation: {config.n_frames} frames of {config.n_cols} x {config.n_rows} "
                 f"pixels ({rows:.3g} emitter-frames) need")


def simulate(config: SimulationConfig) -> Simulation:
    """Simulate a movie in memory (for movies that fit; see :func:`simulate_to_folder`)."""
    check_simulation_memory(config, in_memory=True)
    truth, drift = simulate_truth(config)
    movie = np.empty((config.n_frames, config.n_rows, config.n_cols), dtype=np.uint16)
    for start, frames in iter_movie(config, truth):
        movie[start:start + len(frames)] = frames
    return Simulation(movie, truth, drift, config)


def simulation_metadata(config: SimulationConfig, **provenance) -> dict:
    """The content of ``simulation.yaml``: every parameter, the seed and the version.

    ``provenance`` (outputs, counts, timings) goes under one key that
    :func:`~stormfold.simulate.build_config` ignores, so the file is a valid ``--config``.
    """
    meta = to_dict(config)
    meta["stormfold_version"] = __version__
    if provenance:
        meta["provenance"] = provenance
    return meta


def simulate_to_folder(config: SimulationConfig, out_dir: str | Path,
                       progress: bool = True, protect: tuple = (),
                       command: list[str] | None = None) -> Path:
    """Simulate and write ``movie.tif``, ``truth.csv``, ``simulation.yaml`` (and ``drift.csv``).

    The movie is streamed to disk chunk by chunk (memory independent of its length). The
    files are one set (:class:`stormfold.io.outputs.OutputFolder`): written into a staging
    folder and moved in with ``manifest.json`` last, nothing left on an error. ``protect``:
    inputs that no output may replace (the ``--config`` file); the mask image is protected
    too, and the free disk space is checked before anything is simulated. ``command``: the
    command line, recorded in ``manifest.json``.
    """
    from tqdm import tqdm

    from stormfold.io.atomic import write_text
    from stormfold.io.outputs import OutputFolder
    from stormfold.io.thunderstorm import write_thunderstorm_csv
    from stormfold.io.tiff import TiffStackWriter

    out_dir = Path(out_dir)
    mask = config.structure.mask if config.structure.kind == "mask" else None
    if mask is not None:
        load_mask(mask)  # fail before writing anything
    if config.background.map is not None:
        load_mask(config.background.map, "background.map")
    check_simulation_memory(config)
    movie_bytes = 2.0 * config.n_frames * config.n_rows * config.n_cols
    out = OutputFolder(out_dir, "simulate", ["movie.tif", "truth.csv", "simulation.yaml",
                                             "drift.csv"], [mask, *protect],
                       expected_bytes=movie_bytes * 1.01).check()
    t0 = time.perf_counter()
    truth, drift = simulate_truth(config)
    with out:
        shape = (config.n_rows, config.n_cols)
        with tqdm(total=config.n_frames, unit="frame", desc="simulate", disable=not progress,
                  leave=False) as bar, \
                TiffStackWriter(out.path("movie.tif"), config.n_frames, shape, np.uint16,
                                pixel_size_nm=config.pixel_size_nm,
                                metadata={"source": f"stormfold {__version__} simulate",
                                          "camera": to_dict(config.camera)}) as writer:
            for start, frames in iter_movie(config, truth):
                writer.write(start, frames)
                bar.update(len(frames))
        write_thunderstorm_csv(out.path("truth.csv"), truth)
        outputs = {"movie": "movie.tif", "truth": "truth.csv"}
        if config.drift.active:
            from stormfold.postprocess.drift import write_drift_csv

            write_drift_csv(out.path("drift.csv"), drift)  # 1-based frames, like truth.csv
            outputs["drift"] = "drift.csv"
        meta = simulation_metadata(config, outputs=outputs, n_emitters=int(len(truth)),
                                   seconds=round(time.perf_counter() - t0, 3))
        write_text(out.path("simulation.yaml"), dump_yaml(meta))
        out.commit(to_dict(config), command)
    return out_dir
