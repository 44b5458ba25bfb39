"""The localization table: the one data type every subpackage exchanges.

A table is a :class:`pandas.DataFrame` with one row per localization (or per
ground-truth emitter and frame). Required columns:

``frame``
    0-based frame index (int64).
``x_nm``, ``y_nm``
    position in nanometres; x along columns, y along rows, origin at the top-left
    corner of camera pixel (0, 0), so the centre of pixel (r, c) is
    ((c + 0.5)·px, (r + 0.5)·px).

Optional columns (units in the names): ``photons``, ``sigma_nm``, ``bg`` (photons per
pixel), ``uncertainty_nm``, ``confidence``, ``id``, ``detections``, ``cluster``,
:data:`INTENSITY_AU` (a brightness in arbitrary units, where an engine cannot say photons),
and any other column a step adds.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import numpy as np
import pandas as pd

from stormfold.errors import UserError

REQUIRED = ("frame", "x_nm", "y_nm")
OPTIONAL = ("photons", "sigma_nm", "bg", "uncertainty_nm", "confidence", "id",
            "detections", "cluster")
INTEGER_COLUMNS = ("frame", "id", "detections", "cluster")
#: A brightness in arbitrary units (ThunderSTORM ``intensity [a.u.]``; the unrolled engine's
#: summed reconstruction): weighs and sums like ``photons`` where a step needs a brightness.
INTENSITY_AU = "intensity_au"
#: Largest accepted |x_nm|, |y_nm|, |z_nm| (1e9 nm = 1 m, far beyond any microscope's field).
#: Larger finite values are corrupt data; they would overflow float32 files, image sizes and
#: the distance computations of matching, linking, drift and FRC.
MAX_COORDINATE_NM = 1e9


def check_length_nm(value: Any, what: str, allow_zero: bool = False) -> float:
    """``value`` as a float length in nm; :class:`UserError` (one line with the allowed range)
    unless it is a number in (0, :data:`MAX_COORDINATE_NM`] (or [0, …] with ``allow_zero``).

    Lengths beyond the largest position a table may hold mean nothing for localizations and
    would overflow grids, k-d trees and FFT sizes downstream."""
    low = "[0" if allow_zero else "(0"
    try:
        length = float(value)
    except (TypeError, ValueError):
        length = math.nan
    if not (length >= 0 if allow_zero else length > 0) or not length <= MAX_COORDINATE_NM:
        raise UserError(f"{what} must be a number of nm in {low}, {MAX_COORDINATE_NM:g}], got "
                        f"{value!r}")
    return length


def make_table(frame: Any, x_nm: Any, y_nm: Any, **columns: Any) -> pd.DataFrame:
    """Build a validated localization table from arrays.

    Parameters
    ----------
    frame : array of int
        0-based frame index.
    x_nm, y_nm : array of float
        Positions in nanometres (SPEC §1 convention).
    **columns
        Further columns (``photons``, ``sigma_nm``, ...); ``None`` values are skipped.
    """
    data = {"frame": np.asarray(frame, dtype=np.int64).reshape(-1),
            "x_nm": np.asarray(x_nm, dtype=np.float64).reshape(-1),
            "y_nm": np.asarray(y_nm, dtype=np.float64).reshape(-1)}
    for name, values in columns.items():
        if values is None:
            continue
        arr = np.asarray(values)
        if arr.ndim == 0:
            arr = np.full(len(data["frame"]), arr)
        data[name] = arr.reshape(-1)
    return validate_table(pd.DataFrame(data))


def empty_table(extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """A table with no rows and the required columns (plus ``extra`` float columns)."""
    return make_table([], [], [], **{name: np.zeros(0) for name in extra})


def validate_table(table: pd.DataFrame, source: str = "localization table",
                   names: Optional[Mapping[str, str]] = None) -> pd.DataFrame:
    """Check the required columns and dtypes; return the table with canonical dtypes.

    Parameters
    ----------
    table : pandas.DataFrame
        The table.
    source : str
        Where it comes from, for messages.
    names : mapping, optional
        Column → name in the file it was read from (``x_nm`` → ``x [nm]``), for messages.

    Raises
    ------
    UserError
        When a column name is repeated, a required column is missing or holds non-numeric or non-finite values, or a
        position lies beyond :data:`MAX_COORDINATE_NM`.
    """
    names = names or {}
    if not isinstance(table, pd.DataFrame):
        raise UserError(f"{source}: expected a pandas DataFrame, got {type(table).__name__}")
    repeated = table.columns[table.columns.duplicated()].unique()
    if len(repeated):
        raise UserError(f"{source}: column(s) {', '.join(map(str, repeated))} appear more than "
                        f"once (each column name must be unique)")
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise UserError(f"{source}: missing column(s) {', '.join(missing)} "
                        f"(a localization table needs frame, x_nm, y_nm)")
    out = table.copy()
    for col in REQUIRED:
        values = pd.to_numeric(out[col], errors="coerce").to_numpy()
        if len(values) and not np.all(np.isfinite(values)):
            raise UserError(f"{source}: column {names.get(col, col)} has missing or "
                            f"non-numeric values")
        out[col] = values
    for col in ("x_nm", "y_nm", "z_nm"):
        if col in out.columns and len(out):
            far = np.abs(pd.to_numeric(out[col], errors="coerce").to_numpy(dtype=float)) \
                > MAX_COORDINATE_NM
            if far.any():
                raise UserError(f"{source}: column {names.get(col, col)} has {int(far.sum())} of "
                                f"{len(out)} row(s) beyond ±{MAX_COORDINATE_NM:g} nm (1 m): not "
                                f"a position in a microscope")
    if len(out) and np.any(out["frame"].to_numpy() < 0):
        raise UserError(f"{source}: negative frame index (frames are 0-based in memory)")
    if len(out) and np.any(out["frame"].to_numpy() != np.round(out["frame"].to_numpy())):
        raise UserError(f"{source}: column frame holds non-integer values")
    out["frame"] = out["frame"].astype(np.int64)
    out["x_nm"] = out["x_nm"].astype(np.float64)
    out["y_nm"] = out["y_nm"].astype(np.float64)
    for col in INTEGER_COLUMNS[1:]:
        if col in out.columns and len(out) and not out[col].isna().any():
            out[col] = out[col].astype(np.int64)
    return out.reset_index(drop=True)


def n_frames_of(table: pd.DataFrame) -> int:
    """Number of frames spanned by a table (max frame + 1; 0 for an empty table)."""
    return int(table["frame"].max()) + 1 if len(table) else 0
