"""What ``stormfold run`` checks before it writes: the output set (no input replaced, disk
space), the camera against the movie, and what a ``--resume`` may continue."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from stormfold.errors import UserError
from stormfold.io.outputs import OutputFolder
from stormfold.physics.geometry import FrameGeometry
from stormfold.pipeline.config import RunConfig
from stormfold.pipeline.state import RunState, config_fingerprint

#: The files every run writes (post-processing, evaluation, report and model add theirs).
RUN_FILES = ("localizations.csv", "localizations.hdf5", "localizations_raw.csv",
             "superres.tif", "widefield.tif", "run.yaml", "run.log")
#: Where a model trained by the run goes (``engine.train``).
MODEL_DIR = "model"


def output_set(config: RunConfig, geometry: FrameGeometry, n_frames: int,
               chain_files: list[Path], protect: tuple = ()) -> OutputFolder:
    """The run's output folder as a checked :class:`~stormfold.io.outputs.OutputFolder`.

    Every file the run reads is protected: the movies, the truth and its drift, the camera
    file, the model, the training configuration and ``protect`` (the configuration file).
    """
    from stormfold.localize.runner import expected_bytes

    names = [*RUN_FILES, *(str(p) for p in chain_files)]
    if config.evaluation.truth is not None:
        names.append("evaluation.csv")
    if config.report:
        names.append("report.html")
    subfolders = [MODEL_DIR] if config.engine.train is not None else []
    model = config.engine.model
    inputs: list[Any] = [*config.movies, config.evaluation.truth, config.evaluation.truth_drift,
                         config.camera.file, *protect,
                         None if model is None or model.startswith("builtin:") else model,
                         None if config.engine.train is None else config.engine.train.config]
    # tables: raw, final and Picasso; the report embeds a few images (≈ 1 MB).
    size = expected_bytes(geometry, n_frames, tables=3) + 1e6
    return OutputFolder(config.output, "run", names + subfolders, inputs, size,
                        subfolders).check()


def check_camera(p: Any) -> None:
    """Resolve the run's camera and check it against the movie (baseline) — before any
    work when the engine is known, else right after it is trained."""
    from stormfold.localize.camera import check_camera_on_movie, choose_camera

    choice = choose_camera(p.config.camera.overrides(), p.movie, p.engine)
    p.camera, p.camera_source, p.camera_assumed = choice.camera, choice.source, choice.assumed
    # The engine's record (run.yaml) names the noise model it localizes with, also when
    # the chunks run on workers with engines of their own (Dask) or none remain (resume).
    p.engine.set_camera(p.camera)
    if choice.warning:
        p.warn(choice.warning)
    check_camera_on_movie(p.camera, p.camera_source, p.movie, warn=p.warn,
                          frames=(p.start, p.stop))


def resumable_state(state_dir: Path, config: RunConfig) -> tuple | None:
    """What ``--resume`` continues: (state, superres sums, widefield sums), or None when
    there is nothing to continue (no state).

    Raises
    ------
    UserError
        The interrupted run localized with another configuration (movie, frames, camera,
        engine or chunks), or its state is damaged or inconsistent (unreadable state.json,
        missing image sums, a partial table missing, short or cut mid-row).
    """
    if not (state_dir / "state.json").exists():
        return None
    loaded = RunState.load(state_dir)
    damaged = (f"--resume: the interrupted run's state in {state_dir} is damaged or "
               f"inconsistent ({{}}); run without --resume to start again")
    if loaded is None:
        # A state is saved after its image sums, so a state without them was edited or
        # damaged: starting from frame 0 in silence would hide it.
        raise UserError(damaged.format("state.json is unreadable, or the image sums of "
                                       "the chunks it counts are missing"))
    if loaded[0].fingerprint != config_fingerprint(config):
        raise UserError(f"--resume: the configuration differs from the interrupted run in "
                        f"{state_dir.parent} (movie, frames, camera, engine or chunks, or the "
                        f"movie, camera or model files changed since; the post-processing "
                        f"and evaluation may change); run without --resume to start again")
    partial = state_dir / "localizations.partial.csv"
    if not partial.is_file() or os.path.getsize(partial) < loaded[0].csv_bytes:
        raise UserError(damaged.format(f"{partial.name} is missing or shorter than the "
                                       f"{loaded[0].csv_bytes} bytes saved"))
    _check_partial(partial, loaded[0].csv_bytes)
    return loaded


def check_state_dir(state_dir: Path) -> None:
    """Refuse (one line) a file where a run keeps its state: it is not ours to remove."""
    if state_dir.exists() and not state_dir.is_dir():
        raise UserError(f"{state_dir} exists and is not a folder: stormfold run keeps an "
                        f"interrupted run's state there; move or remove that file")


def _check_partial(partial: Path, csv_bytes: int) -> None:
    """The saved rows of an interrupted run's table must end on a row boundary and start with
    a text header: a damaged table can never be resumed, so the message says to start again
    rather than to retry (reading only its first line and its last saved byte)."""
    with open(partial, "rb") as fh:
        head = fh.readline(65536)
        fh.seek(max(csv_bytes - 1, 0))
        last = fh.read(1)
    try:
        text_header = head.endswith(b"\n") and bool(head.decode("utf-8"))
    except UnicodeDecodeError:
        text_header = False
    if csv_bytes and (last != b"\n" or not text_header):
        raise UserError(f"--resume: the interrupted run's table {partial} is damaged (its saved "
                        f"rows do not end on a whole line of text); run without --resume to "
                        f"start again")
