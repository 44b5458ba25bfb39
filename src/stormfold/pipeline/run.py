"""The main job: one configuration from movie to report (``stormfold run CONFIG.yaml``).

:func:`run` is three steps:

1. :func:`plan` — check every input, open the movie, load the engine (or check that the
   requested one can be trained), read the truth, check the frame range against the movie
   and the post-processing (drift bins, FRC blocks), the camera against the movie
   (baseline), the outputs against the inputs (no input is replaced) and the free disk
   space, and a ``--resume`` against the interrupted run: everything that can fail on a
   user mistake fails here, before anything is written;
2. :func:`stream` — localize the movie in chunks of frames; after each chunk its
   localizations are appended to a partial CSV and the running image sums and the chunk
   counter are saved in the output's state folder (``.stormfold-run/``), so a crash loses
   at most the chunk in flight and ``--resume`` continues where the run stopped. Chunks run
   in this process or, with ``scheduler``, on a Dask cluster whose workers each load the
   model once;
3. :func:`finish` — the post-processing chain on the whole table, the evaluation, the
   output files and the HTML report, all written into a hidden staging folder and moved
   into the output folder at the end with ``manifest.json`` last
   (:class:`stormfold.io.outputs.OutputFolder`). An old complete output is replaced only
   then; until then it stays as it was.

The state folder survives an interrupt or an error after localizing (the message says so):
``--resume`` continues it, also with another ``postprocess`` or ``evaluation`` section.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stormfold import __version__
from stormfold.config import dump_yaml, to_dict
from stormfold.errors import UserError
from stormfold.io.atomic import atomic_path, write_text
from stormfold.io.manifest import link_or_copy
from stormfold.io.outputs import OutputFolder
from stormfold.physics.geometry import FrameGeometry
from stormfold.pipeline.config import EngineSpec, RunConfig, check_inputs
from stormfold.pipeline.outputs import (MODEL_DIR, check_camera, check_state_dir, output_set,
                                        resumable_state)
from stormfold.pipeline.state import (STATE_DIR, SUMS_GLOB, RunState, config_fingerprint,
                                      run_parameters)
from stormfold.pipeline.truth import truth_in_corrected_frame

LOG_FILE = "run.log"


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
    #: The post-processed table rendered on a fine grid (what the report shows), its
    #: upsampling of the camera grid and how it was rendered.
    image: np.ndarray | None = None
    image_upsampling: int = 1
    image_title: str = ""


@dataclass
class RunPlan:
    """A checked run: open movie, engine (None until trained), truth, frame range."""

    config: RunConfig
    output: Path
    movie: Any
    device: Any
    spec: EngineSpec
    engine: Any
    geometry: FrameGeometry
    truth: pd.DataFrame | None
    true_drift: pd.DataFrame | None
    start: int
    stop: int
    camera: Any = None
    camera_source: str = ""
    camera_assumed: tuple = ()
    log: logging.Logger | None = None
    warnings: list = field(default_factory=list)

    def warn(self, text: str) -> None:
        """One warning line on stderr (also with ``--quiet``), in run.log, run.yaml and the
        report."""
        if text not in self.warnings:
            self.warnings.append(text)
            warnings.warn(text, UserWarning, stacklevel=2)
            if self.log is not None:
                self.log.warning(text)
    out: OutputFolder | None = None
    #: What ``--resume`` continues: (RunState, superres sums, widefield sums), or None.
    resumed: tuple | None = None
    command_line: list | None = None

    @property
    def state_dir(self) -> Path:
        return self.output / STATE_DIR


@dataclass
class Streamed:
    """What :func:`stream` produced."""

    raw: pd.DataFrame
    superres: np.ndarray
    widefield: np.ndarray
    seconds: float


def _shown_as(old: str, new: str):
    """Console filter: messages name ``new`` where they would name ``old``."""
    def rewrite(record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if old in text:
            record.msg, record.args = text.replace(old, new), ()
        return True
    return rewrite


def _logger(output: Path, path: Path, quiet: bool,
            shown_as: tuple[str, str] | None = None) -> logging.Logger:
    log = logging.getLogger(f"stormfold.run.{output}")
    _close_log(log)
    log.setLevel(logging.INFO)
    log.propagate = False
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    if not quiet:
        sh = logging.StreamHandler()
        sh.setFormatter(logging.Formatter("%(message)s"))
        # Warnings reach the console once, through the warnings module (RunPlan.warn).
        sh.addFilter(lambda record: record.levelno < logging.WARNING)
        if shown_as is not None:
            sh.addFilter(_shown_as(*shown_as))
        log.addHandler(sh)
    return log


def _close_log(log: logging.Logger | None) -> None:
    for handler in list(log.handlers) if log is not None else []:
        handler.close()
        log.removeHandler(handler)


# --------------------------------------------------------------------------- 1. plan
def plan(config: RunConfig, resume: bool = False, protect: tuple = ()) -> RunPlan:
    """Check everything and open the movie (the caller closes ``plan.movie``).

    ``protect``: more inputs no output may replace (the configuration file).
    """
    from stormfold.device import get_device
    from stormfold.io.frame_range import check_frame_range
    from stormfold.io.movie import open_movies
    from stormfold.localize.registry import load_engine
    from stormfold.localize.runner import resolve_geometry
    from stormfold.postprocess.chain import check_chain_frames

    check_inputs(config)
    device = get_device(None if config.engine.device == "auto" else config.engine.device)
    output = Path(config.output)
    if output.exists() and not output.is_dir():
        raise UserError(f"output: {output} exists and is not a folder")
    movie = open_movies(config.movies, pixel_size_nm=config.pixel_size_nm,
                        **config.movie_options())
    try:
        spec = config.engine
        engine = None
        if spec.train is None:
            engine = load_engine(model=spec.model, engine=spec.engine, device=device,
                                 threshold=spec.threshold, options=spec.options)
        try:
            geometry = resolve_geometry(movie, engine)
        except UserError as exc:  # run has no --pixel-size: its configuration has the key
            raise UserError(str(exc).replace(
                "pass --pixel-size NM", "set pixel_size_nm: NM in the run configuration (or "
                "--set pixel_size_nm=NM)")) from None
        truth = true_drift = None
        if config.evaluation.truth is not None:
            from stormfold.evaluate.report import check_truth_movie
            from stormfold.io.tables import read_table

            truth = read_table(config.evaluation.truth)
            check_truth_movie(config.evaluation.truth,
                              {"pixel_size_nm": geometry.pixel_size_nm, "height_px": geometry.rows,
                               "width_px": geometry.cols, "movie_frames": movie.n_frames},
                              "the movie")
        if config.evaluation.truth_drift is not None:
            from stormfold.postprocess.drift import read_drift_csv

            true_drift = read_drift_csv(config.evaluation.truth_drift)
        first, stop = config.frames or (0, None)
        start, stop = check_frame_range(first, stop, movie.n_frames, "frames")
        chain_files = check_chain_frames(config.postprocess, stop - start,
                                         f"frames {start}:{stop}")
        p = RunPlan(config, output, movie, device, spec, engine, geometry, truth, true_drift,
                    start, stop)
        if engine is not None:
            check_camera(p)
        p.out = output_set(config, geometry, stop - start, chain_files, protect)
        check_state_dir(p.state_dir)
        p.resumed = resumable_state(p.state_dir, config) if resume else None
    except BaseException:
        movie.close()
        raise
    return p


def _train_engine(p: RunPlan, quiet: bool) -> None:
    """Train the model the configuration asks for (skipped when a finished one is there)."""
    from stormfold.localize.registry import load_engine, train_model
    from stormfold.localize.runner import resolve_geometry
    from stormfold.modelfile import META

    from stormfold.io.manifest import is_complete

    train = p.spec.train
    model_dir = p.output / MODEL_DIR
    if is_complete(model_dir) and (model_dir / META).is_file():
        p.log.info(f"using the model trained earlier in {model_dir}")
    else:
        model_dir = p.state_dir / MODEL_DIR  # resumable until the run's outputs are complete
        p.log.info(f"training a {train.engine} model (kept in {p.output / MODEL_DIR})")
        train_model(train.engine, model_dir, preset=train.preset, config_file=train.config,
                    overrides=train.overrides, seed=train.seed, device=p.device,
                    progress=not quiet)
    p.spec = EngineSpec(model=str(model_dir), threshold=p.spec.threshold,
                        options=p.spec.options, device=p.spec.device,
                        batch_frames=p.spec.batch_frames)
    p.engine = load_engine(model=p.spec.model, device=p.device, threshold=p.spec.threshold,
                           options=p.spec.options)
    p.geometry = resolve_geometry(p.movie, p.engine)
    check_camera(p)


def _prepare(p: RunPlan, quiet: bool, shown_as: tuple[str, str] | None = None) -> None:
    """From here on the run writes: output folder and its staging folder, the state folder
    with the log, the engine (trained if asked)."""
    p.out.open()
    p.state_dir.mkdir(exist_ok=True)
    if p.resumed is None:  # a new run: an older run's state is stale
        for name in ("state.json", "localizations.partial.csv", LOG_FILE):
            (p.state_dir / name).unlink(missing_ok=True)
        for sums in p.state_dir.glob(SUMS_GLOB):
            sums.unlink()
    p.log = _logger(p.output, p.state_dir / LOG_FILE, quiet, shown_as)
    for text in p.warnings:  # found by the checks, before the log existed
        p.log.warning(text)
    if p.engine is None:
        _train_engine(p, quiet)
    g = p.geometry
    p.log.info(f"movie {', '.join(p.config.movies)}: {p.movie.n_frames} frames of "
               f"{g.rows}×{g.cols} px, {g.pixel_size_nm:g} nm; camera from {p.camera_source}")
    p.log.info(f"engine {p.engine.name} ({p.spec.model or p.spec.engine or 'trained'}), "
               f"device {p.device}, frames {p.start}:{p.stop}")


# --------------------------------------------------------------------------- 2. stream
def _chunk_frames(p: RunPlan) -> int:
    """Frames per chunk as run: ``chunk_frames`` rounded down to whole batches (at least
    one), so local and distributed runs compute alike."""
    batch = p.spec.batch_frames
    return max(batch, p.config.chunk_frames // batch * batch)


def _chunks(p: RunPlan) -> list[tuple[int, int]]:
    chunk = _chunk_frames(p)
    return [(a, min(a + chunk, p.stop)) for a in range(p.start, p.stop, chunk)]


def stream(p: RunPlan, resume: bool, quiet: bool) -> Streamed:
    """Localize the frame range chunk by chunk, saving the state after each chunk."""
    from tqdm import tqdm

    from stormfold.io.thunderstorm import ThunderstormCsvWriter, read_thunderstorm_csv

    state_dir = p.state_dir
    bounds, chunk = _chunks(p), _chunk_frames(p)
    if chunk != p.config.chunk_frames:
        p.log.info(f"chunk_frames {p.config.chunk_frames} runs as {chunk} (whole "
                   f"batches of {p.spec.batch_frames} frames)")
    partial = state_dir / "localizations.partial.csv"
    loaded = p.resumed
    if resume and loaded is None:
        p.log.info(f"no interrupted run in {p.output} to resume: starting from frame {p.start}")
    if loaded is not None:
        state, superres, widefield = loaded
        with open(partial, "r+b") as fh:  # drop rows of a chunk whose state was never saved
            fh.truncate(state.csv_bytes)
        p.log.info(f"resuming after {state.chunks_done} of {len(bounds)} chunks "
                   f"({state.n_locs} localizations)")
        for text in state.warnings:
            p.warn(text)
    else:
        state = RunState(config_fingerprint(p.config))
        superres = np.zeros(p.geometry.fine_shape, np.float64)
        widefield = np.zeros(p.geometry.shape, np.float64)
        partial.unlink(missing_ok=True)
    writer = ThunderstormCsvWriter(partial, partial_path=partial, resume=loaded is not None)
    done_frames = sum(b - a for a, b in bounds[:state.chunks_done])
    bar = tqdm(total=p.stop - p.start, initial=done_frames, unit="frame",
               desc=f"localize ({p.engine.name})", disable=quiet, leave=False)
    # The engine's per-movie checks warn through the run: also run.log, run.yaml, report.
    p.engine.start_movie(p.warn)
    _decide_on_sample(p)
    t0 = time.perf_counter()
    for result in _chunk_results(p, bounds[state.chunks_done:]):
        writer.append(result.locs)
        superres += result.superres
        widefield += result.widefield
        state.chunks_done += 1
        state.n_locs += len(result.locs)
        state.engine_s += result.engine_s
        state.csv_bytes = os.path.getsize(partial)
        state.warnings = list(p.warnings)
        state.save(state_dir, superres, widefield)
        bar.update(result.n_frames)
        bar.set_postfix(locs=state.n_locs)
        p.log.debug(f"chunk {state.chunks_done}/{len(bounds)} done")
    bar.close()
    writer.abort()  # the partial file stays the state's until the outputs are complete
    raw_path = p.out.path("localizations_raw.csv")
    link_or_copy(partial, raw_path)
    seconds = time.perf_counter() - t0
    raw = read_thunderstorm_csv(raw_path)
    p.log.info(f"{len(raw)} localizations in {p.stop - p.start} frames "
               f"({(p.stop - p.start - done_frames) / max(seconds, 1e-9):.1f} frames/s)")
    return Streamed(raw, superres, widefield, seconds)


def _decide_on_sample(p: RunPlan) -> None:
    """An engine that adapts to the movie (``decide``: gridnet's ``bin: auto``, the unrolled
    solver's ``sigma_nm: auto``, Deep-STORM's ``brightness: match``) decides on frames spread
    over the run's whole frame range (:func:`stormfold.localize.runner.decision_ranges`),
    the same when the run resumes, and the Dask workers are given its choice: every chunk
    is localized alike."""
    from dataclasses import replace

    from stormfold.localize import runner

    pinned = runner.decide_on_sample(p.movie, p.engine, p.camera, p.geometry, p.start, p.stop,
                                     p.spec.batch_frames)
    if pinned:
        p.spec = replace(p.spec, options={**(p.spec.options or {}), **pinned})


def _chunk_results(p: RunPlan, todo: list[tuple[int, int]]):
    """The chunks' results, in order: on the Dask cluster or in this process."""
    if p.config.scheduler:
        from stormfold.parallel import run_chunks_distributed

        p.log.info(f"running {len(todo)} chunks on the Dask cluster at {p.config.scheduler}")
        return run_chunks_distributed(p.config.scheduler, todo, p.movie, p.spec, p.device,
                                      p.camera, p.geometry)
    # Looked up at call time, so tests can interpose a crashing chunk.
    from stormfold.localize import runner

    return (runner.localize_range(p.movie, p.engine, p.camera, p.geometry, a, b,
                                  p.spec.batch_frames) for a, b in todo)


