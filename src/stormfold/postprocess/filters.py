"""Filters of localization tables (SPEC §8): by expression, region of interest, local density.

* **Expression**: a condition over the table's columns evaluated by
  :meth:`pandas.DataFrame.eval`, e.g. ``"confidence > 0.3 and photons > 500"`` or
  ``"uncertainty_nm < 20 or detections >= 3"``. Columns use the in-memory names (``x_nm``,
  ``photons``, ``uncertainty_nm``, ``bkgstd_photon`` ...); ``and``, ``or``, ``not``,
  comparisons, arithmetic and ``abs`` work. Nothing but the columns is visible. A power of
  constants is limited (exponent a number of at most :data:`MAX_CONSTANT_EXPONENT`, no power
  of a power): Python computes ``9**9**9`` exactly, which never ends.
* **ROI**: keep x0 ≤ x < x1 and y0 ≤ y < y1 (nm).
* **Local density**: keep localizations with at least ``min_neighbours`` other
  localizations (any frame) within ``radius_nm`` — counted with a k-d tree.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from stormfold.errors import UserError
from stormfold.table import check_length_nm, validate_table


@dataclass
class FilterParams:
    """Parameters of :func:`filter_table` (the ``filter`` section of a post-processing YAML).

    Attributes
    ----------
    expr : str or None
        Condition over columns (see the module docstring).
    roi : (x0, y0, x1, y1) or None
        Region of interest (nm).
    min_neighbours : int or None
        Keep localizations with at least this many neighbours within ``radius_nm``.
    radius_nm : float
        Neighbourhood radius (nm) of the density filter.
    """

    expr: Optional[str] = None
    roi: Optional[tuple[float, float, float, float]] = None
    min_neighbours: Optional[int] = None
    radius_nm: float = 50.0

    def validate(self) -> None:
        if self.roi is not None:
            check_roi(self.roi)
        if self.min_neighbours is not None and self.min_neighbours < 0:
            raise UserError(f"filter: min_neighbours must be ≥ 0, got {self.min_neighbours}")
        check_length_nm(self.radius_nm, "filter: radius_nm")


_FORBIDDEN = re.compile(r"__|@|`|\blambda\b|;|(?<![<>=!])=(?!=)")
#: Largest |exponent| of a power whose exponent is a constant.
MAX_CONSTANT_EXPONENT = 64


def _has_name(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) for n in ast.walk(node))


def _number(node: ast.AST) -> float | None:
    """The value of a number literal (with an optional sign), else None."""
    sign = 1.0
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0
        node = node.operand
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return sign * float(node.value)
    return None


def _check_powers(expr: str) -> None:
    """Refuse powers of constants that exact integer arithmetic cannot finish (``9**9**9``).

    A power over columns is computed in floating point by numpy and always ends; a constant
    exponent must be a number literal of at most :data:`MAX_CONSTANT_EXPONENT`, and a power of
    constants may not be raised again."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        return  # reported by the evaluation, with pandas' wording
    for node in ast.walk(tree):
        if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow)):
            continue
        exponent = _number(node.right)
        nested = not _has_name(node.left) and any(
            isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) for n in ast.walk(node.left))
        constant = not _has_name(node.right)
        if constant and (exponent is None or abs(exponent) > MAX_CONSTANT_EXPONENT or nested):
            raise UserError(f"filter expression {expr!r}: a constant exponent must be a number "
                            f"in [-{MAX_CONSTANT_EXPONENT}, {MAX_CONSTANT_EXPONENT}] and not "
                            f"raise a power again (write large numbers as 1e9)")


