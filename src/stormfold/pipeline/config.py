"""The configuration of ``stormfold run`` (a YAML file) and its checks before any work."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from stormfold.config import from_dict, load_yaml, merge, parse_overrides
from stormfold.errors import UserError


@dataclass
class CameraSpec:
    """ADU → photon conversion: a YAML file with a camera section and/or single fields.

    Unset fields come from the movie's metadata, else the model's training camera.
    """

    file: Optional[str] = None
    baseline_adu: Optional[float] = None
    e_per_adu: Optional[float] = None
    em_gain: Optional[float] = None
    qe: Optional[float] = None
    readout_e: Optional[float] = None

    def overrides(self):
        """As :class:`~stormfold.localize.camera.CameraOverrides` (the one merge of camera
        parameters over the movie's or the model's camera)."""
        from stormfold.localize.camera import CameraOverrides

        return CameraOverrides(Path(self.file) if self.file else None, self.baseline_adu,
                               self.e_per_adu, self.em_gain, self.qe, self.readout_e,
                               origin="run configuration")


#: The model of a run whose configuration names no engine.
DEFAULT_MODEL = "builtin:gridnet-generalist"


@dataclass
class TrainSpec:
    """Train a model before the run ("train one from this simulation").

    ``engine`` is any engine with a trainer in the registry (``deepstorm``, ``unrolled``,
    ``sofi``, ``gridnet``);
    ``preset``, ``config`` and ``overrides`` have the meaning of
    ``stormfold train ENGINE --preset/--config/--set``.
    """

    engine: str = "deepstorm"
    preset: Optional[str] = None
    config: Optional[str] = None
    overrides: list[str] = field(default_factory=list)
    seed: int = 0


@dataclass
class EngineSpec:
    """Which engine localizes: a model (``builtin:NAME`` or folder), a model-free engine
    (``classic``), or a model trained first (``train``)."""

    model: Optional[str] = None
    engine: Optional[str] = None
    train: Optional[TrainSpec] = None
    threshold: Optional[float] = None
    options: dict = field(default_factory=dict)
    device: str = "auto"
    batch_frames: int = 16

    def validate(self) -> None:
        given = [k for k in ("model", "engine", "train") if getattr(self, k) is not None]
        if len(given) > 1:
            raise UserError(f"engine: give one of engine.model, engine.engine, engine.train, "
                            f"not {' and '.join(given)}")
        if not given:
            # An engine section with only options (threshold, batch size, --set) keeps the
            # default model, as a run without the section does.
            self.model = DEFAULT_MODEL
        if self.batch_frames < 1:
            raise UserError(f"engine.batch_frames must be ≥ 1, got {self.batch_frames}")
        if self.threshold is not None:
            from stormfold.localize.registry import check_threshold

            check_threshold(self.threshold, "engine.threshold")


@dataclass
class EvaluationSpec:
    """Evaluation against a ground-truth table (ThunderSTORM CSV or Picasso HDF5)."""

    truth: Optional[str] = None
    #: The true drift (CSV with ``frame, dx_nm, dy_nm``, e.g. a simulation's ``drift.csv``). With
    #: the ``drift`` post-processing step, the truth is moved into the drift-corrected frame before
    #: matching, and the residual of the estimated drift is reported.
    truth_drift: Optional[str] = None
    tolerances_nm: list[float] = field(default_factory=lambda: [50.0, 100.0, 250.0])
    border_nm: float = 0.0
    matching: str = "hungarian"

    def validate(self) -> None:
        from stormfold.evaluate.matching import check_method, check_tolerance

        if not self.tolerances_nm:
            raise UserError("evaluation.tolerances_nm: give at least one tolerance (nm)")
        for i, tolerance in enumerate(self.tolerances_nm):
            try:
                # A zero tolerance would match only exact coincidences: no use for a run.
                if check_tolerance(tolerance) == 0:
                    raise UserError(f"tolerance must be > 0 nm, got {tolerance!r}")
            except UserError as exc:
                raise UserError(f"evaluation.tolerances_nm[{i}]: {exc}") from None
        if not (math.isfinite(self.border_nm) and self.border_nm >= 0):
            raise UserError(f"evaluation.border_nm must be a finite number of nm ≥ 0, got "
                            f"{self.border_nm!r}")
        try:
            check_method(self.matching)
        except UserError as exc:
            raise UserError(f"evaluation.matching: {exc}") from None


@dataclass
class RunConfig:
    """Everything ``stormfold run`` needs; see README.md for each field."""

    movie: Union[str, list[str]] = ""
    output: str = "stormfold_output"
    pixel_size_nm: Optional[float] = None
    frames: Optional[list[int]] = None
    #: NaN/Inf pixels: an error, or replaced by 0 and counted (run.yaml ``nan_repairs``).
    nan_policy: Literal["error", "zero", "median"] = "error"
    #: TIFF stacks of more than 3 dimensions: their axes (e.g. TZYX), the plane to read.
    axes: Optional[str] = None
    z: Optional[int] = None
    channel: Optional[int] = None
    camera: CameraSpec = field(default_factory=CameraSpec)
    # Without an engine section: the generalist, the one shipped model that is not tied to a
    # camera or a pixel size (README, "Choosing an engine").
    engine: EngineSpec = field(default_factory=lambda: EngineSpec(model=DEFAULT_MODEL))
    postprocess: dict = field(default_factory=dict)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    chunk_frames: int = 256
    scheduler: Optional[str] = None
    report: bool = True

    @property
    def movies(self) -> list[str]:
        return [self.movie] if isinstance(self.movie, str) else list(self.movie)

    def validate(self) -> None:
        if not self.movies or not all(self.movies):
            raise UserError("movie: give the path of the movie (or a list of paths)")
        if not self.output.strip():
            raise UserError("output: give the folder to write (an empty path is refused)")
        if self.pixel_size_nm is not None:
            from stormfold.io.metadata import check_camera_pixel_size

            check_camera_pixel_size(self.pixel_size_nm, "pixel_size_nm")
        if self.chunk_frames < 1:
            raise UserError(f"chunk_frames must be ≥ 1, got {self.chunk_frames}")
        if self.frames is not None:
            from stormfold.io.frame_range import check_bounds

            if len(self.frames) != 2:
                raise UserError(f"frames must be [first, stop] (0-based, stop exclusive), got "
                                f"{self.frames}")
            check_bounds(self.frames[0], self.frames[1], "frames")
        for name in ("z", "channel"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise UserError(f"{name} must be a plane index ≥ 0, got {getattr(self, name)}")
        if self.scheduler is not None:
            check_scheduler_address(self.scheduler)

    def movie_options(self) -> dict:
        """How the movie is read (keyword arguments of :func:`stormfold.io.movie.open_movies`)."""
        return {"nan_policy": self.nan_policy, "axes": self.axes, "z": self.z,
                "channel": self.channel}


#: Scheduler protocols a run connects through: plain TCP. inproc:// lives only inside one
#: process, tls:// needs certificates a run has no option for, others need extra packages.
SCHEDULER_SCHEMES = ("tcp",)


def check_scheduler_address(address: str) -> None:
    """Refuse, before any work, a ``scheduler`` that is not a TCP Dask scheduler address
    (``tcp://HOST:PORT`` or ``HOST:PORT``)."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address, strict=False)
        if scheme not in SCHEDULER_SCHEMES:
            raise ValueError(f"protocol {scheme!r} is not supported, only "
                             f"{', '.join(SCHEDULER_SCHEMES)}")
        parse_host_port(location)
    except (TypeError, ValueError) as exc:
        raise UserError(f"scheduler: {address!r} is not a Dask scheduler address ({exc}); "
                        f"give tcp://HOST:PORT or HOST:PORT") from None


def load_run_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                    base: dict | None = None) -> RunConfig:
    """Read a run configuration from YAML (relative paths are relative to the file)."""
    data: dict[str, Any] = dict(base or {})
    root = Path(".")
    if path is not None:
        loaded = load_yaml(path)
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of run settings")
        data = merge(data, loaded)
        root = Path(path).resolve().parent
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    data = merge(data, extra)
    config = from_dict(RunConfig, data)
    return _resolve_paths(config, root)


