"""A drift trajectory (``frame``, ``dx_nm``, ``dy_nm`` with d(0) = 0; the convention is in
:mod:`stormfold.postprocess.drift`): the result of an estimate, applying it to a table,
reading it from a file, comparing two, and the helpers both estimators share.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import pandas as pd

from stormfold.errors import UserError
from stormfold.table import validate_table

if TYPE_CHECKING:
    from stormfold.postprocess.drift.reliability import DriftReliability, FiducialSupport


@dataclass
class DriftResult:
    """An estimated drift trajectory.

    Attributes
    ----------
    drift : pandas.DataFrame
        ``frame`` (0 … n_frames − 1), ``dx_nm``, ``dy_nm``; d(0) = 0.
    points : pandas.DataFrame
        The measurements the trajectory was built from: RCC bin drifts (``frame`` = mean
        frame of the bin) or the averaged fiducial track, same anchoring.
    stats : dict
        Method, parameters and figures (drift RMS and range, RCC residual, pairs used,
        ``reliability``).
    reliability : DriftReliability, FiducialSupport or None
        How far the estimate can be trusted and whether it is applied
        (:func:`drift_to_apply`); None: always applied.
    """

    drift: pd.DataFrame
    points: pd.DataFrame
    stats: dict = field(default_factory=dict)
    reliability: Optional["DriftReliability | FiducialSupport"] = None


def frames_spanned(table: pd.DataFrame, n_frames: Optional[int]) -> int:
    """The movie length: ``n_frames``, or the table's last frame + 1 (checked)."""
    if not len(table):
        raise UserError("the localization table is empty: nothing to estimate drift from")
    last = int(table["frame"].max()) + 1
    if n_frames is None:
        return last
    if n_frames < last:
        raise UserError(f"n_frames {n_frames} is smaller than the table's last frame + 1 ({last})")
    return int(n_frames)


def rounded(value: float) -> float:
    """A figure for the record (4 decimals)."""
    return round(float(value), 4)


def drift_table(trajectory: np.ndarray) -> pd.DataFrame:
    """``frame``, ``dx_nm``, ``dy_nm`` of a (n_frames, 2) trajectory."""
    return pd.DataFrame({"frame": np.arange(len(trajectory), dtype=np.int64),
                         "dx_nm": trajectory[:, 0], "dy_nm": trajectory[:, 1]})


def trajectory_summary(trajectory: np.ndarray) -> dict:
    """RMS, range and end point of a trajectory (nm), for the record."""
    centred = trajectory - trajectory.mean(axis=0)
    return {"drift_rms_nm": rounded(np.sqrt(np.mean(np.sum(centred ** 2, axis=1)))),
            "drift_range_x_nm": rounded(np.ptp(trajectory[:, 0])),
            "drift_range_y_nm": rounded(np.ptp(trajectory[:, 1])),
            "drift_end_nm": [rounded(trajectory[-1, 0]), rounded(trajectory[-1, 1])]}


