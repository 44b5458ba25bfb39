"""What an interrupted ``stormfold run`` leaves behind to be resumed, and its fingerprint."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from stormfold.config import to_dict
from stormfold.errors import UserError
from stormfold.io.atomic import atomic_path, write_text
from stormfold.modelfile import resolve_model_dir
from stormfold.pipeline.config import RunConfig

STATE_DIR = ".stormfold-run"


@dataclass
class RunState:
    """What a resumed run needs: chunks done, CSV length, image sums."""

    fingerprint: str
    chunks_done: int = 0
    csv_bytes: int = 0
    n_locs: int = 0
    engine_s: float = 0.0
    #: The run's warnings so far: a resumed run's run.yaml and report keep those of the
    #: chunks done before the interruption (review 22: they were lost).
    warnings: list = field(default_factory=list)

    def save(self, folder: Path, superres: np.ndarray, widefield: np.ndarray) -> None:
        """The sums into a file of their own chunk count, then the state that names it, then
        the older sums: a kill at any point leaves a state whose sums match its chunks (a
        state always points at sums of the same chunks, never at newer ones)."""
        with atomic_path(sums_path(folder, self.chunks_done)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, superres=superres, widefield=widefield)
        write_text(folder / "state.json", json.dumps(self.__dict__))
        for old in folder.glob(SUMS_GLOB):
            if old != sums_path(folder, self.chunks_done):
                old.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: Path) -> tuple["RunState", np.ndarray, np.ndarray] | None:
        """The saved state, or None when there is none (or it cannot be read)."""
        try:
            state = cls(**json.loads((folder / "state.json").read_text()))
            with np.load(sums_path(folder, state.chunks_done), allow_pickle=False) as sums:
                return state, sums["superres"], sums["widefield"]
        except (OSError, ValueError, TypeError, KeyError):
            return None


#: The image sums after N chunks: ``sums.N.npz``.
SUMS_GLOB = "sums.*.npz"


def sums_path(folder: Path, chunks_done: int) -> Path:
    """Where the image sums after ``chunks_done`` chunks are kept."""
    return folder / f"sums.{int(chunks_done)}.npz"


#: Keys of a run configuration that do not change the localizations: a run interrupted (or
#: failed after localizing) resumes with other values of these.
NOT_STREAMED = ("scheduler", "report", "output", "postprocess", "evaluation")


def _file_identity(path: Path) -> list:
    """(path, size, modification time) of a file, of every entry of a folder, or ``[]`` for
    what does not exist (reported by the run itself)."""
    try:
        if path.is_dir():
            entries = [(e.path, e.stat()) for e in os.scandir(path) if e.is_file()]
        else:
            entries = [(str(path), path.stat())]
    except OSError:
        return []
    return sorted([name, info.st_size, info.st_mtime_ns] for name, info in entries)


def input_files(config: RunConfig) -> list[Path]:
    """The files a run's localizations are made from, besides its configuration: the movie
    (and a Picasso sidecar), the camera file, the model folder or the training config."""
    movies = [config.movie] if isinstance(config.movie, str) else list(config.movie)
    files = [Path(m) for m in movies if m]
    files += [f.with_suffix(".yaml") for f in files if f.suffix.lower() == ".raw"]
    if config.camera.file:
        files.append(Path(config.camera.file))
    if config.engine.train is not None and config.engine.train.config:
        files.append(Path(config.engine.train.config))
    model = config.engine.model
    if model and config.engine.train is None:
        try:
            files.append(resolve_model_dir(model))
        except UserError:  # an unknown model is the run's own error to report
            pass
    return files


def config_fingerprint(config: RunConfig) -> str:
    """What an interrupted run and its ``--resume`` must share: everything that changes the
    localizations (movie, frames, camera, engine, chunks), not the post-processing, the
    evaluation or the report. The movie, camera file and model enter by size and
    modification time: a resume that reads other data under the same names would mix two
    runs' localizations in one table."""
    relevant = {k: v for k, v in to_dict(config).items() if k not in NOT_STREAMED}
    relevant["input_files"] = [_file_identity(f) for f in input_files(config)]
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_parameters(config: RunConfig) -> dict:
    """The parameters whose fingerprint the output's ``manifest.json`` records."""
    return {k: v for k, v in to_dict(config).items() if k not in ("scheduler", "output")}
