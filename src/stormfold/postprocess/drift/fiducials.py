"""Drift from fiducial markers (SPEC §8).

Long-lived emitters (beads) are found by linking
(:func:`stormfold.postprocess.link.link_groups`), pieces of one track split by a miss
longer than ``max_dark`` re-joined (:func:`_rejoin_fragments`): groups present in at least
``min_fraction`` of the frames. Their tracks pₖ(t) = d(t) + cₖ + noise are averaged with
the per-fiducial offsets cₖ estimated jointly (alternating least squares), frames without
a fiducial between two with one are interpolated linearly, and the trajectory is optionally
smoothed with a moving average. Before the first and after the last frame with a fiducial
the drift is held at the nearest measured value, with a warning naming those frames: a
linear extrapolation of a noisy track invents a drift. Fewer than
:data:`~stormfold.postprocess.drift.reliability.MIN_FIDUCIAL_FRAMES` frames with a fiducial
do not support an estimate (:class:`~stormfold.postprocess.drift.reliability.FiducialSupport`).
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import pandas as pd
from scipy.ndimage import uniform_filter1d

from stormfold.errors import UserError
from stormfold.postprocess.drift.reliability import FiducialSupport, assess_fiducials
from stormfold.postprocess.drift.trajectory import (DriftResult, drift_table, frames_spanned,
                                                    interpolate_hold, rounded,
                                                    trajectory_summary)
from stormfold.table import validate_table


def estimate_drift_fiducials(table: pd.DataFrame, radius_nm: float = 50.0, max_dark: int = 2,
                             min_fraction: float = 0.5, n_frames: Optional[int] = None,
                             smooth_frames: int = 1, iterations: int = 20) -> DriftResult:
    """Drift from fiducial markers (long-lived emitters; see the module docstring).

    Parameters
    ----------
    table : pandas.DataFrame
        Localization table including the fiducials.
    radius_nm : float
        Linking radius (nm): must exceed the fiducials' frame-to-frame motion plus noise.
    max_dark : int
        Frames a fiducial may be missed and still be linked.
    min_fraction : float
        A track with detections in at least this fraction of the frames is a fiducial.
    n_frames : int, optional
        Movie length (default: last frame + 1).
    smooth_frames : int
        Moving-average window (frames) of the averaged track (1: no smoothing).
    iterations : int
        Alternating least-squares sweeps for the track offsets.

    Returns
    -------
    DriftResult
        ``stats`` also lists the fiducials (mean positions, detections);
        ``reliability`` is a :class:`FiducialSupport`.

    Warns
    -----
    UserWarning
        Frames at the start or end of the movie hold no fiducial (the drift there is held
        constant).
    """
    from stormfold.postprocess.link import link_groups

    table = validate_table(table)
    if not 0 < min_fraction <= 1:
        raise UserError(f"min_fraction must be in (0, 1], got {min_fraction}")
    if int(smooth_frames) != smooth_frames or smooth_frames < 1:
        raise UserError(f"smooth_frames must be a positive integer, got {smooth_frames}")
    n_frames = frames_spanned(table, n_frames)
    if smooth_frames > max(1, n_frames // 2):
        # A window over half the movie averages the drift itself away (review 15: 1000 frames
        # on a 40-frame movie left 2.9 of 78 nm).
        raise UserError(f"smooth_frames {smooth_frames} is more than half the {n_frames} "
                        f"frames: it would average the drift away (use at most "
                        f"{max(1, n_frames // 2)})")
    labels = link_groups(table, radius_nm, max_dark)
    labels, joined = _rejoin_fragments(labels, table["frame"].to_numpy(np.int64),
                                       table["x_nm"].to_numpy(), table["y_nm"].to_numpy(),
                                       radius_nm, max(MIN_FRAGMENT, n_frames // 200))
    counts = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    fiducial_labels = np.flatnonzero(counts >= min_fraction * n_frames)
    if not len(fiducial_labels):
        longest = int(counts.max()) if len(counts) else 0
        raise UserError(f"no fiducials found: no track is present in ≥ {min_fraction:g} of "
                        f"the {n_frames} frames (longest: {longest} frames); lower "
                        f"--min-fraction, raise --radius-nm or use --method rcc")
    index = np.full(len(counts), -1, np.int64)
    index[fiducial_labels] = np.arange(len(fiducial_labels))
    rows = np.flatnonzero(index[labels] >= 0)
    k = index[labels[rows]]
    f = table["frame"].to_numpy()[rows]
    pos = np.column_stack([table["x_nm"].to_numpy()[rows], table["y_nm"].to_numpy()[rows]])
    nk = len(fiducial_labels)
    per_frame = np.bincount(f, minlength=n_frames)
    per_fiducial = np.bincount(k, minlength=nk)
    offsets = np.column_stack([np.bincount(k, pos[:, a], nk) / per_fiducial for a in (0, 1)])
    present = per_frame > 0
    track = np.zeros((n_frames, 2))
    for _ in range(iterations):
        rel = pos - offsets[k]
        for a in (0, 1):
            track[present, a] = (np.bincount(f, rel[:, a], n_frames)[present]
                                 / per_frame[present])
        rel = pos - track[f]
        offsets = np.column_stack([np.bincount(k, rel[:, a], nk) / per_fiducial for a in (0, 1)])
    t = np.arange(n_frames, dtype=np.float64)
    known = np.flatnonzero(present)
    trajectory = interpolate_hold(known.astype(np.float64), track[known], t)
    scatter = pos - offsets[k] - track[f]
    scatter_rms = float(np.sqrt(np.mean(np.sum(scatter ** 2, 1)) / 2))
    steps = np.diff(track[known], axis=0)
    step_rms = float(np.sqrt(np.mean(np.sum(steps ** 2, 1)) / 2)) if len(steps) else 0.0
    support = assess_fiducials(FiducialSupport(nk, int(present.sum()), n_frames,
                                               _uncovered(known, n_frames), scatter_rms,
                                               step_rms))
    if support.applied and support.uncovered_frames:
        spans = " and ".join(f"{a}–{b}" if b > a else f"{a}" for a, b in support.uncovered_frames)
        warnings.warn(f"drift (fiducials): no fiducial in frames {spans} of {n_frames} "
                      f"(1-based): the drift there is held at the nearest measured value, "
                      f"not extrapolated", UserWarning, stacklevel=2)
    if smooth_frames > 1:
        trajectory = uniform_filter1d(trajectory, int(smooth_frames), axis=0, mode="nearest")
    offset = trajectory[0].copy()
    trajectory -= offset
    points = pd.DataFrame({"frame": known, "dx_nm": track[known, 0] - offset[0],
                           "dy_nm": track[known, 1] - offset[1]})
    fiducials = [{"x_nm": rounded(offsets[q, 0]), "y_nm": rounded(offsets[q, 1]),
                  "detections": int(per_fiducial[q])} for q in range(nk)]
    stats = {"method": "fiducials", "radius_nm": float(radius_nm), "max_dark": int(max_dark),
             "min_fraction": float(min_fraction), "smooth_frames": int(smooth_frames),
             "n_fiducials": nk, "fragments_rejoined": joined,
             "frames_with_fiducials": int(present.sum()),
             "fiducial_scatter_rms_nm": rounded(scatter_rms),
             "fiducials": fiducials, **trajectory_summary(trajectory),
             "reliability": support.to_dict()}
    return DriftResult(drift_table(trajectory), points, stats, support)


def _uncovered(known: np.ndarray, n_frames: int) -> list:
    """The frame spans (1-based, inclusive) before the first and after the last frame in
    ``known`` (0-based, sorted)."""
    spans = []
    if known[0] > 0:
        spans.append([1, int(known[0])])
    if known[-1] < n_frames - 1:
        spans.append([int(known[-1]) + 2, int(n_frames)])
    return spans


#: Fragments shorter than this (detections), or than 0.5 % of the frames, are not re-joined:
#: a bead broken by a long miss leaves long pieces, short ones are blinking molecules (or a
#: DNA-PAINT site's binding events) near it.
MIN_FRAGMENT = 10
#: Only this many of the longest fragments are considered (the chaining is quadratic in
#: their number; beads give a few, a dense table thousands of short molecule tracks).
MAX_FRAGMENTS = 5000
#: A piece continues a chain only after a miss of at most this many frames, and when the
#: mean of its first :data:`REJOIN_DETECTIONS` positions lies within :data:`REJOIN_SD` times
#: the two ends' combined scatter (at least :data:`REJOIN_MIN_NM`, at most the linking
#: radius) of the mean of the chain's last ones.
REJOIN_MAX_GAP = 50
REJOIN_DETECTIONS = 20
REJOIN_SD = 4.0
REJOIN_MIN_NM = 5.0


def _rejoin_fragments(labels: np.ndarray, frame: np.ndarray, x: np.ndarray, y: np.ndarray,
                      radius_nm: float, min_detections: int) -> tuple[np.ndarray, int]:
    """Re-join the pieces of one track split by more than ``max_dark`` missed frames.

    A bead detected in 90 % of the frames is missed in 3 consecutive frames every ~1000
    frames: linking splits it, and no piece alone reaches ``min_fraction`` (review 18: 4
    beads gave 3 fiducials). A fragment (≥ ``min_detections`` detections) starting after
    another ended, within ``radius_nm`` (nm) of where that one was last seen, continues it
    (the nearest such end) when the miss lasted at most :data:`REJOIN_MAX_GAP` frames and
    its first positions agree with the chain's last ones within their scatter; over a few
    missed frames the drift moves far less than that, so the positions need no drift
    correction. Fragments overlapping in time (two beads) are never joined.

    Returns
    -------
    labels : numpy.ndarray of int64
        Group labels, a joined fragment taking its predecessor's label.
    joined : int
        Number of joins.
    """
    if not len(labels):
        return labels, 0
    counts = np.bincount(labels)
    pieces = np.flatnonzero(counts >= min_detections)
    if len(pieces) > MAX_FRAGMENTS:
        pieces = np.sort(pieces[np.argsort(-counts[pieces], kind="stable")[:MAX_FRAGMENTS]])
    if len(pieces) < 2:
        return labels, 0
    order = np.lexsort((frame, labels))
    ordered = labels[order]
    first_row = order[np.searchsorted(ordered, pieces, side="left")]
    last_row = order[np.searchsorted(ordered, pieces, side="right") - 1]
    start = frame[first_row]
    # Each piece's position and scatter over its first and its last few detections: a bead
    # that comes back sits where it was, within its own scatter; another bead or a binding
    # site 40 nm away does not (review 19: joined, 9 nm drift error).
    lo = np.searchsorted(ordered, pieces, side="left")
    hi = np.searchsorted(ordered, pieces, side="right")
    ends = [(_spot(order[a:a + REJOIN_DETECTIONS], x, y),
             _spot(order[max(a, b - REJOIN_DETECTIONS):b], x, y)) for a, b in zip(lo, hi)]
    # Open chains: the frame, position and scatter where each was last seen.
    end = np.full(len(pieces), -1, np.int64)
    end_xy = np.zeros((len(pieces), 2))
    end_sd = np.zeros(len(pieces))
    head = np.arange(len(pieces))
    rename = np.arange(len(counts))
    chains = 0
    for i in np.argsort(start, kind="stable"):
        (xy, sd), _ = ends[i]
        distance = np.hypot(*(end_xy[:chains] - xy).T)
        allowed = np.minimum(radius_nm, np.maximum(REJOIN_SD * np.hypot(end_sd[:chains], sd),
                                                   REJOIN_MIN_NM))
        ok = (end[:chains] < start[i]) & (start[i] - end[:chains] <= REJOIN_MAX_GAP) & \
            (distance <= allowed)
        if ok.any():
            c = int(np.flatnonzero(ok)[np.argmin(distance[ok])])
        else:
            c, chains = chains, chains + 1
            head[c] = i
        end[c] = frame[last_row[i]]
        end_xy[c], end_sd[c] = ends[i][1]
        rename[pieces[i]] = pieces[head[c]]
    return rename[labels], int(len(pieces) - chains)


def _spot(rows: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Mean position (nm) of ``rows`` and their RMS scatter about it (nm, per axis)."""
    xy = np.column_stack([x[rows], y[rows]])
    return xy.mean(axis=0), float(np.sqrt(np.mean(np.var(xy, axis=0))))