def interpolate_linear(t_known: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation with linear extrapolation at both ends."""
    out = np.empty((len(t), values.shape[1]))
    for axis in range(values.shape[1]):
        v = values[:, axis]
        out[:, axis] = np.interp(t, t_known, v)
        left, right = t < t_known[0], t > t_known[-1]
        if len(t_known) >= 2:
            slope0 = (v[1] - v[0]) / (t_known[1] - t_known[0])
            slope1 = (v[-1] - v[-2]) / (t_known[-1] - t_known[-2])
            out[left, axis] = v[0] + slope0 * (t[left] - t_known[0])
            out[right, axis] = v[-1] + slope1 * (t[right] - t_known[-1])
    return out


def interpolate_hold(t_known: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation, held constant at the first and last known value
    outside ``t_known`` (a measured track says nothing about the drift beyond its ends, and
    a slope from the last two noisy points would invent one)."""
    return np.column_stack([np.interp(t, t_known, values[:, axis])
                            for axis in range(values.shape[1])])


DRIFT_COLUMNS = ("frame", "dx_nm", "dy_nm")


def write_drift_csv(path: str | Path, drift: pd.DataFrame) -> Path:
    """Write a drift trajectory (0-based ``frame``, ``dx_nm``, ``dy_nm`` in memory) as CSV
    with 1-based frames (atomically)."""
    from stormfold.io.tables import write_frames_csv

    return write_frames_csv(path, drift[list(DRIFT_COLUMNS)], ("frame",), float_format="%.4f")


def read_drift_csv(path: str | Path) -> pd.DataFrame:
    """Read a drift trajectory file, e.g. the ``drift.csv`` of ``stormfold simulate`` or of
    the drift step.

    Returns ``frame`` (0-based), ``dx_nm``, ``dy_nm``. The file's frames are 1-based; a
    file holding frame 0 is a 0-based file of stormfold 0.1 and is read as such, with a
    warning.
    """
    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise UserError(f"drift file not found: {path}") from None
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable drift CSV ({type(exc).__name__})") from None
    missing = [c for c in DRIFT_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"{path}: drift table lacks column(s) {', '.join(missing)}")
    try:
        table = table[list(DRIFT_COLUMNS)].astype(
            {"frame": np.int64, "dx_nm": np.float64, "dy_nm": np.float64})
    except (TypeError, ValueError):
        raise UserError(f"{path}: drift table holds non-numeric values") from None
    frames = table["frame"].to_numpy()
    if len(frames) and frames.min() < 0:
        raise UserError(f"{path}: negative frame number {frames.min()} (frames are 1-based)")
    if len(frames) and frames.min() == 0:
        warnings.warn(f"{path}: frame 0 found, so its frames are read as 0-based (a drift file "
                      f"of stormfold 0.1); files written now number frames from 1",
                      UserWarning, stacklevel=2)
        return table
    table["frame"] = frames - 1
    return table


def apply_drift(table: pd.DataFrame, drift: pd.DataFrame) -> pd.DataFrame:
    """Subtract a drift trajectory: x − dx(frame), y − dy(frame).

    Parameters
    ----------
    table : pandas.DataFrame
        Localization table.
    drift : pandas.DataFrame
        ``frame``, ``dx_nm``, ``dy_nm`` covering every frame of ``table``.

    Returns
    -------
    pandas.DataFrame
        A corrected copy (other columns unchanged).
    """
    table = validate_table(table)
    if not isinstance(drift, pd.DataFrame):
        raise UserError(f"apply_drift: the drift must be a pandas DataFrame (frame, dx_nm, dy_nm), "
                        f"got {type(drift).__name__}")
    missing = [c for c in ("frame", "dx_nm", "dy_nm") if c not in drift.columns]
    if missing:
        raise UserError(f"drift table lacks column(s) {', '.join(missing)}")
    if not len(table):
        return table
    size = int(max(table["frame"].max(), drift["frame"].max() if len(drift) else 0)) + 1
    dx = np.full(size, np.nan)
    dy = np.full(size, np.nan)
    f = drift["frame"].to_numpy(np.int64)
    dx[f], dy[f] = drift["dx_nm"].to_numpy(np.float64), drift["dy_nm"].to_numpy(np.float64)
    frame = table["frame"].to_numpy()
    shift_x, shift_y = dx[frame], dy[frame]
    if np.isnan(shift_x).any() or np.isnan(shift_y).any():
        first = int(frame[np.isnan(shift_x) | np.isnan(shift_y)][0])
        raise UserError(f"the drift table has no value for frame {first}")
    # validate_table returned a copy: correct it in place.
    table["x_nm"] = table["x_nm"].to_numpy() - shift_x
    table["y_nm"] = table["y_nm"].to_numpy() - shift_y
    return table


def residual_rms_nm(estimated: pd.DataFrame, truth: pd.DataFrame) -> float:
    """RMS (nm, per axis pooled: √mean(ex² + ey²)) of the difference of two drift
    trajectories on their common frames, after removing the mean difference (the
    arbitrary constant offset)."""
    merged = estimated.merge(truth, on="frame", suffixes=("_est", "_true"))
    if not len(merged):
        raise UserError("the two drift tables share no frame")
    diff = np.column_stack([merged["dx_nm_est"] - merged["dx_nm_true"],
                            merged["dy_nm_est"] - merged["dy_nm_true"]])
    diff -= diff.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(diff ** 2, axis=1))))