def _resolve_paths(config: RunConfig, root: Path) -> RunConfig:
    """Make relative paths of a configuration file relative to that file's folder."""
    def fix(p: str | None) -> str | None:
        if p is None or p.startswith("builtin:") or Path(p).is_absolute():
            return p
        return os.path.normpath(root / p)

    config.movie = [fix(m) for m in config.movie] if isinstance(config.movie, list) else fix(config.movie)
    config.output = fix(config.output)
    config.camera.file = fix(config.camera.file)
    config.engine.model = fix(config.engine.model)
    config.evaluation.truth = fix(config.evaluation.truth)
    config.evaluation.truth_drift = fix(config.evaluation.truth_drift)
    if config.engine.train is not None:
        config.engine.train.config = fix(config.engine.train.config)
    return config


def check_inputs(config: RunConfig) -> None:
    """Fail before any work when an input named in the configuration is missing."""
    for movie in config.movies:
        if not Path(movie).exists():
            raise UserError(f"movie: not found: {movie}")
    if config.camera.file is not None and not Path(config.camera.file).is_file():
        raise UserError(f"camera.file: not found: {config.camera.file}")
    if config.engine.train is not None:
        from stormfold.localize.registry import check_trainable

        check_trainable(config.engine.train.engine)
    if config.evaluation.truth is not None and not Path(config.evaluation.truth).is_file():
        raise UserError(f"evaluation.truth: not found: {config.evaluation.truth}")
    if config.evaluation.truth_drift is not None:
        if config.evaluation.truth is None:
            raise UserError("evaluation.truth_drift: needs evaluation.truth")
        if "drift" not in (config.postprocess or {}).get("steps", []):
            raise UserError("evaluation.truth_drift: needs the drift step in postprocess.steps "
                            "(without it, evaluate against the truth as it is)")
        if not Path(config.evaluation.truth_drift).is_file():
            raise UserError(f"evaluation.truth_drift: not found: {config.evaluation.truth_drift}")
    if config.engine.model is not None:
        from stormfold.modelfile import resolve_model_dir

        try:
            resolve_model_dir(config.engine.model)
        except UserError as exc:
            raise UserError(f"engine.model: {exc}") from None
    from stormfold.postprocess.chain import check_chain

    check_chain(config.postprocess)


