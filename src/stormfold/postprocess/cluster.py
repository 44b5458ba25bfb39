"""DBSCAN clustering of localizations and per-cluster summaries (SPEC §8).

DBSCAN (Ester et al. 1996) as implemented by :class:`sklearn.cluster.DBSCAN`, on the
lateral positions in nm (all frames pooled): a *core* localization has at least
``min_samples`` localizations (itself included) within ``eps_nm`` (inclusive); clusters
are the connected core points plus the non-core points within ``eps_nm`` of one; the
rest is noise (``cluster = -1``).

Summary of each cluster: centroid (mean x, y), ``count``, ``area_nm2`` = area of the
convex hull (:class:`scipy.spatial.ConvexHull`; 0 for fewer than three points or
collinear points), ``radius_of_gyration_nm`` = √(mean |p − centroid|²), and the first
and last frame.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.spatial import ConvexHull, QhullError
from sklearn.cluster import DBSCAN

from stormfold.errors import UserError
from stormfold.table import check_length_nm, validate_table

SUMMARY_COLUMNS = ("cluster", "x_nm", "y_nm", "count", "area_nm2", "radius_of_gyration_nm",
                   "first_frame", "last_frame")
_INTEGER_SUMMARY = ("cluster", "count", "first_frame", "last_frame")


@dataclass
class ClusterParams:
    """Parameters of :func:`dbscan` (the ``cluster`` section of a post-processing YAML).

    Attributes
    ----------
    eps_nm : float
        Neighbourhood radius (nm).
    min_samples : int
        Localizations (including the point itself) within ``eps_nm`` that make a core point.
    """

    eps_nm: float = 50.0
    min_samples: int = 5

    def validate(self) -> None:
        check_length_nm(self.eps_nm, "cluster: eps_nm")
        if self.min_samples < 1:
            raise UserError(f"cluster: min_samples must be ≥ 1, got {self.min_samples}")


def dbscan_labels(table: pd.DataFrame, eps_nm: float, min_samples: int) -> np.ndarray:
    """DBSCAN label of every localization (−1: noise; clusters 0 … k−1).

    Parameters
    ----------
    table : pandas.DataFrame
        Localization table.
    eps_nm : float
        Neighbourhood radius (nm).
    min_samples : int
        Neighbours (including the point) that make a core point.

    Returns
    -------
    numpy.ndarray of int64, shape (len(table),)
    """
    if not np.isfinite(eps_nm) or eps_nm <= 0:
        raise UserError(f"DBSCAN eps must be > 0 nm, got {eps_nm}")
    if eps_nm < 1.0:
        # A radius in µm given as nm finds no cluster, silently (review 18).
        warnings.warn(f"DBSCAN eps {eps_nm:g} nm is below 1 nm: is it in nm (e.g. 50)?",
                      UserWarning, stacklevel=2)
    if int(min_samples) != min_samples or min_samples < 1:
        raise UserError(f"DBSCAN min_samples must be a positive integer, got {min_samples}")
    if not len(table):
        return np.zeros(0, np.int64)
    points = np.column_stack([table["x_nm"].to_numpy(np.float64),
                              table["y_nm"].to_numpy(np.float64)])
    # The neighbour queries run on every core unless OMP_NUM_THREADS limits them (review 18).
    limit = os.environ.get("OMP_NUM_THREADS", "")
    n_jobs = int(limit) if limit.isdigit() and int(limit) > 0 else -1
    model = DBSCAN(eps=float(eps_nm), min_samples=int(min_samples), n_jobs=n_jobs)
    return model.fit_predict(points).astype(np.int64)


def dbscan(table: pd.DataFrame, eps_nm: float = 50.0, min_samples: int = 5) -> pd.DataFrame:
    """Copy of ``table`` with a ``cluster`` column from :func:`dbscan_labels`."""
    table = validate_table(table)
    out = table.copy()
    out["cluster"] = dbscan_labels(table, eps_nm, min_samples)
    return out


def cluster_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per cluster (noise excluded): see :data:`SUMMARY_COLUMNS` and the module
    docstring.

    Parameters
    ----------
    table : pandas.DataFrame
        Localization table with a ``cluster`` column (−1 = noise).
    """
    if "cluster" not in table.columns:
        raise UserError("the table has no cluster column: run DBSCAN first")
    labels = table["cluster"].to_numpy(np.int64)
    member = labels >= 0
    if not member.any():
        return pd.DataFrame({c: np.zeros(0, np.int64 if c in _INTEGER_SUMMARY else np.float64)
                             for c in SUMMARY_COLUMNS})
    ids, inverse = np.unique(labels[member], return_inverse=True)
    inverse = inverse.reshape(-1)
    x = table["x_nm"].to_numpy(np.float64)[member]
    y = table["y_nm"].to_numpy(np.float64)[member]
    frame = table["frame"].to_numpy(np.int64)[member]
    n = len(ids)
    count = np.bincount(inverse, minlength=n)
    cx = np.bincount(inverse, x, n) / count
    cy = np.bincount(inverse, y, n) / count
    rg = np.sqrt(np.bincount(inverse, (x - cx[inverse]) ** 2 + (y - cy[inverse]) ** 2, n) / count)
    first = np.full(n, np.iinfo(np.int64).max)
    last = np.full(n, -1, np.int64)
    np.minimum.at(first, inverse, frame)
    np.maximum.at(last, inverse, frame)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(n + 1))
    area = np.zeros(n)
    points = np.column_stack([x, y])[order]
    for k in np.flatnonzero(count >= 3):  # one hull per cluster, not per localization
        area[k] = _hull_area(points[bounds[k]:bounds[k + 1]])
    return pd.DataFrame({"cluster": ids, "x_nm": cx, "y_nm": cy, "count": count.astype(np.int64),
                         "area_nm2": area, "radius_of_gyration_nm": rg,
                         "first_frame": first, "last_frame": last})


def _hull_area(points: np.ndarray) -> float:
    try:
        return float(ConvexHull(points).volume)  # in 2-D, "volume" is the area
    except (QhullError, ValueError):
        return 0.0  # collinear or coincident points enclose no area


def cluster(table: pd.DataFrame, eps_nm: float = 50.0, min_samples: int = 5
            ) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """DBSCAN plus summary.

    Returns
    -------
    table : pandas.DataFrame
        With the ``cluster`` column.
    summary : pandas.DataFrame
        :func:`cluster_summary`.
    stats : dict
        ``n_clusters``, ``n_noise``, ``median_count``, ``median_area_nm2``, parameters.
    """
    labelled = dbscan(table, eps_nm, min_samples)
    summary = cluster_summary(labelled)
    stats = {"eps_nm": float(eps_nm), "min_samples": int(min_samples),
             "n_localizations": int(len(labelled)), "n_clusters": int(len(summary)),
             "n_noise": int((labelled["cluster"] < 0).sum()),
             "median_count": float(summary["count"].median()) if len(summary) else 0.0,
             "median_area_nm2": float(summary["area_nm2"].median()) if len(summary) else 0.0}
    return labelled, summary, stats
