"""Inputs and outputs of ``stormfold evaluate``: the field of view of a simulation and the JSON report."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from stormfold.errors import UserError

SIMULATION_YAML = "simulation.yaml"


def check_truth_movie(truth: str | Path, movie: dict, what: str) -> None:
    """Refuse a truth simulated for another movie than the localizations'.

    Parameters
    ----------
    truth : path
        The truth table; its ``simulation.yaml`` (next to it) describes its movie.
    movie : dict
        The localizations' movie: ``pixel_size_nm``, ``height_px``, ``width_px``,
        ``n_frames`` (the movie is at least this long) and ``movie_frames`` (its exact
        length), any of them absent when unknown (:func:`stormfold.io.metadata.recorded_geometry`).
    what : str
        Where the localizations' geometry comes from, for the message.

    Raises
    ------
    UserError
        When both are known and the pixel size, the frame size or the number of frames
        differ: frames past the truth's would all count as false positives, and a border
        would be cut from the wrong field of view.
    """
    from stormfold.io.metadata import recorded_geometry

    sim_path = Path(truth).parent / SIMULATION_YAML
    sim = recorded_geometry(sim_path)
    if not sim or not movie:
        return
    problems = []
    if movie.get("pixel_size_nm") and not math.isclose(sim["pixel_size_nm"],
                                                       movie["pixel_size_nm"], rel_tol=1e-6):
        problems.append(f"pixel size {sim['pixel_size_nm']:g} vs {movie['pixel_size_nm']:g} nm")
    shapes = [(g.get("height_px"), g.get("width_px")) for g in (sim, movie)]
    if None not in shapes[0] + shapes[1] and shapes[0] != shapes[1]:
        problems.append("frame size {}×{} vs {}×{} px".format(*shapes[0], *shapes[1]))
    n_sim = sim.get("movie_frames")
    if n_sim is not None:
        if movie.get("movie_frames") is not None and movie["movie_frames"] != n_sim:
            problems.append(f"{n_sim} vs {movie['movie_frames']} frames")
        elif movie.get("n_frames") is not None and movie["n_frames"] > n_sim:
            problems.append(f"{n_sim} frames vs frames up to {movie['n_frames']}")
    if problems:
        raise UserError(f"the truth {truth} was simulated for another movie than the "
                        f"localizations ({sim_path} vs {what}: {', '.join(problems)}); "
                        f"give the truth of that movie")


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
