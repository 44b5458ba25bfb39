"""The main job: one configuration from movie to report (``stormfold run CONFIG.yaml``).

The movie is localized in chunks of frames; after each chunk its localizations are
appended to a partial CSV and the running image sums and the chunk counter are saved,
so a crash loses at most the chunk in flight and ``--resume`` continues where the run
stopped. Chunks run in this process or, with ``scheduler``, on a Dask cluster whose
workers each load the model once. Then the post-processing chain runs on the whole
table, the outputs are written and the HTML report is built.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import pandas as pd

from stormfold import __version__
from stormfold.config import dump_yaml, from_dict, load_yaml, merge, parse_overrides, to_dict
from stormfold.errors import UserError
from stormfold.io.atomic import atomic_path, write_text

STATE_DIR = ".stormfold-run"
LOG_FILE = "run.log"


# --------------------------------------------------------------------------- configuration
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


@dataclass
class TrainSpec:
    """Train a model before the run ("train one from this simulation").

    ``engine`` is ``deepstorm`` or ``unrolled``; ``preset``, ``config`` and ``overrides``
    have the meaning of ``stormfold train ENGINE --preset/--config/--set``.
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
        if len(given) != 1:
            raise UserError("engine: give exactly one of engine.model, engine.engine, engine.train")
        if self.batch_frames < 1:
            raise UserError(f"engine.batch_frames must be ≥ 1, got {self.batch_frames}")


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


@dataclass
class RunConfig:
    """Everything ``stormfold run`` needs; see README.md for each field."""

    movie: Union[str, list[str]] = ""
    output: str = "stormfold_output"
    pixel_size_nm: Optional[float] = None
    frames: Optional[list[int]] = None
    camera: CameraSpec = field(default_factory=CameraSpec)
    engine: EngineSpec = field(default_factory=lambda: EngineSpec(model="builtin:deepstorm-zerocost"))
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
        if self.pixel_size_nm is not None and not self.pixel_size_nm > 0:
            raise UserError(f"pixel_size_nm must be > 0, got {self.pixel_size_nm}")
        if self.chunk_frames < 1:
            raise UserError(f"chunk_frames must be ≥ 1, got {self.chunk_frames}")
        if self.frames is not None and (len(self.frames) != 2 or not 0 <= self.frames[0] < self.frames[1]):
            raise UserError(f"frames must be [first, stop) with 0 ≤ first < stop, got {self.frames}")


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


