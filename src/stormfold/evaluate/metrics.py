"""Detection and localization metrics of a localization table against ground truth (SPEC §7).

For each tolerance, the two tables are matched per frame and one-to-one
(:func:`stormfold.evaluate.matching.match`), then

- TP = matched pairs, FP = unmatched localizations, FN = unmatched truth emitters;
- Jaccard index JI = TP / (TP + FP + FN) (a fraction 0–1), precision = TP / (TP + FP),
  recall = TP / (TP + FN), F1 = 2·TP / (2·TP + FP + FN);
- RMSE in x, in y and lateral (√(RMSE_x² + RMSE_y²)) over the matched pairs, in nm;
- bias = mean(localization − truth) in x and y over the matched pairs, in nm;
- efficiency E = 100 − √((100·(1 − JI))² + α²·RMSE_lateral²) with α = 1 nm⁻¹ (SMLM
  challenge 2016, 2D); 100 is perfect, it can be negative.

Ratios with a zero denominator, and RMSE, bias and efficiency without any matched pair,
are NaN.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from stormfold.errors import UserError, whole_number
from stormfold.evaluate.matching import (Matching, candidate_pairs, check_method,
                                         check_tolerance, match_arrays, table_arrays)
from stormfold.evaluate.sanity import input_warnings

COLUMNS = ("tolerance_nm", "n_truth", "n_locs", "tp", "fp", "fn", "jaccard", "precision",
           "recall", "f1", "rmse_x_nm", "rmse_y_nm", "rmse_lateral_nm", "bias_x_nm",
           "bias_y_nm", "efficiency")

#: α of the efficiency, in nm⁻¹ (SMLM challenge 2016, 2D).
EFFICIENCY_ALPHA = 1.0


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def efficiency(jaccard: float, rmse_lateral_nm: float, alpha: float = EFFICIENCY_ALPHA) -> float:
    """SMLM-challenge efficiency E = 100 − √((100·(1 − JI))² + α²·RMSE²).

    Parameters
    ----------
    jaccard : float
        Jaccard index as a fraction (0–1).
    rmse_lateral_nm : float
        Lateral RMSE of the matched pairs, in nm.
    alpha : float
        Weight of the RMSE in nm⁻¹ (1 nm⁻¹ for 2D data).

    Returns
    -------
    float
        Efficiency in percent-like units (100 is perfect); NaN if an input is NaN.
    """
    return float(100.0 - np.hypot(100.0 * (1.0 - jaccard), alpha * rmse_lateral_nm))


def border_mask(x_nm: np.ndarray, y_nm: np.ndarray, border_nm: float,
                fov_nm: tuple[float, float]) -> np.ndarray:
    """True for points at least ``border_nm`` away from every edge of the field of view.

    Parameters
    ----------
    x_nm, y_nm : numpy.ndarray
        Positions in nm (SPEC §1: origin at the top-left corner of the image).
    border_nm : float
        Width of the excluded band along each edge, in nm.
    fov_nm : (float, float)
        Width (along x) and height (along y) of the field of view, in nm.
    """
    width, height = fov_nm
    return ((x_nm >= border_nm) & (x_nm <= width - border_nm)
            & (y_nm >= border_nm) & (y_nm <= height - border_nm))


def _check_fov(border_nm: float, fov_nm: Sequence[float] | None) -> tuple[float, tuple | None]:
    try:
        border = float(border_nm)
    except (TypeError, ValueError):
        raise UserError(f"border must be a number of nm, got {border_nm!r}") from None
    if not np.isfinite(border) or border < 0:
        raise UserError(f"border must be a finite number of nm ≥ 0, got {border_nm!r}")
    fov = None
    if fov_nm is not None:
        try:
            fov = tuple(float(v) for v in fov_nm)
        except (TypeError, ValueError):
            raise UserError(f"field of view must be (width_nm, height_nm), got {fov_nm!r}") from None
        if len(fov) != 2 or not all(np.isfinite(v) and v > 0 for v in fov):
            raise UserError(f"field of view must be two positive numbers of nm "
                            f"(width, height), got {fov_nm!r}")
    if border > 0 and fov is None:
        raise UserError("border exclusion needs the field of view (width_nm, height_nm)")
    if fov is not None and (2 * border >= fov[0] or 2 * border >= fov[1]):
        raise UserError(f"border {border:g} nm leaves nothing of the {fov[0]:g} × {fov[1]:g} nm "
                        f"field of view")
    return border, fov


def metrics_row(m: Matching, tolerance_nm: float) -> dict:
    """One row of :func:`evaluate` from a :class:`~stormfold.evaluate.matching.Matching`."""
    tp, fp, fn = m.tp, m.fp, m.fn
    jaccard = _ratio(tp, tp + fp + fn)
    if tp:
        rmse_x = float(np.sqrt(np.mean(m.dx_nm ** 2)))
        rmse_y = float(np.sqrt(np.mean(m.dy_nm ** 2)))
        rmse = float(np.hypot(rmse_x, rmse_y))
        bias_x, bias_y = float(np.mean(m.dx_nm)), float(np.mean(m.dy_nm))
        eff = efficiency(jaccard, rmse)
    else:
        rmse_x = rmse_y = rmse = bias_x = bias_y = eff = float("nan")
    return {"tolerance_nm": float(tolerance_nm), "n_truth": m.n_truth, "n_locs": m.n_locs,
            "tp": tp, "fp": fp, "fn": fn, "jaccard": jaccard,
            "precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn), "rmse_x_nm": rmse_x, "rmse_y_nm": rmse_y,
            "rmse_lateral_nm": rmse, "bias_x_nm": bias_x, "bias_y_nm": bias_y,
            "efficiency": eff}


def evaluate(truth: pd.DataFrame, locs: pd.DataFrame,
             tolerances_nm: float | Iterable[float] = (50, 100, 250),
             method: str = "hungarian", border_nm: float = 0.0,
             fov_nm: Sequence[float] | None = None,
             frames: tuple[int, int] | None = None,
             check_inputs: bool = True) -> pd.DataFrame:
    """Compare a localization table with the ground truth at several tolerances.

    Parameters
    ----------
    truth : pandas.DataFrame
        Ground-truth table (``frame``, ``x_nm``, ``y_nm``; SPEC §1).
    locs : pandas.DataFrame
        Localization table (same columns).
    tolerances_nm : float or iterable of float
        Matching radii in nm (default 50, 100, 250; 250 nm is the SMLM-challenge rule).
    method : {"hungarian", "greedy"}
        Matching method (see :func:`stormfold.evaluate.matching.match`).
    border_nm : float
        Exclude truth emitters and localizations closer than this to an edge of the
        field of view before matching, in nm (SMLM challenge: 450 nm). 0 keeps all.
    fov_nm : (float, float), optional
        Field of view (width along x, height along y) in nm; needed when
        ``border_nm`` > 0.
    frames : (int, int), optional
        Score only frames ``[first, stop)`` (0-based) of both tables: the frames that were
        localized (:func:`frames_warning` says when the truth spans more). Default: all.
    check_inputs : bool
        Warn (:class:`UserWarning`, one line each) when the tables look mismatched: frame
        numbers shifted by one, positions in another unit, a truth spanning frames with no
        localization (:func:`stormfold.evaluate.sanity.input_warnings`).

    Returns
    -------
    pandas.DataFrame
        One row per tolerance, columns ``tolerance_nm, n_truth, n_locs, tp, fp, fn,
        jaccard, precision, recall, f1, rmse_x_nm, rmse_y_nm, rmse_lateral_nm,
        bias_x_nm, bias_y_nm, efficiency`` (see the module docstring). ``n_truth`` and
        ``n_locs`` count the rows kept after the frame range and the border exclusion.

    Raises
    ------
    UserError
        Missing column, invalid tolerance or method, or ``border_nm`` > 0 without
        ``fov_nm``.
    """
    if np.ndim(tolerances_nm) == 0:
        tolerances_nm = [tolerances_nm]
    tolerances = [check_tolerance(t) for t in tolerances_nm]
    if not tolerances:
        raise UserError("no tolerance given")
    method = check_method(method)
    border, fov = _check_fov(border_nm, fov_nm)
    t = table_arrays(truth, "ground truth")
    l = table_arrays(locs, "localizations")
    if check_inputs:
        for line in input_warnings(truth, locs, frames_given=frames is not None):
            warnings.warn(line, UserWarning, stacklevel=2)
    if frames is not None:
        first, stop = check_frames(frames)
        t = tuple(a[(t[0] >= first) & (t[0] < stop)] for a in t)
        l = tuple(a[(l[0] >= first) & (l[0] < stop)] for a in l)
    if border > 0:
        t = tuple(a[border_mask(t[1], t[2], border, fov)] for a in t)
        l = tuple(a[border_mask(l[1], l[2], border, fov)] for a in l)
    candidates = candidate_pairs(t, l, max(tolerances))
    rows = [metrics_row(match_arrays(t, l, tol, method, candidates=candidates), tol)
            for tol in tolerances]
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in ("n_truth", "n_locs", "tp", "fp", "fn"):
        df[col] = df[col].astype(np.int64)
    return df


def empty_truth_warning(metrics: pd.DataFrame) -> str | None:
    """One line when no truth emitter was scored (an empty truth, or none in the frames and
    field kept): recall, Jaccard and F1 are then nan or 0 and say nothing of the engine."""
    if len(metrics) and int(metrics["n_truth"].max()) == 0:
        return ("the truth has no emitter in the frames and field scored: recall, Jaccard "
                "and F1 are undefined or 0 and say nothing of the localizations")
    return None


def check_frames(frames: Sequence[int]) -> tuple[int, int]:
    """``(first, stop)`` as ints with 0 ≤ first < stop, else :class:`UserError`."""
    try:
        first, stop = frames
    except (TypeError, ValueError):
        raise UserError(f"frames must be two numbers A:B, got {frames!r}") from None
    first, stop = whole_number(first, "first frame"), whole_number(stop, "end frame")
    if not 0 <= first < stop:
        raise UserError(f"frame range {first}:{stop} is empty (0-based, end exclusive)")
    return first, stop


def frames_warning(truth: pd.DataFrame, frames: Sequence[int], what: str) -> str | None:
    """One line when the truth has emitters outside the frames scored, else None.

    ``what`` names who chose the frames ("the run localized", ...). Scoring all the truth
    against a table that covers part of the movie counts every emitter of the other frames
    as missed, so the evaluation keeps to ``frames`` and says so.
    """
    first, stop = check_frames(frames)
    f = truth["frame"].to_numpy()
    outside = (f < first) | (f >= stop)
    if not outside.any():
        return None
    return (f"the truth spans frames {int(f.min())}:{int(f.max()) + 1} but {what} "
            f"{first}:{stop} (0-based, end exclusive): scoring those frames only, "
            f"{int(outside.sum())} truth rows outside them left out")


_FORMATS = {"n_truth": "{:d}", "n_locs": "{:d}", "tp": "{:d}", "fp": "{:d}", "fn": "{:d}",
            "jaccard": "{:.3f}", "precision": "{:.3f}", "recall": "{:.3f}", "f1": "{:.3f}",
            "rmse_x_nm": "{:.1f}", "rmse_y_nm": "{:.1f}", "rmse_lateral_nm": "{:.1f}",
            "bias_x_nm": "{:.1f}", "bias_y_nm": "{:.1f}", "efficiency": "{:.1f}"}


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "nan"
    if spec == "{:d}":
        return spec.format(int(value))
    return spec.format(float(value))


def format_table(df: pd.DataFrame) -> str:
    """Fixed-width text table of :func:`evaluate`'s result, for the terminal.

    One line per metric and one column per tolerance (the transpose of ``df``), so the
    table stays narrow however many metrics there are. Fractions get 3 decimals, nm and
    efficiency 1 decimal, NaN prints as ``nan``.

    Parameters
    ----------
    df : pandas.DataFrame
        Output of :func:`evaluate` (extra columns are printed with ``{:.4g}``).

    Returns
    -------
    str
        The table, lines joined by newlines (no trailing newline).
    """
    if "tolerance_nm" not in df.columns:
        raise UserError("format_table: expected the output of evaluate (no tolerance_nm column)")
    headers = ["metric"] + [f"{t:g} nm" for t in df["tolerance_nm"]]
    lines = [[c] + [_fmt(v, _FORMATS.get(c, "{:.4g}")) for v in df[c]]
             for c in df.columns if c != "tolerance_nm"]
    table = [headers] + lines
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    out = []
    for k, row in enumerate(table):
        out.append("  ".join([row[0].ljust(widths[0])]
                             + [cell.rjust(w) for cell, w in zip(row[1:], widths[1:])]))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
