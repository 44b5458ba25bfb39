"""What an interrupted ``stormfold run`` leaves behind to be resumed, and its fingerprint."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stormfold.config import to_dict
from stormfold.io.atomic import atomic_path, write_text
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

    def save(self, folder: Path, superres: np.ndarray, widefield: np.ndarray) -> None:
        # Sums first, then the state that points at them: a crash between leaves the old state.
        with atomic_path(folder / "sums.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, superres=superres, widefield=widefield)
        write_text(folder / "state.json", json.dumps(self.__dict__))

    @classmethod
    def load(cls, folder: Path) -> tuple["RunState", np.ndarray, np.ndarray] | None:
        """The saved state, or None when there is none (or it cannot be read)."""
        if not (folder / "state.json").is_file() or not (folder / "sums.npz").is_file():
            return None
        try:
            state = cls(**json.loads((folder / "state.json").read_text()))
            with np.load(folder / "sums.npz", allow_pickle=False) as sums:
                return state, sums["superres"], sums["widefield"]
        except (OSError, ValueError, TypeError, KeyError):
            return None


#: Keys of a run configuration that do not change the localizations: a run interrupted (or
#: failed after localizing) resumes with other values of these.
NOT_STREAMED = ("scheduler", "report", "output", "postprocess", "evaluation")


def config_fingerprint(config: RunConfig) -> str:
    """What an interrupted run and its ``--resume`` must share: everything that changes the
    localizations (movie, frames, camera, engine, chunks), not the post-processing, the
    evaluation or the report."""
    relevant = {k: v for k, v in to_dict(config).items() if k not in NOT_STREAMED}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_parameters(config: RunConfig) -> dict:
    """The parameters whose fingerprint the output's ``manifest.json`` records."""
    return {k: v for k, v in to_dict(config).items() if k not in ("scheduler", "output")}
