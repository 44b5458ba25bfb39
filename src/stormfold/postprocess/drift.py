"""Lateral drift estimation and correction (SPEC §8).

Convention: the drift d(t) = (dx_nm, dy_nm) of frame t is where the sample has moved
by then, so a measured position is the true position plus d(t) and the correction
subtracts it. Only drift *changes* can be measured, so the trajectory is anchored at
d(0) = 0 (frame 0 keeps its coordinates, as in the simulator's ``drift.csv``).

Two estimators:

**Redundant cross-correlation (RCC)**, without fiducials (Wang et al., Opt. Express
22:15982, 2014). The movie is cut into ``n_bins`` time bins of equal frame count; the
localizations of each bin are rendered as a histogram with pixel ``pixel_nm`` (blurred by
a Gaussian of σ ``blur_nm`` in Fourier space so the correlation peak is smooth) and
Fourier transformed once. For *every* pair of bins i < j the cross-correlation
c(τ) = Σ Iᵢ(x) Iⱼ(x + τ) (FFT) peaks at the displacement rᵢⱼ ≈ dⱼ − dᵢ; the peak is
located to sub-pixel precision with the three-point Gaussian (log-parabola) fit along
each axis. The over-determined system {dⱼ − dᵢ = rᵢⱼ} is solved by least squares; pairs
whose residual exceeds ``max_residual_nm`` are dropped (keeping the graph of pairs
connected) and the system is solved again. The bin drifts, placed at the mean frame of
each bin, are interpolated to every frame (natural cubic spline, or linear).

**Fiducials**: long-lived emitters (beads) are found by linking
(:func:`stormfold.postprocess.link.link_groups`): groups present in at least
``min_fraction`` of the frames. Their tracks pₖ(t) = d(t) + cₖ + noise are averaged with
the per-fiducial offsets cₖ estimated jointly (alternating least squares), frames without
a fiducial are interpolated, and the trajectory is optionally smoothed with a moving
average.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import pandas as pd
import scipy.fft
from scipy.interpolate import CubicSpline
from scipy.ndimage import uniform_filter1d
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from stormfold.errors import UserError
from stormfold.postprocess.render import histogram_2d
from stormfold.table import validate_table

METHODS = ("rcc", "fiducials")
#: Largest RCC rendering (pixels per bin image); beyond it the pixel size is refused.
MAX_RCC_PIXELS = 2 ** 25
#: Bins with fewer localizations than this carry no usable correlation and are skipped.
MIN_LOCS_PER_BIN = 10


@dataclass
class DriftParams:
    """Parameters of :func:`estimate_drift` (the ``drift`` section of a post-processing YAML).

    Attributes
    ----------
    method : {"rcc", "fiducials"}
        Redundant cross-correlation, or fiducial tracks.
    bins : int
        RCC: number of time bins (≥ 2).
    pixel_nm : float
        RCC: pixel size (nm) of the bin renderings.
    max_shift_nm : float or None
        RCC: largest drift between two bins searched (nm; None: the whole image).
    max_residual_nm : float or None
        RCC: pairs whose least-squares residual exceeds this are rejected
        (nm; None: 2 × pixel_nm).
    blur_nm : float or None
        RCC: Gaussian σ (nm) applied to the bin renderings (None: pixel_nm).
    interpolation : {"cubic", "linear"}
        RCC: how bin drifts are interpolated to every frame.
    radius_nm, max_dark : float, int
        Fiducials: linking radius (nm) and allowed dark frames.
    min_fraction : float
        Fiducials: a track present in at least this fraction of the frames is a fiducial.
    smooth_frames : int
        Fiducials: moving-average window (frames) of the averaged track (1: none).
    """

    method: Literal["rcc", "fiducials"] = "rcc"
    bins: int = 10
    pixel_nm: float = 20.0
    max_shift_nm: Optional[float] = None
    max_residual_nm: Optional[float] = None
    blur_nm: Optional[float] = None
    interpolation: Literal["cubic", "linear"] = "cubic"
    radius_nm: float = 50.0
    max_dark: int = 2
    min_fraction: float = 0.5
    smooth_frames: int = 1

    def validate(self) -> None:
        if self.bins < 2:
            raise UserError(f"drift: bins must be ≥ 2, got {self.bins}")
        for name in ("pixel_nm", "radius_nm"):
            if not getattr(self, name) > 0:
                raise UserError(f"drift: {name} must be > 0, got {getattr(self, name)}")
        for name in ("max_shift_nm", "max_residual_nm", "blur_nm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"drift: {name} must be > 0 (or null), got {value}")
        if self.max_dark < 0:
            raise UserError(f"drift: max_dark must be ≥ 0, got {self.max_dark}")
        if not 0 < self.min_fraction <= 1:
            raise UserError(f"drift: min_fraction must be in (0, 1], got {self.min_fraction}")
        if self.smooth_frames < 1:
            raise UserError(f"drift: smooth_frames must be ≥ 1, got {self.smooth_frames}")


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
        Method, parameters and figures (drift RMS and range, RCC residual, pairs used).
    """

    drift: pd.DataFrame
    points: pd.DataFrame
    stats: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- RCC
