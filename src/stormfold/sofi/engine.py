"""Registry loader for ``engine: sofi`` models (``stormfold localize --model``).

A SOFI reconstruction needs the statistics of the *whole* movie (its temporal mean and
cumulant) before anything can be reconstructed, whereas the localization runner hands an
engine independent batches of frames (possibly to parallel workers, in any order) and has
no end-of-movie step. So SOFI models are run by ``stormfold sofi MOVIE --model MODEL_DIR``
(:func:`stormfold.sofi.run.run_sofi`), and this loader refuses with a message saying so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from stormfold.errors import UserError


def load_engine(spec: str | Path, meta: dict, device: Any = None, threshold: float | None = None,
                options: dict | None = None):
    """Refuse: SOFI models reconstruct whole-movie statistics, not batches of frames."""
    raise UserError(f"{spec} is a SOFI model: it reconstructs the statistics of the whole "
                    f"movie, not frame batches (as localize and run do): use `stormfold sofi "
                    f"MOVIE --model {spec} --out OUT_DIR`")