def expression_mask(table: pd.DataFrame, expr: str, frame_base: int = 0) -> np.ndarray:
    """Boolean mask of the rows satisfying ``expr`` (see the module docstring).

    ``frame`` and ``last_frame`` in ``expr`` count from ``frame_base``: the numbering of
    the file the user reads (1 for a ThunderSTORM CSV), not the 0-based one in memory.

    Raises
    ------
    UserError
        Empty or malformed expression, unknown column, assignments or other constructs
        that are not a condition, a result that is not one true/false per row.
    """
    if not isinstance(expr, str) or not expr.strip():
        raise UserError("filter expression is empty")
    if _FORBIDDEN.search(expr):
        raise UserError(f"filter expression {expr!r}: only conditions over columns are "
                        f"allowed (no assignments, '@', '__' or backquotes)")
    _check_powers(expr)
    columns = ", ".join(map(str, table.columns))
    if frame_base:
        shifted = {c: table[c] + int(frame_base) for c in ("frame", "last_frame") if c in table}
        table = table.assign(**shifted)
    try:
        result = table.eval(expr, local_dict={}, global_dict={}, resolvers=())
    except pd.errors.UndefinedVariableError as exc:
        name = re.search(r"'([^']+)'", str(exc))
        what = f"unknown column '{name.group(1)}'" if name else "unknown name"
        raise UserError(f"filter expression {expr!r}: {what} (columns: {columns})") from None
    except SyntaxError as exc:
        raise UserError(f"filter expression {expr!r}: syntax error ({exc.msg})") from None
    except Exception as exc:  # pandas raises many types for unsupported constructs
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"filter expression {expr!r}: cannot evaluate ({detail})") from None
    if not isinstance(result, pd.Series) or len(result) != len(table) or \
            not pd.api.types.is_bool_dtype(result):
        raise UserError(f"filter expression {expr!r} is not a condition giving true/false "
                        f"for each localization (e.g. \"photons > 500\")")
    return result.to_numpy(dtype=bool)


def check_roi(roi: Sequence[float]) -> tuple[float, float, float, float]:
    """Validate an ROI ``(x0, y0, x1, y1)`` in nm (x0 < x1, y0 < y1)."""
    try:
        x0, y0, x1, y1 = (float(v) for v in roi)
    except (TypeError, ValueError):
        raise UserError(f"ROI must be four numbers x0,y0,x1,y1 in nm, got {roi!r}") from None
    if not (np.isfinite([x0, y0, x1, y1]).all() and x0 < x1 and y0 < y1):
        raise UserError(f"ROI x0,y0,x1,y1 must have x0 < x1 and y0 < y1, got "
                        f"{x0:g},{y0:g},{x1:g},{y1:g}")
    return x0, y0, x1, y1


def roi_mask(table: pd.DataFrame, roi: Sequence[float]) -> np.ndarray:
    """Rows with x0 ≤ x_nm < x1 and y0 ≤ y_nm < y1."""
    x0, y0, x1, y1 = check_roi(roi)
    x = table["x_nm"].to_numpy()
    y = table["y_nm"].to_numpy()
    return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


def local_density(table: pd.DataFrame, radius_nm: float) -> np.ndarray:
    """Number of *other* localizations (all frames) within ``radius_nm`` of each one.

    Returns
    -------
    numpy.ndarray of int64, shape (len(table),)
    """
    radius_nm = check_length_nm(radius_nm, "density radius")
    if not len(table):
        return np.zeros(0, np.int64)
    points = np.column_stack([table["x_nm"].to_numpy(), table["y_nm"].to_numpy()])
    tree = cKDTree(points)
    counts = tree.query_ball_point(points, radius_nm, return_length=True, workers=-1)
    return np.asarray(counts, np.int64) - 1


def filter_table(table: pd.DataFrame, expr: Optional[str] = None,
                 roi: Optional[Sequence[float]] = None, min_neighbours: Optional[int] = None,
                 radius_nm: float = 50.0, frame_base: int = 0) -> tuple[pd.DataFrame, dict]:
    """Apply the expression, ROI and density filters (those given), in that order.

    ``frame_base``: first frame number of the file the user reads, for ``frame`` in
    ``expr`` (:func:`expression_mask`).

    The density is counted among the localizations that passed the expression and ROI.

    Returns
    -------
    table : pandas.DataFrame
        The kept rows (index reset).
    stats : dict
        Rows in and out, and after each filter.
    """
    table = validate_table(table)
    stats: dict = {"n_in": int(len(table))}
    keep = np.ones(len(table), bool)
    if expr is not None:
        keep &= expression_mask(table, expr, frame_base)
        stats["after_expr"] = int(keep.sum())
        stats["expr_frame_base"] = int(frame_base)
    if roi is not None:
        keep &= roi_mask(table, roi)
        stats["after_roi"] = int(keep.sum())
    out = table[keep]
    if min_neighbours is not None:
        if int(min_neighbours) != min_neighbours or min_neighbours < 0:
            raise UserError(f"min_neighbours must be a non-negative integer, got {min_neighbours}")
        out = out[local_density(out, radius_nm) >= min_neighbours]
        stats["after_density"] = int(len(out))
    stats["n_out"] = int(len(out))
    return out.reset_index(drop=True), stats