# --------------------------------------------------------------------------- run state
@dataclass
class RunState:
    """What a resumed run needs: chunks done, CSV length, image sums."""

    fingerprint: str
    chunks_done: int = 0
    csv_bytes: int = 0
    n_locs: int = 0
    engine_s: float = 0.0

    def save(self, folder: Path, superres: np.ndarray, widefield: np.ndarray) -> None:
        # Sums first, then the state that points at them: a crash between leaves the old state.
        with atomic_path(folder / "sums.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, superres=superres, widefield=widefield)
        write_text(folder / "state.json", json.dumps(self.__dict__))

    @classmethod
    def load(cls, folder: Path) -> tuple["RunState", np.ndarray, np.ndarray] | None:
        if not (folder / "state.json").is_file() or not (folder / "sums.npz").is_file():
            return None
        state = cls(**json.loads((folder / "state.json").read_text()))
        with np.load(folder / "sums.npz", allow_pickle=False) as sums:
            return state, sums["superres"], sums["widefield"]


def truth_in_corrected_frame(truth: pd.DataFrame, true_drift: pd.DataFrame,
                             estimated: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Move a drifting truth into the frame of drift-corrected localizations.

    Localizations at p + d(f) corrected with an estimate d̂ = d − c sit at p + c: drift
    correction cannot know the constant c, so the truth gets the same constant, taken as the
    mean of d − d̂ over the frames (the convention of the residual, see
    :func:`stormfold.postprocess.drift.residual_rms_nm`).

    Returns
    -------
    truth : pandas.DataFrame
        The truth at p + c (nm).
    true_drift : pandas.DataFrame
        d − c: the true trajectory comparable with the estimate (nm).
    residual_nm : float
        RMS of d̂ − d after removing c.
    """
    from stormfold.postprocess.drift import apply_drift, residual_rms_nm

    merged = true_drift.merge(estimated, on="frame", suffixes=("_true", "_est"))
    if not len(merged):
        raise UserError("evaluation.truth_drift: shares no frame with the estimated drift")
    shifted = true_drift.copy()
    shifted["dx_nm"] -= float((merged["dx_nm_true"] - merged["dx_nm_est"]).mean())
    shifted["dy_nm"] -= float((merged["dy_nm_true"] - merged["dy_nm_est"]).mean())
    return apply_drift(truth, shifted), shifted, residual_rms_nm(estimated, true_drift)


def _fingerprint(config: RunConfig) -> str:
    relevant = {k: v for k, v in to_dict(config).items() if k not in ("scheduler", "report", "output")}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- the run
@dataclass
class RunResult:
    """Everything a run produced (tables and images in memory, paths on disk)."""

    output: Path
    locs: pd.DataFrame
    raw_locs: pd.DataFrame
    superres: np.ndarray
    widefield: np.ndarray
    pixel_size_nm: float
    upsampling: int
    meta: dict
    postprocess: dict = field(default_factory=dict)
    evaluation: pd.DataFrame | None = None
    truth: pd.DataFrame | None = None
    true_drift: pd.DataFrame | None = None  # in the frame of the corrected table, like ``truth``
    label: str = ""


def _logger(output: Path, quiet: bool) -> logging.Logger:
    log = logging.getLogger(f"stormfold.run.{output}")
    log.handlers.clear()
    log.setLevel(logging.INFO)
    log.propagate = False
    fh = logging.FileHandler(output / LOG_FILE, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    if not quiet:
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(sh)
    return log


def _camera_overrides(spec: CameraSpec):
    from stormfold.localize.runner import CameraOverrides

    return CameraOverrides(Path(spec.file) if spec.file else None, spec.baseline_adu,
                           spec.e_per_adu, spec.em_gain, spec.qe)


def _train_model(spec: TrainSpec, folder: Path, device: Any, log: logging.Logger, quiet: bool) -> Path:
    """Train the model the configuration asks for (skipped when a finished one is there)."""
    from stormfold.modelfile import META

    model_dir = folder / "model"
    if (model_dir / META).is_file():
        log.info(f"using the model trained earlier in {model_dir}")
        return model_dir
    log.info(f"training a {spec.engine} model into {model_dir}")
    if spec.engine == "deepstorm":
        from stormfold.deepstorm.train import train_from_cli

        train_from_cli(preset=spec.preset, config_file=spec.config, overrides=spec.overrides,
                       seed=spec.seed, out=model_dir, device=device, progress=not quiet)
    elif spec.engine == "unrolled":
        from stormfold.unrolled.train import train_from_cli

        train_from_cli(preset=spec.preset, config_file=spec.config, overrides=spec.overrides,
                       seed=spec.seed, out=model_dir, device=device, progress=not quiet)
    else:
        raise UserError(f"engine.train.engine: cannot train {spec.engine!r} (deepstorm or unrolled)")
    return model_dir


def run(config: RunConfig, resume: bool = False, quiet: bool = False,
        label: str = "") -> RunResult:
    """Run the whole job of ``config``; see the module docstring.

    Parameters
    ----------
    config : RunConfig
    resume : bool
        Continue an interrupted run in the same output folder (same configuration).
    quiet : bool
        No progress bar and no console log (the log file is still written).
    """
    from tqdm import tqdm

    from stormfold.device import get_device
    from stormfold.io.movie import open_movies
    from stormfold.io.thunderstorm import ThunderstormCsvWriter, read_thunderstorm_csv
    from stormfold.localize.registry import load_engine
    from stormfold.localize.runner import resolve_camera, resolve_pixel_size

    check_inputs(config)
    device = get_device(None if config.engine.device == "auto" else config.engine.device)
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise UserError(f"output: {output} exists and is not a folder")
    movie = open_movies(config.movies, pixel_size_nm=config.pixel_size_nm)
    try:
        spec = config.engine
        engine = None
        if spec.train is None:
            engine = load_engine(model=spec.model, engine=spec.engine, device=device,
                                 threshold=spec.threshold, options=spec.options)
            px = resolve_pixel_size(movie, engine)
        else:
            px = movie.require_pixel_size()
        truth = None
        if config.evaluation.truth is not None:
            from stormfold.io.tables import read_table

            truth = read_table(config.evaluation.truth)
        true_drift = None
        if config.evaluation.truth_drift is not None:
            from stormfold.postprocess.drift import read_drift_csv

            true_drift = read_drift_csv(config.evaluation.truth_drift)
        start, stop = (config.frames or [0, movie.n_frames])
        stop = min(stop, movie.n_frames)
        if start >= stop:
            raise UserError(f"frames: range {start}:{stop} is empty for a movie of {movie.n_frames} frames")
        # Everything is checked: from here on the run writes.
        output.mkdir(parents=True, exist_ok=True)
        state_dir = output / STATE_DIR
        state_dir.mkdir(exist_ok=True)
        log = _logger(output, quiet)
        t0 = time.perf_counter()
        if engine is None:
            model_dir = _train_model(spec.train, output, device, log, quiet)
            spec = EngineSpec(model=str(model_dir), threshold=spec.threshold, options=spec.options,
                              device=spec.device, batch_frames=spec.batch_frames)
            engine = load_engine(model=spec.model, device=device, threshold=spec.threshold,
                                 options=spec.options)
            px = resolve_pixel_size(movie, engine)
        camera, camera_source = resolve_camera(_camera_overrides(config.camera), movie, engine)
        log.info(f"movie {', '.join(config.movies)}: {movie.n_frames} frames of "
                 f"{movie.shape[0]}×{movie.shape[1]} px, {px:g} nm; camera from {camera_source}")
        log.info(f"engine {engine.name} ({spec.model or spec.engine or 'trained'}), "
                 f"device {device}, frames {start}:{stop}")

        L = engine.upsampling
        rows, cols = movie.shape
        # Chunks are whole numbers of batches so local and distributed runs compute alike.
        chunk = max(spec.batch_frames, config.chunk_frames // spec.batch_frames * spec.batch_frames)
        bounds = [(a, min(a + chunk, stop)) for a in range(start, stop, chunk)]
        fingerprint = _fingerprint(config)
        partial = state_dir / "localizations.partial.csv"
        loaded = RunState.load(state_dir) if resume else None
        if loaded is not None and loaded[0].fingerprint != fingerprint:
            raise UserError(f"--resume: the configuration differs from the interrupted run in "
                            f"{output}; run without --resume to start again")
        if loaded is not None:
            state, superres, widefield = loaded
            with open(partial, "r+b") as fh:  # drop rows of a chunk whose state was never saved
                fh.truncate(state.csv_bytes)
            log.info(f"resuming after {state.chunks_done} of {len(bounds)} chunks "
                     f"({state.n_locs} localizations)")
        else:
            state = RunState(fingerprint)
            superres = np.zeros((rows * L, cols * L), np.float64)
            widefield = np.zeros((rows, cols), np.float64)
            partial.unlink(missing_ok=True)
        writer = ThunderstormCsvWriter(output / "localizations_raw.csv", partial_path=partial,
                                       resume=loaded is not None)
        done_frames = sum(b - a for a, b in bounds[:state.chunks_done])
        bar = tqdm(total=stop - start, initial=done_frames, unit="frame",
                   desc=f"localize ({engine.name})", disable=quiet, leave=False)
        t_loc = time.perf_counter()
        todo = bounds[state.chunks_done:]
        if config.scheduler:
            from stormfold.parallel import run_chunks_distributed

            results = run_chunks_distributed(config.scheduler, todo, movie, spec, device, camera, px)
            log.info(f"running {len(todo)} chunks on the Dask cluster at {config.scheduler}")
        else:
            from stormfold.localize.runner import localize_range

            results = (localize_range(movie, engine, camera, px, a, b, spec.batch_frames)
                       for a, b in todo)
        for result in results:
            writer.append(result.locs)
            superres += result.superres
            widefield += result.widefield
            state.chunks_done += 1
            state.n_locs += len(result.locs)
            state.engine_s += result.engine_s
            state.csv_bytes = os.path.getsize(partial)
            state.save(state_dir, superres, widefield)
            bar.update(result.n_frames)
            bar.set_postfix(locs=state.n_locs)
            log.debug(f"chunk {state.chunks_done}/{len(bounds)} done")
        bar.close()
        writer.close()
        loc_seconds = time.perf_counter() - t_loc
        raw = read_thunderstorm_csv(output / "localizations_raw.csv")
        log.info(f"{len(raw)} localizations in {stop - start} frames "
                 f"({(stop - start - done_frames) / max(loc_seconds, 1e-9):.1f} frames/s)")

        from stormfold.postprocess.chain import run_chain

        pp = run_chain(raw, config.postprocess, pixel_size_nm=px,
                       fov_nm=(cols * px, rows * px), n_frames=stop, progress=not quiet)
        locs = pp.table
        for name, text in pp.log.items():
            log.info(f"post-processing {name}: {text}")
        evaluation = None
        truth_in_frame = truth
        if true_drift is not None:
            truth_in_frame, true_drift, residual_nm = truth_in_corrected_frame(
                truth, true_drift, pp.outputs["drift"])
            pp.log["drift vs truth"] = (f"residual {residual_nm:.1f} nm RMS against "
                                        f"{Path(config.evaluation.truth_drift).name}")
            log.info(f"post-processing drift vs truth: {pp.log['drift vs truth']}")
        if truth is not None:
            from stormfold.evaluate import evaluate, format_table

            evaluation = evaluate(truth_in_frame, locs, tolerances_nm=config.evaluation.tolerances_nm,
                                  method=config.evaluation.matching,
                                  border_nm=config.evaluation.border_nm, fov_nm=(cols * px, rows * px))
            log.info("evaluation against " + config.evaluation.truth + "\n" + format_table(evaluation))
        meta = _write_outputs(output, config, movie, engine, camera, camera_source, px, start, stop,
                              locs, raw, superres, widefield, pp, evaluation,
                              seconds=time.perf_counter() - t0, loc_seconds=loc_seconds)
        result = RunResult(output, locs, raw, superres.astype(np.float32), widefield.astype(np.float32),
                           px, L, meta, postprocess=pp.outputs, evaluation=evaluation,
                           truth=truth_in_frame, true_drift=true_drift,
                           label=label or engine.name)
        if config.report:
            from stormfold.report import write_report

            path = write_report(output / "report.html", [result])
            log.info(f"report: {path}")
        for name in ("state.json", "sums.npz"):
            (state_dir / name).unlink(missing_ok=True)
        state_dir.rmdir()
        return result
    finally:
        movie.close()


def _write_outputs(output, config, movie, engine, camera, camera_source, px, start, stop, locs, raw,
                   superres, widefield, pp, evaluation, seconds, loc_seconds) -> dict:
    from stormfold.io.picasso import write_picasso_hdf5
    from stormfold.io.thunderstorm import write_thunderstorm_csv
    from stormfold.io.tiff import write_tiff

    rows, cols = movie.shape
    L = engine.upsampling
    write_thunderstorm_csv(output / "localizations.csv", locs)
    write_picasso_hdf5(output / "localizations.hdf5", locs, pixel_size_nm=px, width_px=cols,
                       height_px=rows, n_frames=stop)
    write_tiff(output / "superres.tif", superres.astype(np.float32), pixel_size_nm=px / L,
               metadata={"kind": "superres", "engine": engine.name, "upsampling": L})
    write_tiff(output / "widefield.tif", widefield.astype(np.float32), pixel_size_nm=px,
               metadata={"kind": "widefield sum of raw frames (ADU)"})
    outputs = {"localizations": "localizations.csv", "localizations_hdf5": "localizations.hdf5",
               "localizations_raw": "localizations_raw.csv", "superres": "superres.tif",
               "widefield": "widefield.tif", "log": LOG_FILE}
    outputs.update(pp.write(output))
    if evaluation is not None:
        with atomic_path(output / "evaluation.csv") as tmp:
            evaluation.to_csv(tmp, index=False)
        outputs["evaluation"] = "evaluation.csv"
    if config.report:
        outputs["report"] = "report.html"
    n = stop - start
    meta = {
        "stormfold_version": __version__,
        "config": to_dict(config),
        "movie": {"paths": config.movies, "n_frames": movie.n_frames, "frames": [start, stop],
                  "frame_shape": [rows, cols], "pixel_size_nm": px},
        "camera": to_dict(camera), "camera_source": camera_source,
        "engine": engine.describe(),
        "n_localizations": {"raw": int(len(raw)), "final": int(len(locs))},
        "postprocess": pp.log,
        "evaluation": None if evaluation is None else evaluation.to_dict(orient="records"),
        "timing": {"seconds": round(seconds, 3), "localize_s": round(loc_seconds, 3),
                   "frames_per_s": round(n / max(loc_seconds, 1e-9), 3)},
        "outputs": outputs,
    }
    write_text(output / "run.yaml", dump_yaml(meta))
    return meta
