"""Inputs and outputs of ``stormfold evaluate``: the field of view of a simulation and the JSON report."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from stormfold.errors import UserError

SIMULATION_YAML = "simulation.yaml"


def fov_from_simulation_yaml(path: str | Path) -> tuple[float, float] | None:
    """Field of view (width_nm, height_nm) from a simulator's ``simulation.yaml``.

    Parameters
    ----------
    path : str or Path
        The ``simulation.yaml`` file, with top-level keys ``pixel_size_nm``, ``n_rows``
        and ``n_cols``.

    Returns
    -------
    (float, float) or None
        ``(n_cols · pixel_size_nm, n_rows · pixel_size_nm)`` in nm, or None when the file
        does not exist.

    Raises
    ------
    UserError
        When the file cannot be parsed or lacks one of the keys.
    """
    from stormfold.config import read_yaml_text

    path = Path(path)
    if not path.is_file():
        return None
    doc = read_yaml_text(path)
    if not isinstance(doc, dict):
        raise UserError(f"{path}: expected a mapping of simulation parameters")
    missing = [k for k in ("pixel_size_nm", "n_rows", "n_cols") if k not in doc]
    if missing:
        raise UserError(f"{path}: missing key(s) {', '.join(missing)} needed for the field of view")
    try:
        px, rows, cols = float(doc["pixel_size_nm"]), float(doc["n_rows"]), float(doc["n_cols"])
    except (TypeError, ValueError):
        raise UserError(f"{path}: pixel_size_nm, n_rows and n_cols must be numbers") from None
    if not (px > 0 and rows > 0 and cols > 0):
        raise UserError(f"{path}: pixel_size_nm, n_rows and n_cols must be positive")
    return cols * px, rows * px


def _clean(value: Any) -> Any:
    """JSON-safe scalar: numpy types to Python, NaN and ±inf to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def evaluation_report(metrics: pd.DataFrame, truth_path: str | Path, locs_path: str | Path,
                      tolerances_nm: Sequence[float], method: str, border_nm: float,
                      fov_nm: Sequence[float] | None, frames: Sequence[int] | None = None,
                      frames_source: str = "all", bound: pd.DataFrame | None = None) -> dict:
    """The JSON-ready record of an evaluation.

    Parameters
    ----------
    metrics : pandas.DataFrame
        Output of :func:`stormfold.evaluate.evaluate`.
    truth_path, locs_path : str or Path
        The input files.
    tolerances_nm, method, border_nm, fov_nm
        The parameters used (nm).
    frames, frames_source
        The frames scored (``[first, stop)``, 0-based; None: all) and where that came from.
    bound : pandas.DataFrame, optional
        :func:`stormfold.evaluate.bounds.floor_table` of the emitters scored, written as
        ``"bound"``.

    Returns
    -------
    dict
        ``{"stormfold_version", "truth", "locs", "parameters": {...}, "metrics": [row, ...]}``
        (and ``"bound": [row, ...]``) with NaN written as ``null``.
    """
    from stormfold import __version__

    def records(table: pd.DataFrame) -> list[dict]:
        return [{k: _clean(v) for k, v in row.items()} for row in table.to_dict(orient="records")]

    out = {
        "stormfold_version": __version__,
        "truth": str(Path(truth_path).resolve()),
        "locs": str(Path(locs_path).resolve()),
        "parameters": {
            "tolerances_nm": [float(t) for t in tolerances_nm],
            "matching": method,
            "border_nm": float(border_nm),
            "fov_nm": None if fov_nm is None else [float(v) for v in fov_nm],
            "frames": None if frames is None else [int(v) for v in frames],
            "frames_source": frames_source,
        },
        "metrics": records(metrics),
    }
    if bound is not None:
        out["bound"] = records(bound)
    return out


def report_json(report: dict) -> str:
    """Serialise :func:`evaluation_report`'s dict (strict JSON, no NaN)."""
    return json.dumps(report, indent=2, allow_nan=False) + "\n"