def _peak_subpixel(cc: np.ndarray, max_shift_px: Optional[float]) -> tuple[float, float]:
    """Sub-pixel (dy, dx) of the maximum of a circular correlation (zero shift at [0, 0])."""
    rows, cols = cc.shape
    centred = np.fft.fftshift(cc)
    cy, cx = rows // 2, cols // 2
    if max_shift_px is not None:
        m = int(np.ceil(max_shift_px))
        y0, y1 = max(cy - m, 0), min(cy + m + 1, rows)
        x0, x1 = max(cx - m, 0), min(cx + m + 1, cols)
    else:
        y0, y1, x0, x1 = 0, rows, 0, cols
    window = centred[y0:y1, x0:x1]
    iy, ix = np.unravel_index(int(np.argmax(window)), window.shape)
    py, px = iy + y0, ix + x0
    floor = max(float(centred[py, px]), 1e-30) * 1e-9

    def offset(minus: float, zero: float, plus: float) -> float:
        lm, l0, lp = (np.log(max(v, floor)) for v in (minus, zero, plus))
        denominator = lm - 2 * l0 + lp
        if denominator >= 0:
            return 0.0
        return float(np.clip(0.5 * (lm - lp) / denominator, -0.5, 0.5))

    dy = offset(centred[(py - 1) % rows, px], centred[py, px], centred[(py + 1) % rows, px])
    dx = offset(centred[py, (px - 1) % cols], centred[py, px], centred[py, (px + 1) % cols])
    return py - cy + dy, px - cx + dx


def _solve_pairs(i: np.ndarray, j: np.ndarray, shifts: np.ndarray, n_bins: int,
                 keep: np.ndarray) -> np.ndarray:
    """Least-squares bin drifts (n_bins, 2) with d₀ = 0 from the kept pair shifts."""
    rows = np.flatnonzero(keep)
    a = np.zeros((len(rows), n_bins))
    a[np.arange(len(rows)), j[rows]] = 1.0
    a[np.arange(len(rows)), i[rows]] = -1.0
    solution = np.linalg.lstsq(a[:, 1:], shifts[rows], rcond=None)[0]
    return np.vstack([np.zeros((1, 2)), solution])


def _connected(i: np.ndarray, j: np.ndarray, n_bins: int) -> bool:
    graph = coo_matrix((np.ones(len(i)), (i, j)), shape=(n_bins, n_bins))
    return connected_components(graph, directed=False)[0] == 1