# --------------------------------------------------------------------------- 3. finish
def finish(p: RunPlan, s: Streamed, quiet: bool, label: str, t0: float) -> RunResult:
    """Post-process, evaluate, write the outputs and the report; clear the resume state."""
    from stormfold.postprocess.chain import run_chain

    config = p.config
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        # frame_base 1: a filter's "frame" is that of localizations.csv, the table users read.
        pp = run_chain(s.raw, config.postprocess, geometry=p.geometry, n_frames=p.stop,
                       progress=not quiet, frame_base=1)
    for w in said:  # e.g. a drift estimate the data do not support: into run.yaml and the report
        if issubclass(w.category, UserWarning):
            p.warn(f"post-processing: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    for name, text in pp.log.items():
        p.log.info(f"post-processing {name}: {text}")
    truth, true_drift, evaluation = p.truth, p.true_drift, None
    if true_drift is not None:
        truth, true_drift, residual_nm = truth_in_corrected_frame(p.truth, true_drift,
                                                                  pp.outputs["drift"])
        pp.log["drift vs truth"] = (f"residual {residual_nm:.1f} nm RMS against "
                                    f"{Path(config.evaluation.truth_drift).name}")
        p.log.info(f"post-processing drift vs truth: {pp.log['drift vs truth']}")
    if p.truth is not None:
        from stormfold.evaluate import evaluate, format_table
        from stormfold.evaluate.metrics import empty_truth_warning, frames_warning

        ev = config.evaluation
        frames = (p.start, p.stop)
        note = frames_warning(truth, frames, "the run localized")
        if note:
            p.warn(f"evaluation: {note}")
        evaluation = evaluate(truth, pp.table, tolerances_nm=ev.tolerances_nm, method=ev.matching,
                              border_nm=ev.border_nm, fov_nm=p.geometry.fov_nm, frames=frames)
        note = empty_truth_warning(evaluation)
        if note:
            p.warn(f"evaluation: {note}")
        p.log.info(f"evaluation against {ev.truth}, frames {p.start}:{p.stop}\n"
                   + format_table(evaluation))
    image, factor, image_title = final_image(pp, p.geometry)
    meta = write_outputs(p, s, pp, evaluation, seconds=time.perf_counter() - t0)
    result = RunResult(p.output, pp.table, s.raw, s.superres.astype(np.float32),
                       s.widefield.astype(np.float32), p.geometry.pixel_size_nm,
                       p.geometry.upsampling, meta, postprocess=pp.outputs,
                       evaluation=evaluation, truth=truth, true_drift=true_drift,
                       label=label or p.engine.name, image=image, image_upsampling=factor,
                       image_title=image_title)
    if config.report:
        from stormfold.report import write_report

        write_report(p.out.path("report.html"), [result])
        p.log.info(f"report: {p.output / 'report.html'}")
    _commit(p)
    return result


def final_image(pp: Any, geometry: FrameGeometry) -> tuple[np.ndarray, int, str]:
    """The post-processed table as an image on a grid ``factor`` times finer than the
    camera's, for the report: the chain's ``render`` step when its pixel divides the camera
    pixel, else a Gaussian rendering (σ one fine pixel) on the engine's fine grid.

    Returns ``(image, factor, title)``.
    """
    from stormfold.postprocess.render import render

    px = geometry.pixel_size_nm
    step = pp.params.get("render")
    if step is not None and "render" in pp.outputs:
        factor = px / step.pixel_nm
        if factor >= 1 and abs(factor - round(factor)) < 1e-6:
            return (np.asarray(pp.outputs["render"], np.float32), int(round(factor)),
                    f"render step ({step.method}, {step.pixel_nm:g} nm pixels)")
    factor = geometry.upsampling
    fine = px / factor
    image = render(pp.table, fine, "gaussian", fine, geometry.fov_nm)
    return image, factor, f"Gaussian rendering, σ {fine:g} nm, {fine:g} nm pixels"


def _commit(p: RunPlan) -> None:
    """Move the staged outputs (with the log and a trained model) in; drop the state."""
    trained = p.state_dir / MODEL_DIR
    source = trained if (trained / "model.yaml").is_file() else p.output / MODEL_DIR
    if p.config.engine.train is not None:
        link_or_copy(source, p.out.path(MODEL_DIR))
    _close_log(p.log)
    # A copy, not a link: a later --resume appends to the state's log, which must not
    # change a file of a complete output.
    shutil.copyfile(p.state_dir / LOG_FILE, p.out.path(LOG_FILE))
    p.out.commit(run_parameters(p.config), p.command_line)
    shutil.rmtree(p.state_dir, ignore_errors=True)


def write_outputs(p: RunPlan, s: Streamed, pp: Any, evaluation: pd.DataFrame | None,
                  seconds: float) -> dict:
    """The tables, images, evaluation and ``run.yaml``; returns the run record."""
    from stormfold.io.picasso import write_picasso_hdf5
    from stormfold.io.thunderstorm import write_thunderstorm_csv
    from stormfold.localize.runner import write_images

    out, g, config = p.out.open(), p.geometry, p.config
    write_thunderstorm_csv(out / "localizations.csv", pp.table)
    write_picasso_hdf5(out / "localizations.hdf5", pp.table, pixel_size_nm=g.pixel_size_nm,
                       width_px=g.cols, height_px=g.rows, n_frames=p.stop,
                       estimated=p.engine.estimated_columns())
    write_images(out / "superres.tif", out / "widefield.tif", s.superres, s.widefield, g,
                 p.engine.name)
    outputs = {"localizations": "localizations.csv", "localizations_hdf5": "localizations.hdf5",
               "localizations_raw": "localizations_raw.csv", "superres": "superres.tif",
               "widefield": "widefield.tif", "log": LOG_FILE}
    outputs.update(pp.write(out))
    if config.engine.train is not None:
        outputs["model"] = MODEL_DIR
    if evaluation is not None:
        with atomic_path(out / "evaluation.csv") as tmp:
            evaluation.to_csv(tmp, index=False)
        outputs["evaluation"] = "evaluation.csv"
    if config.report:
        outputs["report"] = "report.html"
    meta = {
        "stormfold_version": __version__,
        "config": to_dict(config),
        # What ran: config.chunk_frames rounded to whole batches (the config stays as given,
        # so that its fingerprint is the manifest's).
        "chunks": {"frames_per_chunk": _chunk_frames(p), "count": len(_chunks(p)),
                   "batch_frames": p.spec.batch_frames},
        "movie": {"paths": config.movies, "n_frames": p.movie.n_frames, "frames": [p.start, p.stop],
                  "frame_shape": list(g.shape), "pixel_size_nm": g.pixel_size_nm},
        "camera": to_dict(p.camera), "camera_source": p.camera_source,
        "camera_assumed": list(p.camera_assumed),
        "engine": p.engine.describe(),
        "columns_estimated": p.engine.estimated_columns(),
        "nan_repairs": p.movie.repairs(),
        "n_localizations": {"raw": int(len(s.raw)), "final": int(len(pp.table))},
        "postprocess": pp.log,
        "postprocess_results": pp.record(),
        "evaluation": None if evaluation is None else evaluation.to_dict(orient="records"),
        "evaluation_frames": None if evaluation is None else [p.start, p.stop],
        "warnings": list(p.warnings),
        "timing": {"seconds": round(seconds, 3), "localize_s": round(s.seconds, 3),
                   "frames_per_s": round((p.stop - p.start) / max(s.seconds, 1e-9), 3)},
        "outputs": outputs,
    }
    write_text(out / "run.yaml", dump_yaml(meta))
    return meta


# --------------------------------------------------------------------------- the run
def run(config: RunConfig, resume: bool = False, quiet: bool = False,
        label: str = "", protect: tuple = (), command_line: list | None = None,
        shown_as: tuple[str, str] | None = None) -> RunResult:
    """Run the whole job of ``config``: :func:`plan` → :func:`stream` → :func:`finish`.

    Parameters
    ----------
    config : RunConfig
    resume : bool
        Continue an interrupted run in the same output folder (same configuration except
        ``postprocess``, ``evaluation``, ``report``).
    quiet : bool
        No progress bar and no console log (the log file is still written).
    label : str
        Name of the run in the report (default: the engine's name).
    protect : tuple of paths
        More inputs that no output may replace (e.g. the configuration file).
    command_line : list of str, optional
        Recorded in ``manifest.json``.
    shown_as : (str, str), optional
        (old, new): console messages name ``new`` instead of ``old`` (a caller that runs
        this in a staging folder of its own shows the final paths).

    Raises
    ------
    UserError
        A user mistake, before anything is written (or, for what only the data can tell,
        after localizing: the localizations are then kept for ``--resume``).
    """
    p = plan(config, resume, protect)
    p.command_line = command_line
    try:
        with p.out:
            try:
                t0 = time.perf_counter()
                _prepare(p, quiet, shown_as)
                streamed = stream(p, resume, quiet)
                return finish(p, streamed, quiet, label, t0)
            except BaseException as exc:
                _keep_or_drop_state(p, exc)
                raise
    finally:
        _close_log(p.log)
        p.movie.close()


def _keep_or_drop_state(p: RunPlan, exc: BaseException) -> None:
    """After a failure: keep the state when chunks were saved (and say so), else remove it
    so that nothing of this run is left."""
    _close_log(p.log)
    state = RunState.load(p.state_dir)
    model = p.state_dir / MODEL_DIR
    if state is None or state[0].chunks_done == 0:
        if not model.exists():
            shutil.rmtree(p.state_dir, ignore_errors=True)
        return
    done = state[0].chunks_done
    note = (f"{done} of {len(_chunks(p))} chunks of localizations are kept in "
            f"{p.state_dir}: run again with --resume to continue")
    if isinstance(exc, UserError):
        raise UserError(f"{exc} ({note})") from None
    if isinstance(exc, KeyboardInterrupt):
        exc.stormfold_note = note
