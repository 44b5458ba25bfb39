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
    """Camera parameters given on the command line (None = not given)."""

    camera_file: Path | None = None
    baseline_adu: float | None = None
    e_per_adu: float | None = None
    em_gain: float | None = None
    qe: float | None = None

    def check(self) -> "CameraOverrides":
        """Refuse a camera file that does not exist (before any work starts)."""
        if self.camera_file is not None and not Path(self.camera_file).is_file():
            raise UserError(f"camera file not found: {self.camera_file}")
        return self

    def fields(self) -> dict[str, float]:
        return {k: v for k, v in (("baseline_adu", self.baseline_adu), ("e_per_adu", self.e_per_adu),
                                  ("em_gain", self.em_gain), ("qe", self.qe)) if v is not None}


def camera_from_file(path: str | Path) -> Camera:
    """A camera from YAML: a mapping of :class:`Camera` fields, or any stormfold YAML
    (``simulation.yaml``, ``model.yaml``, ``run.yaml``) with a ``camera`` section."""
    data = load_yaml(path)
    if isinstance(data, dict) and isinstance(data.get("camera"), dict):
        data = data["camera"]
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected camera parameters (baseline_adu, e_per_adu, ...)")
    return from_dict(Camera, data, where="camera")


def resolve_camera(overrides: CameraOverrides | None, movie=None, engine=None,
                   fallback: tuple[Camera, str] | None = None) -> tuple[Camera, str]:
    """The camera to convert ADU to photons, and where it came from.

    Order: ``--camera FILE``; else the camera stored in a stormfold-written movie
    (:class:`~stormfold.io.movie.Movie`); else the camera of the model's training simulation
    (an :class:`~stormfold.localize.engine.Engine` or anything with ``training_camera()``);
    else ``fallback`` (camera, source); else an ideal camera (baseline 0, 1 e⁻/ADU).
    Individual options (``--baseline`` ...) then override single fields.
    """
    overrides = overrides or CameraOverrides()
    if overrides.camera_file is not None:
        camera, source = camera_from_file(overrides.camera_file), f"file {overrides.camera_file}"
    elif movie is not None and isinstance(movie.metadata.get("info"), dict) \
            and isinstance(movie.metadata["info"].get("camera"), dict):
        camera = from_dict(Camera, movie.metadata["info"]["camera"], where="movie camera")
        source = "movie metadata"
    elif engine is not None and engine.training_camera() is not None:
        camera, source = engine.training_camera(), "model training simulation"
    elif fallback is not None:
        camera, source = fallback
    else:
        camera, source = Camera(), "default (baseline 0 ADU, 1 e-/ADU, no gain)"
    fields = overrides.fields()
    if fields:
        camera = from_dict(Camera, {**to_dict(camera), **fields}, where="camera")
        source += " + command-line " + ", ".join(fields)
    return camera, source


