"""ADU → photons: which camera converts a movie (SPEC §1 camera units).

The one place where camera parameters given by the user (a YAML file and/or single fields,
from the command line or a run configuration) are merged over the camera a movie or a model
carries. The conversion itself is :meth:`stormfold.physics.Camera.backward`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stormfold.config import from_dict, load_yaml, to_dict
from stormfold.errors import UserError
from stormfold.physics.camera import Camera


@dataclass
class CameraOverrides:
    """Camera parameters given by the user (None = not given): on the command line, or
    (``origin``) in a run configuration or a widget."""

    camera_file: Path | None = None
    baseline_adu: float | None = None
    e_per_adu: float | None = None
    em_gain: float | None = None
    qe: float | None = None
    readout_e: float | None = None
    origin: str = "command-line"

    def check(self) -> "CameraOverrides":
        """Refuse a camera file that does not exist (before any work starts)."""
        if self.camera_file is not None and not Path(self.camera_file).is_file():
            raise UserError(f"camera file not found: {self.camera_file}")
        return self

    def fields(self) -> dict[str, float]:
        return {k: v for k, v in (("baseline_adu", self.baseline_adu), ("e_per_adu", self.e_per_adu),
                                  ("em_gain", self.em_gain), ("qe", self.qe),
                                  ("readout_e", self.readout_e)) if v is not None}


#: The camera fields that set the photon scale: when one of them comes from a default or from
#: the model rather than from the user's data, the photons, uncertainties and (for a learned
#: engine) the detections may be wrong, and :attr:`CameraChoice.warning` says so.
KEY_FIELDS = ("baseline_adu", "e_per_adu")
SOURCE_DEFAULT = "default (baseline 0 ADU, 1 e-/ADU, no gain)"
SOURCE_MODEL = "model training simulation"
_GIVE = ("give --camera FILE or --baseline ADU --e-per-adu X [--em-gain G] (run configuration: "
         "its camera section; README: \"Your own data\")")


@dataclass
class CameraChoice:
    """The camera that converts a movie, where it came from, and what was assumed.

    Attributes
    ----------
    camera : Camera
    source : str
        Where it came from (recorded as ``camera_source`` in run.yaml).
    assumed : tuple of str
        Fields of :data:`KEY_FIELDS` that come from a default or from the model's training
        simulation rather than from the user (options, camera file, movie metadata).
    """

    camera: Camera
    source: str
    assumed: tuple[str, ...] = ()

    @property
    def warning(self) -> str | None:
        """One line to print when the camera is (partly) assumed; None otherwise."""
        if not self.assumed:
            return None
        c = self.camera
        origin = "an ideal camera" if self.source.startswith("default") else \
            "the model's training camera"
        return (f"camera {' and '.join(self.assumed)} not given: using {origin} (baseline "
                f"{c.baseline_adu:g} ADU, e_per_adu {c.e_per_adu:g}, EM gain {c.em_gain:g}), so "
                f"photons, uncertainties and detections are right only if your camera matches "
                f"it; {_GIVE}")


def camera_from_file(path: str | Path) -> Camera:
    """A camera from YAML: a mapping of :class:`Camera` fields, or any stormfold YAML
    (``simulation.yaml``, ``model.yaml``, ``run.yaml``) with a ``camera`` section."""
    return from_dict(Camera, _camera_fields(path), where="camera")


def _camera_fields(path: str | Path) -> dict:
    data = load_yaml(path)
    if isinstance(data, dict) and isinstance(data.get("camera"), dict):
        data = data["camera"]
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected camera parameters (baseline_adu, e_per_adu, ...)")
    return data


def choose_camera(overrides: CameraOverrides | None, movie=None, engine=None,
                  fallback: tuple[Camera, str] | None = None) -> CameraChoice:
    """The camera to convert ADU to photons, where it came from, and what was assumed.

    Order: ``--camera FILE``; else the camera stored in a stormfold-written movie
    (:class:`~stormfold.io.movie.Movie`); else the camera of the model's training simulation
    (an :class:`~stormfold.localize.engine.Engine` or anything with ``training_camera()``);
    else ``fallback`` (camera, source: the caller's configuration); else an ideal camera
    (baseline 0, 1 e⁻/ADU). Individual options (``--baseline`` ...) then override single
    fields. The fields of :data:`KEY_FIELDS` that end up from the model or the ideal camera
    (or that a camera file leaves out) are :attr:`CameraChoice.assumed`.
    """
    overrides = overrides or CameraOverrides()
    given: set[str] = set()
    if overrides.camera_file is not None:
        fields = _camera_fields(overrides.camera_file)
        camera = _camera_from(fields, overrides.camera_file)
        source, given = f"file {overrides.camera_file}", set(fields)
    elif movie is not None and isinstance(movie.metadata.get("info"), dict) \
            and isinstance(movie.metadata["info"].get("camera"), dict):
        camera = _camera_from(movie.metadata["info"]["camera"],
                              f"{movie.path} (the camera in its metadata)")
        source, given = "movie metadata", set(KEY_FIELDS)
    elif engine is not None and engine.training_camera() is not None:
        camera, source = engine.training_camera(), SOURCE_MODEL
    elif fallback is not None:
        (camera, source), given = fallback, set(KEY_FIELDS)
    else:
        camera, source = Camera(), SOURCE_DEFAULT
    fields = overrides.fields()
    if fields:
        camera = from_dict(Camera, {**to_dict(camera), **fields}, where="camera")
        if source == SOURCE_DEFAULT and all(k in fields for k in KEY_FIELDS):
            source = f"{overrides.origin} " + ", ".join(fields)  # the default set nothing
        else:
            source += f" + {overrides.origin} " + ", ".join(fields)
    assumed = tuple(k for k in KEY_FIELDS if k not in given and k not in fields)
    return CameraChoice(camera, source, assumed)


def _camera_from(fields: dict, source: str | Path) -> Camera:
    """A :class:`Camera` from a file's fields; a bad field's message names the file."""
    try:
        return from_dict(Camera, fields, where="camera")
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None


def resolve_camera(overrides: CameraOverrides | None, movie=None, engine=None,
                   fallback: tuple[Camera, str] | None = None) -> tuple[Camera, str]:
    """``(camera, source)`` of :func:`choose_camera`."""
    choice = choose_camera(overrides, movie, engine, fallback)
    return choice.camera, choice.source


def check_camera_on_movie(camera: Camera, source: str, movie, warn=None,
                          frames: tuple[int, int] | None = None) -> dict:
    """Checks of a camera against the movie it converts, before any work.

    Reads a few frames (:func:`stormfold.io.movie_checks.sample_statistics`): NaN/Inf pixels met in
    a sampled frame of ``frames`` (default: the whole movie) are refused under the movie's
    ``nan_policy="error"`` (:func:`stormfold.io.movie_checks.check_sampled_frames`), a baseline above the
    movie's 99th percentile is refused (:func:`stormfold.physics.camera.check_baseline`), and
    values that cannot be camera counts (negative, normalised to [0, 1], constant) are a
    warning (:func:`stormfold.io.movie_checks.adu_warnings`).

    Parameters
    ----------
    camera : Camera
        The camera that will convert the movie.
    source : str
        Where it came from (as :func:`resolve_camera` says), for the message.
    movie : Movie
        The movie.
    warn : callable(str), optional
        Where the warnings go (default: :func:`warnings.warn`).
    frames : (int, int), optional
        The frames [start, stop) that will be localized.

    Returns
    -------
    dict
        The sampled statistics.
    """
    import warnings

    from stormfold.io.movie_checks import adu_warnings, check_sampled_frames, sample_statistics
    from stormfold.physics.camera import check_baseline

    stats = sample_statistics(movie)
    check_sampled_frames(movie, stats, *(frames or (0, None)))
    for text in adu_warnings(stats):
        if warn is None:
            warnings.warn(f"{movie.path}: {text}", UserWarning, stacklevel=2)
        else:
            warn(f"{movie.path}: {text}")
    origin = "--baseline" if "baseline_adu" in source else f"camera baseline (from {source})"
    check_baseline(camera.baseline_adu, stats["p99"], origin)
    return stats