def rcc_shifts(images_fft: list[np.ndarray], shape: tuple[int, int],
               max_shift_px: Optional[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Displacement (pixels, as (dx, dy)) of every bin j relative to every bin i < j.

    Parameters
    ----------
    images_fft : list of complex arrays
        ``rfft2`` of each bin's rendering (all of real shape ``shape``).
    shape : (rows, cols)
        Real shape of the renderings.
    max_shift_px : float or None
        Search radius of the correlation peak (pixels; None: whole image).

    Returns
    -------
    i, j : (n_pairs,) int
        Bin indices.
    shifts : (n_pairs, 2) float
        (dx, dy) in pixels.
    """
    n = len(images_fft)
    i, j = np.triu_indices(n, k=1)
    shifts = np.zeros((len(i), 2))
    for p, (a, b) in enumerate(zip(i, j)):
        cc = scipy.fft.irfft2(np.conj(images_fft[a]) * images_fft[b], s=shape, workers=-1)
        dy, dx = _peak_subpixel(cc, max_shift_px)
        shifts[p] = dx, dy
    return i, j, shifts


def estimate_drift_rcc(table: pd.DataFrame, n_bins: int = 10, pixel_nm: float = 20.0,
                       n_frames: Optional[int] = None, max_shift_nm: Optional[float] = None,
                       max_residual_nm: Optional[float] = None, blur_nm: Optional[float] = None,
                       interpolation: str = "cubic") -> DriftResult:
    """Drift by redundant cross-correlation of time bins (see the module docstring).

    Parameters
    ----------
    table : pandas.DataFrame
        Localization table (of a structure that stays put apart from the drift).
    n_bins : int
        Number of time bins (≥ 2); each should hold enough localizations to show the
        structure (a few hundred or more).
    pixel_nm : float
        Pixel size (nm) of the bin renderings.
    n_frames : int, optional
        Movie length (default: last frame + 1).
    max_shift_nm : float, optional
        Largest displacement between two bins searched (nm; default: whole image).
    max_residual_nm : float, optional
        Residual (nm) above which a pair is rejected (default 2 × ``pixel_nm``).
    blur_nm : float, optional
        Gaussian σ (nm) of the renderings (default ``pixel_nm``).
    interpolation : {"cubic", "linear"}
        Interpolation of the bin drifts to every frame.

    Returns
    -------
    DriftResult
    """
    table = validate_table(table)
    if int(n_bins) != n_bins or n_bins < 2:
        raise UserError(f"RCC needs at least 2 time bins, got {n_bins}")
    if not np.isfinite(pixel_nm) or pixel_nm <= 0:
        raise UserError(f"RCC pixel size must be > 0 nm, got {pixel_nm}")
    if interpolation not in ("cubic", "linear"):
        raise UserError(f"unknown interpolation {interpolation!r}: choose cubic or linear")
    frame = table["frame"].to_numpy()
    n_frames = _n_frames(table, n_frames)
    if n_frames < n_bins:
        raise UserError(f"RCC with {n_bins} time bins needs at least {n_bins} frames, "
                        f"the table spans {n_frames}")
    x = table["x_nm"].to_numpy()
    y = table["y_nm"].to_numpy()
    blur_nm = pixel_nm if blur_nm is None else float(blur_nm)
    max_residual_nm = 2.0 * pixel_nm if max_residual_nm is None else float(max_residual_nm)

    edges = np.round(np.linspace(0, n_frames, n_bins + 1)).astype(np.int64)
    which = np.searchsorted(edges, frame, side="right") - 1
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(n_bins + 1))
    members = [order[bounds[k]:bounds[k + 1]] for k in range(n_bins)]
    used = [k for k in range(n_bins) if len(members[k]) >= MIN_LOCS_PER_BIN]
    if len(used) < 2:
        raise UserError(f"RCC needs at least 2 time bins with ≥ {MIN_LOCS_PER_BIN} "
                        f"localizations; got {len(used)} of {n_bins} (use fewer --bins)")

    # Grid over the data plus a margin, at FFT-friendly sizes; zero padding also keeps
    # the circular correlation from wrapping large shifts onto small ones.
    margin = 4 * blur_nm + 2 * pixel_nm
    origin = (float(x.min()) - margin, float(y.min()) - margin)
    cols = scipy.fft.next_fast_len(int(np.ceil((x.max() - origin[0] + margin) / pixel_nm)) + 1,
                                   real=True)
    rows = scipy.fft.next_fast_len(int(np.ceil((y.max() - origin[1] + margin) / pixel_nm)) + 1,
                                   real=True)
    if rows * cols > MAX_RCC_PIXELS:
        raise UserError(f"RCC rendering at {pixel_nm:g} nm would be {cols} × {rows} pixels: "
                        f"use a larger --pixel-nm")
    fy = scipy.fft.fftfreq(rows)[:, None]
    fx = scipy.fft.rfftfreq(cols)[None, :]
    sigma_px = blur_nm / pixel_nm
    transfer = np.exp(-2 * np.pi ** 2 * sigma_px ** 2 * (fx ** 2 + fy ** 2)).astype(np.float32)
    spectra = []
    for k in used:
        m = members[k]
        image = histogram_2d(x[m], y[m], pixel_nm, (rows, cols), origin).astype(np.float32)
        spectra.append(scipy.fft.rfft2(image, workers=-1) * transfer)
    max_shift_px = None if max_shift_nm is None else max_shift_nm / pixel_nm
    i, j, shifts_px = rcc_shifts(spectra, (rows, cols), max_shift_px)
    del spectra
    shifts = shifts_px * pixel_nm
    nb = len(used)

    keep = np.ones(len(i), bool)
    bin_drift = _solve_pairs(i, j, shifts, nb, keep)
    residual = np.linalg.norm(shifts - (bin_drift[j] - bin_drift[i]), axis=1)
    keep = residual <= max_residual_nm
    # Re-admit the best rejected pairs until every bin is tied to the others again.
    for p in np.argsort(residual):
        if _connected(i[keep], j[keep], nb):
            break
        keep[p] = True
    n_rejected = int((~keep).sum())
    if n_rejected:
        bin_drift = _solve_pairs(i, j, shifts, nb, keep)
    residual = np.linalg.norm(shifts - (bin_drift[j] - bin_drift[i]), axis=1)

    centres = np.array([frame[members[k]].mean() for k in used])
    t = np.arange(n_frames, dtype=np.float64)
    if interpolation == "cubic" and nb >= 3:
        trajectory = CubicSpline(centres, bin_drift, axis=0, bc_type="natural")(t)
    else:
        trajectory = _linear(centres, bin_drift, t)
    offset = trajectory[0].copy()
    trajectory -= offset
    bin_drift = bin_drift - offset
    drift = _drift_table(trajectory)
    points = pd.DataFrame({"frame": centres, "dx_nm": bin_drift[:, 0], "dy_nm": bin_drift[:, 1]})
    stats = {"method": "rcc", "bins": int(n_bins), "bins_used": nb, "pixel_nm": float(pixel_nm),
             "blur_nm": blur_nm, "max_shift_nm": max_shift_nm,
             "max_residual_nm": max_residual_nm, "interpolation": interpolation,
             "image_shape": [rows, cols], "pairs": int(len(i)), "pairs_rejected": n_rejected,
             "pair_residual_rms_nm": _round(np.sqrt(np.mean(residual[keep] ** 2))),
             **_summary(trajectory)}
    return DriftResult(drift, points, stats)


def _linear(t_known: np.ndarray, values: np.ndarray, t: np.ndarray) -> np.ndarray:
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


# --------------------------------------------------------------------------- fiducials
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
        ``stats`` also lists the fiducials (mean positions, detections).
    """
    from stormfold.postprocess.link import link_groups

    table = validate_table(table)
    if not 0 < min_fraction <= 1:
        raise UserError(f"min_fraction must be in (0, 1], got {min_fraction}")
    if int(smooth_frames) != smooth_frames or smooth_frames < 1:
        raise UserError(f"smooth_frames must be a positive integer, got {smooth_frames}")
    n_frames = _n_frames(table, n_frames)
    labels = link_groups(table, radius_nm, max_dark)
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
    trajectory = _linear(known.astype(np.float64), track[known], t) if len(known) > 1 else \
        np.repeat(track[known], n_frames, axis=0)
    if smooth_frames > 1:
        trajectory = uniform_filter1d(trajectory, int(smooth_frames), axis=0, mode="nearest")
    offset = trajectory[0].copy()
    trajectory -= offset
    points = pd.DataFrame({"frame": known, "dx_nm": track[known, 0] - offset[0],
                           "dy_nm": track[known, 1] - offset[1]})
    scatter = pos - offsets[k] - track[f]
    fiducials = [{"x_nm": _round(offsets[q, 0]), "y_nm": _round(offsets[q, 1]),
                  "detections": int(per_fiducial[q])} for q in range(nk)]
    stats = {"method": "fiducials", "radius_nm": float(radius_nm), "max_dark": int(max_dark),
             "min_fraction": float(min_fraction), "smooth_frames": int(smooth_frames),
             "n_fiducials": nk, "frames_with_fiducials": int(present.sum()),
             "fiducial_scatter_rms_nm": _round(np.sqrt(np.mean(np.sum(scatter ** 2, 1)) / 2)),
             "fiducials": fiducials, **_summary(trajectory)}
    return DriftResult(_drift_table(trajectory), points, stats)


# --------------------------------------------------------------------------- common
def _n_frames(table: pd.DataFrame, n_frames: Optional[int]) -> int:
    if not len(table):
        raise UserError("the localization table is empty: nothing to estimate drift from")
    last = int(table["frame"].max()) + 1
    if n_frames is None:
        return last
    if n_frames < last:
        raise UserError(f"n_frames {n_frames} is smaller than the table's last frame + 1 ({last})")
    return int(n_frames)


def _round(value: float) -> float:
    return round(float(value), 4)


def _drift_table(trajectory: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"frame": np.arange(len(trajectory), dtype=np.int64),
                         "dx_nm": trajectory[:, 0], "dy_nm": trajectory[:, 1]})


def _summary(trajectory: np.ndarray) -> dict:
    centred = trajectory - trajectory.mean(axis=0)
    return {"drift_rms_nm": _round(np.sqrt(np.mean(np.sum(centred ** 2, axis=1)))),
            "drift_range_x_nm": _round(np.ptp(trajectory[:, 0])),
            "drift_range_y_nm": _round(np.ptp(trajectory[:, 1])),
            "drift_end_nm": [_round(trajectory[-1, 0]), _round(trajectory[-1, 1])]}


def estimate_drift(table: pd.DataFrame, method: str = "rcc", n_frames: Optional[int] = None,
                   **params) -> DriftResult:
    """Estimate the drift with ``method`` (``"rcc"`` or ``"fiducials"``).

    ``params`` are the keyword arguments of :func:`estimate_drift_rcc` or
    :func:`estimate_drift_fiducials`; :class:`DriftParams` fields are accepted too
    (``bins`` for ``n_bins``; fields of the other method are ignored).
    """
    if method == "rcc":
        keys = {"bins": "n_bins", "n_bins": "n_bins", "pixel_nm": "pixel_nm",
                "max_shift_nm": "max_shift_nm", "max_residual_nm": "max_residual_nm",
                "blur_nm": "blur_nm", "interpolation": "interpolation"}
        return estimate_drift_rcc(table, n_frames=n_frames,
                                  **{keys[k]: v for k, v in params.items() if k in keys})
    if method == "fiducials":
        keys = ("radius_nm", "max_dark", "min_fraction", "smooth_frames", "iterations")
        return estimate_drift_fiducials(table, n_frames=n_frames,
                                        **{k: v for k, v in params.items() if k in keys})
    raise UserError(f"unknown drift method {method!r}: choose one of {', '.join(METHODS)}")


def read_drift_csv(path: str | Path) -> pd.DataFrame:
    """Read a drift trajectory (``frame`` 0-based, ``dx_nm``, ``dy_nm``), e.g. the
    ``drift.csv`` of ``stormfold simulate`` or of the drift step."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable drift CSV ({type(exc).__name__})") from None
    missing = [c for c in ("frame", "dx_nm", "dy_nm") if c not in table.columns]
    if missing:
        raise UserError(f"{path}: drift table lacks column(s) {', '.join(missing)}")
    return table[["frame", "dx_nm", "dy_nm"]].astype(
        {"frame": np.int64, "dx_nm": np.float64, "dy_nm": np.float64})


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


def correct_drift(table: pd.DataFrame, method: str = "rcc", n_frames: Optional[int] = None,
                  **params) -> tuple[pd.DataFrame, DriftResult]:
    """Estimate the drift (:func:`estimate_drift`) and subtract it (:func:`apply_drift`).

    Returns
    -------
    corrected : pandas.DataFrame
    result : DriftResult
    """
    result = estimate_drift(table, method, n_frames=n_frames, **params)
    return apply_drift(table, result.drift), result


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
