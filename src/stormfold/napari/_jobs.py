"""What the widgets run in their worker threads: the functions ``stormfold localize``,
``simulate``, ``calibrate``, ``drift`` and ``render`` use, called with the widget's values.

No Qt here: each job is a plain function that takes settings and returns a result object,
so it can be tested (and reused in a notebook) without a viewer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from stormfold.errors import UserError

#: Engine choice that means "a model folder chosen by the user".
MODEL_FOLDER = "model folder…"


class Cancelled(Exception):
    """Raised in a worker thread when the user pressed Cancel."""


def engine_choices() -> list[str]:
    """Engines offered by the Localize widget: every shipped model, every model-free engine,
    and a model folder. Models and engines added to the package later appear by themselves."""
    from stormfold.modelfile import BUILTIN_PREFIX, list_builtin
    from stormfold.pipeline.config import DEFAULT_MODEL

    # The default of stormfold run first: the widget starts with it.
    models = sorted((BUILTIN_PREFIX + name for name in list_builtin()),
                    key=lambda m: m != DEFAULT_MODEL)
    return models + model_free_engines() + [MODEL_FOLDER]


def model_free_engines() -> list[str]:
    """Engines of the registry that are built from options, without a model file."""
    from stormfold.localize.registry import ENGINES

    return sorted(name for name, entry in ENGINES.items() if entry.builder is not None)


# --------------------------------------------------------------------------- movies
@dataclass
class MovieSource:
    """Where the frames of a movie layer come from.

    Attributes
    ----------
    name : str
        Layer name (for messages).
    path : Path or None
        The file the layer was read from; it is opened by :func:`stormfold.io.open_movie`,
        exactly as the command line does.
    frames : array-like or None
        Otherwise the layer's own array (numpy or dask), frames × rows × cols.
    metadata : dict
        For arrays: ``{"info": {"camera": {...}}}`` when the camera is known.
    """

    name: str
    path: Path | None = None
    frames: Any = None
    metadata: dict = field(default_factory=dict)

    def open(self, pixel_size_nm: float | None = None):
        """The :class:`~stormfold.io.movie.Movie` (``pixel_size_nm`` overrides the file's)."""
        from stormfold.io.memory import movie_from_array
        from stormfold.io.movie import open_movie

        if self.path is not None:
            return open_movie(self.path, pixel_size_nm=pixel_size_nm)
        return movie_from_array(self.frames, pixel_size_nm, self.metadata, name=self.name)


def movie_source_of_layer(layer: Any) -> MovieSource:
    """The :class:`MovieSource` of a napari image layer.

    The file behind the layer (``layer.source.path``, or the path a stormfold widget
    recorded) is used when it opens as a movie of the layer's shape; otherwise the layer's
    data.
    """
    from stormfold.io.movie import open_movie
    from stormfold.napari._layers import stormfold_metadata

    if getattr(layer, "rgb", False):  # (rows, cols, 3) would read as frames of 3 columns
        raise UserError(f"layer {layer.name!r} is a colour (RGB) image: localization needs a "
                        f"grayscale movie (save one channel as grayscale)")
    meta = stormfold_metadata(layer)
    shape = tuple(int(n) for n in layer.data.shape)
    for candidate in (getattr(getattr(layer, "source", None), "path", None), meta.get("source")):
        if not candidate or not Path(candidate).exists():
            continue
        try:
            with open_movie(candidate) as movie:
                if (movie.n_frames, *movie.shape) == shape[-3:] or \
                        (len(shape) == 2 and movie.n_frames == 1 and movie.shape == shape):
                    return MovieSource(layer.name, path=Path(candidate))
        except UserError:
            continue
    info = {"camera": meta["camera"]} if isinstance(meta.get("camera"), dict) else {}
    return MovieSource(layer.name, frames=layer.data, metadata={"info": info} if info else {})


@dataclass
class MovieFacts:
    """What a movie says about itself: pixel size and camera (None when it does not)."""

    pixel_size_nm: float | None
    camera: dict | None
    n_frames: int
    shape: tuple[int, int]


def movie_facts(source: MovieSource, layer_scale: tuple | None = None) -> MovieFacts:
    """Pixel size and camera of a movie from its metadata (the command line's defaults)."""
    from stormfold.config import to_dict
    from stormfold.localize.camera import resolve_camera

    with source.open() as movie:
        camera, where = resolve_camera(None, movie, None)
        px = movie.pixel_size_nm
        facts = MovieFacts(px, to_dict(camera) if where == "movie metadata" else None,
                           movie.n_frames, movie.shape)
    if facts.pixel_size_nm is None and layer_scale is not None and float(layer_scale[-1]) != 1.0:
        facts.pixel_size_nm = float(layer_scale[-1])  # a layer scaled in nm by another tool
    return facts


# --------------------------------------------------------------------------- localize
@dataclass
class LocalizeSettings:
    """The Localize widget's values (the options of ``stormfold localize``).

    ``camera`` is a :class:`~stormfold.localize.runner.CameraOverrides`: fields left blank
    in the widget are None and come from the movie's metadata or the model, as on the
    command line.
    """

    engine: str
    pixel_size_nm: float | None
    camera: Any = None
    threshold: float | None = None
    model_folder: Path | None = None
    start: int = 0
    stop: int | None = None
    batch_frames: int = 16
    render_pixel_nm: float = 10.0
    render_method: str = "histogram"
    drift: bool = False
    drift_bins: int = 10
    options: dict = field(default_factory=dict)


@dataclass
class LocalizeOutcome:
    """What a Localize run produced."""

    table: pd.DataFrame
    image: np.ndarray
    render_pixel_nm: float
    pixel_size_nm: float
    frame_shape: tuple[int, int]
    run: dict
    engine_label: str
    drift: pd.DataFrame | None = None
    drift_stats: dict | None = None
    drift_error: str | None = None


def engine_arguments(settings: LocalizeSettings) -> dict[str, Any]:
    """``model=`` or ``engine=`` for :func:`stormfold.localize.load_engine`."""
    if settings.engine == MODEL_FOLDER:
        if settings.model_folder is None or not str(settings.model_folder).strip():
            raise UserError("choose the model folder (a folder with model.yaml and "
                            "weights.safetensors)")
        return {"model": str(settings.model_folder)}
    if settings.engine in model_free_engines():
        return {"engine": settings.engine}
    return {"model": settings.engine}


def run_localize(source: MovieSource, settings: LocalizeSettings,
                 callback: Callable[[int, int], None] | None = None) -> LocalizeOutcome:
    """Localize (as ``stormfold localize``), correct the drift (as ``stormfold drift``) when
    asked, and render (as ``stormfold render``) over the camera field of view.

    A drift estimate that fails does not lose the localizations: the rendering is then of
    the uncorrected table and ``drift_error`` says why.
    """
    from stormfold.device import get_device
    from stormfold.localize.registry import load_engine
    from stormfold.localize.runner import localize_movie
    from stormfold.postprocess.render import render

    if settings.render_pixel_nm is None or not settings.render_pixel_nm > 0:
        raise UserError(f"render pixel size must be > 0 nm, got {settings.render_pixel_nm}")
    arguments = engine_arguments(settings)
    with source.open(settings.pixel_size_nm) as movie:
        movie.require_pixel_size()
        engine = load_engine(**arguments, device=get_device(None), threshold=settings.threshold,
                             options=settings.options)
        result = localize_movie(movie, engine, None, camera=settings.camera,
                                batch_frames=settings.batch_frames, start=settings.start,
                                stop=settings.stop, progress=False, keep_table=True,
                                callback=callback)
        rows, cols = movie.shape
    px = float(result.run["pixel_size_nm"])
    table = result.locs
    outcome = LocalizeOutcome(table, np.zeros((1, 1), np.float32), settings.render_pixel_nm, px,
                              (rows, cols), result.run,
                              arguments.get("model") or arguments["engine"])
    rendered = table
    if settings.drift:
        from stormfold.postprocess.drift import correct_drift

        try:
            rendered, drift = correct_drift(table, "rcc", n_frames=result.run["frames"][1],
                                            bins=settings.drift_bins)
            outcome.drift, outcome.drift_stats = drift.drift, drift.stats
        except UserError as exc:
            outcome.drift_error = str(exc)
    outcome.image = render(rendered, settings.render_pixel_nm, settings.render_method,
                           fov_nm=(cols * px, rows * px))
    return outcome


# --------------------------------------------------------------------------- simulate
@dataclass
class Simulated:
    """A simulation for the viewer: frames (array or file), truth, drift, configuration."""

    frames: Any
    truth: pd.DataFrame
    drift: pd.DataFrame | None
    config: Any
    path: Path | None = None


def simulation_config(preset: str, n_frames: int, seed: int):
    """``demo`` (the movie of ``stormfold demo``) or a simulator preset, as a config."""
    from stormfold.simulate import build_config

    if preset == "demo":
        from stormfold.demo import demo_simulation

        return demo_simulation(n_frames=n_frames, seed=seed)
    return build_config(preset=preset, n_frames=n_frames, seed=seed)


def run_simulate(preset: str, n_frames: int, seed: int, out_dir: Path | None = None) -> Simulated:
    """Simulate in memory (``stormfold.simulate.simulate``) or, with ``out_dir``, into a
    folder exactly as ``stormfold simulate`` does (the movie is then read from its file)."""
    from stormfold.simulate import simulate, simulate_to_folder

    config = simulation_config(preset, n_frames, seed)
    if out_dir is None:
        sim = simulate(config)
        return Simulated(sim.movie, sim.truth, sim.drift if config.drift.active else None, config)
    from stormfold.io.movie import open_movie
    from stormfold.io.thunderstorm import read_thunderstorm_csv
    from stormfold.napari._io import MovieFrames
    from stormfold.postprocess.drift import read_drift_csv

    out_dir = simulate_to_folder(config, out_dir, progress=False)
    truth = read_thunderstorm_csv(out_dir / "truth.csv")
    drift = read_drift_csv(out_dir / "drift.csv") if (out_dir / "drift.csv").is_file() else None
    movie = open_movie(out_dir / "movie.tif")
    return Simulated(MovieFrames(movie), truth, drift, config, out_dir / "movie.tif")


# --------------------------------------------------------------------------- calibrate
@dataclass
class CalibrateSettings:
    """The Calibrate widget's values (the options of ``stormfold calibrate``)."""

    pixel_size_nm: float | None = None
    start: int = 0
    stop: int | None = None
    emccd: bool = False
    qe: float = 1.0
    em_gain: float = 100.0
    threshold: float = 5.0
    out_dir: Path | None = None


def run_calibrate(source: MovieSource, settings: CalibrateSettings):
    """:func:`stormfold.calibrate.calibrate` on the movie; returns its CalibrationResult."""
    from stormfold.calibrate import ScanSettings, calibrate

    with source.open(settings.pixel_size_nm) as movie:
        movie.require_pixel_size()
        return calibrate(movie, settings.out_dir, start=settings.start, stop=settings.stop,
                         emccd=settings.emccd, qe=settings.qe, em_gain=settings.em_gain,
                         settings=ScanSettings(threshold=settings.threshold), progress=False)


def calibration_summary(result) -> str:
    """The estimates as a few lines of text (units in the names)."""
    cam, em = result.camera, result.emitters
    background = result.simulation["background"]["photons"]
    lines = [
        f"camera: baseline {cam.baseline_adu:.1f} ADU, {cam.adu_per_e:.4g} ADU/e⁻, "
        f"read noise {cam.read_noise_adu:.3g} ADU",
        f"background: {background:.3g} photons/px",
        f"PSF σ: {em.sigma_nm:.1f} nm",
        f"photons per emitter: {em.photons_mean:.0f} ± {em.photons_std:.0f}",
        f"density: {em.density_per_um2:.3g} /µm² (counted {em.density_counted_per_um2:.3g}, "
        f"a lower bound)",
    ]
    lines += [f"note: {note}" for note in result.provenance.get("notes", [])]
    return "\n".join(lines)
