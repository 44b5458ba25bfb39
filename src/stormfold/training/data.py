"""Where training frames come from: a simulation, or a given movie with its ground truth.

Every trainer reads its ``--config`` file, simulates (or reads) frames and converts them to
photons with the same camera model as inference. The result is a :class:`TrainingData`:
frames in photons, their truth, their :class:`~stormfold.physics.FrameGeometry`, the camera
and a description recorded in ``model.yaml``.

Trainers whose data are a fixed set (Deep-STORM's patches, the unrolled solver's full batch)
build one :class:`TrainingData` once. Trainers that draw fresh data at every step implement
a :class:`Sampler`: ``sampler.sample(step)`` must depend only on (seed, step), so a resumed
run sees exactly the batches an uninterrupted run would have seen.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from stormfold.config import load_yaml, to_dict
from stormfold.errors import UserError
from stormfold.physics.camera import Camera
from stormfold.physics.geometry import FrameGeometry
from stormfold.simulate.config import SimulationConfig, read_training_yaml


@dataclass
class TrainingData:
    """Frames in photons with their ground truth.

    Attributes
    ----------
    photons : (n_frames, rows, cols) float32
        Frames after :meth:`Camera.backward`.
    truth : DataFrame
        Ground truth (0-based ``frame``, ``x_nm``, ``y_nm``, ...), frames within ``photons``.
    geometry : FrameGeometry
        Frame size and camera pixel size (upsampling 1; trainers set their own L).
    camera : Camera
        The camera that converted the frames.
    description : dict
        Where the data came from (recorded in ``model.yaml``).
    sigma_nm, background_photons : float, optional
        The PSF width and uniform background of the simulation, when known.
    """

    photons: np.ndarray
    truth: pd.DataFrame
    geometry: FrameGeometry
    camera: Camera
    description: dict[str, Any] = field(default_factory=dict)
    sigma_nm: float | None = None
    background_photons: float | None = None

    @property
    def pixel_size_nm(self) -> float:
        return self.geometry.pixel_size_nm

    @property
    def n_frames(self) -> int:
        return int(len(self.photons))


class Sampler(Protocol):
    """An endless source of training batches (e.g. a simulator drawing fresh frames).

    ``sample(step)`` returns the batch of optimisation step ``step``; it must be a pure
    function of the sampler's seed and ``step`` (seed it with ``[seed, step]``), which makes
    the training resumable exactly without storing any data.
    """

    def sample(self, step: int) -> Any: ...


def simulated_data(config: SimulationConfig) -> TrainingData:
    """Simulate frames and convert them to photons with the same camera model as inference."""
    from stormfold.simulate import simulate

    sim = simulate(config)
    photons = config.camera.backward(sim.movie)
    background = config.background.photons if config.background.map is None else None
    return TrainingData(photons, sim.truth, FrameGeometry.of_frames(photons, config.pixel_size_nm),
                        config.camera, {"source": "simulation", "simulation": to_dict(config)},
                        sigma_nm=config.emitters.sigma_nm, background_photons=background)


def movie_data(movie: str | Path, truth: str | Path, n_frames: int | None = None,
               pixel_size_nm: float | None = None, camera: Camera | None = None,
               fallback_pixel_size_nm: float | None = None,
               fallback_camera: tuple[Camera, str] | None = None,
               movie_options: dict | None = None) -> TrainingData:
    """A given movie (ADU) and its ground truth (e.g. a ThunderSTORM simulation).

    Parameters
    ----------
    movie, truth : path
        The movie and its ground-truth table (ThunderSTORM CSV or Picasso HDF5).
    n_frames : int, optional
        Use the first ``n_frames`` frames (default all).
    pixel_size_nm : float, optional
        Pixel size overriding the movie's metadata.
    camera : Camera, optional
        Camera overriding the movie's metadata.
    fallback_pixel_size_nm, fallback_camera : optional
        Used when the movie's metadata have none (the camera as (camera, source)).
    movie_options : dict, optional
        How the movie is read (``nan_policy``, ``axes``, ``z``, ``channel`` of
        :func:`stormfold.io.movie.open_movie`). The camera's baseline is checked against the
        movie before the frames are read (:func:`stormfold.localize.camera.check_camera_on_movie`).

    Notes
    -----
    The PSF σ and the uniform background come from a ``simulation.yaml`` next to the truth
    when there is one (a movie simulated by stormfold).
    """
    from stormfold.io.movie import open_movie
    from stormfold.io.tables import read_table
    from stormfold.localize.camera import check_camera_on_movie, resolve_camera

    movie, truth = Path(movie), Path(truth)
    for label, path in (("movie", movie), ("truth", truth)):
        if not path.exists():
            raise UserError(f"{label} file not found: {path}")
    table = read_table(truth)
    with open_movie(movie, pixel_size_nm=pixel_size_nm, **(movie_options or {})) as mv:
        if mv.pixel_size_nm is None and fallback_pixel_size_nm is not None:
            px = float(fallback_pixel_size_nm)
        else:
            px = mv.require_pixel_size()
        if camera is not None:
            cam, cam_source = camera, "configuration"
        else:
            cam, cam_source = resolve_camera(None, mv, None, fallback=fallback_camera)
        check_camera_on_movie(cam, cam_source, mv)
        if len(table) and int(table["frame"].max()) >= mv.n_frames:
            raise UserError(f"{truth}: ground truth has frames up to {int(table['frame'].max()) + 1} "
                            f"but {movie} has {mv.n_frames} frames")
        n = mv.n_frames if n_frames is None else min(int(n_frames), mv.n_frames)
        frames = mv.read(0, n)
        repairs = mv.repairs()
    table = table[table["frame"] < n].reset_index(drop=True)
    sigma = background = None
    sim_yaml = truth.parent / "simulation.yaml"
    if sim_yaml.is_file():
        meta = load_yaml(sim_yaml) or {}
        sigma = (meta.get("emitters") or {}).get("sigma_nm")
        background = (meta.get("background") or {}).get("photons")
    photons = cam.backward(frames)
    return TrainingData(photons, table, FrameGeometry.of_frames(photons, px), cam,
                        {"source": "movie", "movie": str(movie), "truth": str(truth),
                         "frames": int(n), "frame_shape": list(frames.shape[1:]),
                         "camera_source": cam_source, "nan_repairs": repairs},
                        sigma_nm=sigma, background_photons=background)


def read_config_file(config_file: str | Path | None, config_cls: type,
                     data_section: str = "data", default_preset: str | None = None
                     ) -> dict[str, Any]:
    """A trainer's ``--config`` file as a nested mapping for ``config_cls``.

    The file is either a training configuration (sections named like ``config_cls``'s
    fields) or a ``simulation.yaml`` of ``stormfold simulate``/``calibrate``, which then
    describes the training data: it becomes ``{data_section: {"preset": ..., "simulation":
    ...}}`` (the unrolled and SOFI trainers) or, with ``default_preset`` None,
    ``{data_section: ...}`` itself (Deep-STORM's ``simulation`` section).
    """
    sections = tuple(f.name for f in dataclasses.fields(config_cls) if f.name != "seed")
    loaded, is_simulation = read_training_yaml(config_file, sections)
    if not is_simulation:
        return loaded
    if default_preset is None:
        return {data_section: loaded}
    return {data_section: {"preset": loaded.pop("preset", default_preset), "simulation": loaded}}
