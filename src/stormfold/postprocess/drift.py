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

import warnings
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
    max_drift_fraction : float
        RCC: an estimated drift larger than this fraction of the field is taken as a
        failure of the estimate (raise it for a stage known to drift that far).
    on_unsupported : {"error", "warn"}
        RCC: an estimate the data do not support (:class:`DriftReliability`) stops the
        chain with a one-line error, or is reported as a warning; nothing is applied.
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
    max_drift_fraction: float = 0.2
    on_unsupported: Literal["error", "warn"] = "error"

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
        if not 0 < self.max_drift_fraction <= 1:
            raise UserError(f"drift: max_drift_fraction must be in (0, 1], got "
                            f"{self.max_drift_fraction}")
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
        Method, parameters and figures (drift RMS and range, RCC residual, pairs used,
        RCC ``reliability``).
    reliability : DriftReliability or None
        RCC only: how far the estimate can be trusted and whether it is applied
        (:func:`drift_to_apply`).
    """

    drift: pd.DataFrame
    points: pd.DataFrame
    stats: dict = field(default_factory=dict)
    reliability: Optional["DriftReliability"] = None


# --------------------------------------------------------------------------- reliability
@dataclass
class DriftReliability:
    """How far an RCC estimate can be trusted, and what is done with it.

    Attributes
    ----------
    locs_per_bin_min, locs_per_bin_median : float
        Localizations per time bin (all bins).
    peak_z_min, peak_z_median : float
        Prominence of the cross-correlation peaks of the bin pairs: (peak − mean) /
        standard deviation of the correlation image. Bins that show one structure give
        sharp peaks (z ≳ 10); structureless or too sparse data give the largest of many
        random values (z ≈ 4–6).
    pairs, pairs_rejected : int
        Bin pairs, and pairs dropped as inconsistent with the others.
    pair_residual_rms_nm : float
        RMS residual of the kept pairs in the least-squares system.
    precision_nm : float or None
        Split-half precision of the bin drifts: the data of every bin are split into two
        halves (interleaved blocks of frames), RCC is run on each, and the RMS difference
        of the two trajectories (mean removed) / 2 estimates the error of the full
        estimate. None when a half is too sparse to be estimated.
    drift_rms_nm : float
        RMS of the estimated bin drifts about their mean (what would be corrected).
    drift_max_nm : float
        Largest estimated displacement from frame 0.
    field_nm : float
        Smaller side of the field (camera field of view, else the localizations' extent).
    verdict : {"applied", "not significant", "unsupported"}
        ``applied``: the drift is corrected; ``not significant``: the estimate does not
        exceed :data:`SIGNIFICANCE` × its precision, nothing is applied; ``unsupported``:
        the data do not support an estimate (see ``problems``), nothing is applied.
    problems : list of str
        Why the estimate is unsupported (empty otherwise).
    """

    locs_per_bin_min: float
    locs_per_bin_median: float
    peak_z_min: float
    peak_z_median: float
    pairs: int
    pairs_rejected: int
    pair_residual_rms_nm: float
    precision_nm: Optional[float]
    drift_rms_nm: float
    drift_max_nm: float
    field_nm: float
    verdict: str = "applied"
    problems: list = field(default_factory=list)

    @property
    def applied(self) -> bool:
        return self.verdict == "applied"

    def to_dict(self) -> dict:
        """Plain numbers and strings (YAML-safe), for the chain's record and the report."""
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, float):
                value = _round(value)
            out[name] = list(value) if isinstance(value, list) else value
        out["applied"] = self.applied
        return out

    def summary(self) -> str:
        """One line: the verdict and its figures."""
        precision = "n/a" if self.precision_nm is None else f"{self.precision_nm:.1f} nm"
        figures = (f"RMS {self.drift_rms_nm:.1f} nm, precision {precision}, "
                   f"{self.locs_per_bin_min:.0f} localizations per bin, peak z "
                   f"{self.peak_z_median:.1f}, {self.pairs_rejected}/{self.pairs} pairs rejected")
        if self.verdict == "unsupported":
            return f"estimate not supported by the data: {'; '.join(self.problems)} ({figures})"
        if self.verdict == "not significant":
            return f"no significant drift, nothing applied ({figures})"
        return f"corrected ({figures})"


#: Criteria of :func:`assess_rcc` (measured: docs/postprocess.md, "Drift reliability").
#: Fewer localizations per bin than this gave bin drifts off by 13–1700 nm (≥ 185: ≤ 7 nm).
MIN_RELIABLE_LOCS_PER_BIN = 150
#: Median correlation-peak prominence below this: no structure common to the bins.
MIN_PEAK_Z = 8.0
#: More pairs than this rejected as inconsistent: the pair system contradicts itself.
MAX_REJECTED_FRACTION = 1.0 / 3.0
#: Default: a drift larger than this fraction of the field is taken as a failure.
MAX_DRIFT_FRACTION = 0.2
#: A drift whose RMS is below this multiple of its precision is not corrected.
SIGNIFICANCE = 3.0


def assess_rcc(reliability: DriftReliability,
               max_drift_fraction: float = MAX_DRIFT_FRACTION) -> DriftReliability:
    """Set ``verdict`` and ``problems`` of ``reliability`` from the criteria above."""
    r = reliability
    problems = []
    if r.locs_per_bin_min < MIN_RELIABLE_LOCS_PER_BIN:
        problems.append(f"too few localizations per bin ({r.locs_per_bin_min:.0f} < "
                        f"{MIN_RELIABLE_LOCS_PER_BIN}: use fewer bins)")
    if r.peak_z_median < MIN_PEAK_Z:
        problems.append(f"no structure common to the time bins (correlation peak z "
                        f"{r.peak_z_median:.1f} < {MIN_PEAK_Z:g})")
    if r.pairs and r.pairs_rejected / r.pairs > MAX_REJECTED_FRACTION:
        problems.append(f"inconsistent pairs ({r.pairs_rejected} of {r.pairs} rejected)")
    if r.drift_max_nm > max_drift_fraction * r.field_nm:
        problems.append(f"estimated drift {r.drift_max_nm:.0f} nm exceeds "
                        f"{max_drift_fraction:.0%} of the {r.field_nm:.0f} nm field")
    if r.precision_nm is None:
        problems.append("a half of the data is too sparse to check the estimate")
    r.problems = problems
    if problems:
        r.verdict = "unsupported"
    elif r.drift_rms_nm <= SIGNIFICANCE * r.precision_nm:
        r.verdict = "not significant"
    else:
        r.verdict = "applied"
    return r


class DriftUnsupported(UserError):
    """An RCC estimate the data do not support (refused: nothing is applied)."""


# --------------------------------------------------------------------------- RCC
def _peak_subpixel(cc: np.ndarray, max_shift_px: Optional[float]) -> tuple[float, float, float]:
    """Sub-pixel (dy, dx) of the maximum of a circular correlation (zero shift at [0, 0])
    and the peak's prominence z = (peak − mean) / std of the correlation."""
    rows, cols = cc.shape
    if max_shift_px is not None:
        m = int(np.ceil(max_shift_px))
        ys = np.arange(-min(m, rows // 2), min(m, (rows - 1) // 2) + 1)
        xs = np.arange(-min(m, cols // 2), min(m, (cols - 1) // 2) + 1)
        window = cc[np.ix_(ys % rows, xs % cols)]
        iy, ix = np.unravel_index(int(np.argmax(window)), window.shape)
        py, px = int(ys[iy]), int(xs[ix])
    else:
        iy, ix = np.unravel_index(int(np.argmax(cc)), cc.shape)
        py = int(iy) - rows if iy > rows // 2 else int(iy)
        px = int(ix) - cols if ix > cols // 2 else int(ix)
    peak = float(cc[py % rows, px % cols])
    # The correlation is smooth (blurred renderings): every 4th pixel gives its statistics.
    sample = cc[::4, ::4]
    spread = float(sample.std())
    z = (peak - float(sample.mean())) / spread if spread > 0 else 0.0
    floor = max(peak, 1e-30) * 1e-9

    def offset(minus: float, zero: float, plus: float) -> float:
        lm, l0, lp = (np.log(max(v, floor)) for v in (minus, zero, plus))
        denominator = lm - 2 * l0 + lp
        if denominator >= 0:
            return 0.0
        return float(np.clip(0.5 * (lm - lp) / denominator, -0.5, 0.5))

    dy = offset(cc[(py - 1) % rows, px % cols], peak, cc[(py + 1) % rows, px % cols])
    dx = offset(cc[py % rows, (px - 1) % cols], peak, cc[py % rows, (px + 1) % cols])
    return py + dy, px + dx, z


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
               max_shift_px: Optional[float],
               pairs: Optional[tuple[np.ndarray, np.ndarray]] = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Displacement (pixels, as (dx, dy)) of bin j relative to bin i for every pair i < j
    (or the ``pairs`` given).

    Parameters
    ----------
    images_fft : list of complex arrays
        ``rfft2`` of each bin's rendering (all of real shape ``shape``).
    shape : (rows, cols)
        Real shape of the renderings.
    max_shift_px : float or None
        Search radius of the correlation peak (pixels; None: whole image).
    pairs : (i, j), optional
        Bin indices of the pairs to correlate (default: all pairs i < j).

    Returns
    -------
    i, j : (n_pairs,) int
        Bin indices.
    shifts : (n_pairs, 2) float
        (dx, dy) in pixels.
    peak_z : (n_pairs,) float
        Prominence of each correlation peak ((peak − mean) / std).
    """
    i, j = np.triu_indices(len(images_fft), k=1) if pairs is None else pairs
    shifts = np.zeros((len(i), 2))
    peak_z = np.zeros(len(i))
    for p, (a, b) in enumerate(zip(i, j)):
        cc = scipy.fft.irfft2(np.conj(images_fft[a]) * images_fft[b], s=shape, workers=-1)
        dy, dx, peak_z[p] = _peak_subpixel(cc, max_shift_px)
        shifts[p] = dx, dy
    return i, j, shifts, peak_z


@dataclass
class _Grid:
    """The common rendering of all bins: origin (nm), shape, pixel and blur transfer."""

    origin: tuple[float, float]
    shape: tuple[int, int]
    pixel_nm: float
    transfer: np.ndarray


def _rcc_grid(x: np.ndarray, y: np.ndarray, pixel_nm: float, blur_nm: float) -> _Grid:
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
    return _Grid(origin, (rows, cols), float(pixel_nm), transfer)


@dataclass
class _PairSystem:
    bin_drift: np.ndarray  # (n_bins, 2) nm, d₀ = 0
    residual: np.ndarray  # (n_pairs,) nm
    keep: np.ndarray  # (n_pairs,) bool
    peak_z: np.ndarray  # (n_pairs,)


def _bin_spectra(x: np.ndarray, y: np.ndarray, members: list[np.ndarray],
                 grid: _Grid) -> list[np.ndarray]:
    """Blurred Fourier transform of each bin's histogram."""
    spectra = []
    for m in members:
        image = histogram_2d(x[m], y[m], grid.pixel_nm, grid.shape, grid.origin)
        spectra.append(scipy.fft.rfft2(image.astype(np.float32), workers=-1) * grid.transfer)
    return spectra


def _rcc_solve(spectra: list[np.ndarray], grid: _Grid, max_shift_nm: Optional[float],
               max_residual_nm: float,
               pairs: Optional[tuple[np.ndarray, np.ndarray]] = None) -> _PairSystem:
    """Bin drifts from the shifts of the bin ``pairs`` (default: all pairs)."""
    max_shift_px = None if max_shift_nm is None else max_shift_nm / grid.pixel_nm
    i, j, shifts_px, peak_z = rcc_shifts(spectra, grid.shape, max_shift_px, pairs)
    shifts = shifts_px * grid.pixel_nm
    nb = len(spectra)
    keep = np.ones(len(i), bool)
    bin_drift = _solve_pairs(i, j, shifts, nb, keep)
    residual = np.linalg.norm(shifts - (bin_drift[j] - bin_drift[i]), axis=1)
    keep = residual <= max_residual_nm
    # Re-admit the best rejected pairs until every bin is tied to the others again.
    for p in np.argsort(residual):
        if _connected(i[keep], j[keep], nb):
            break
        keep[p] = True
    if not keep.all():
        bin_drift = _solve_pairs(i, j, shifts, nb, keep)
    residual = np.linalg.norm(shifts - (bin_drift[j] - bin_drift[i]), axis=1)
    return _PairSystem(bin_drift, residual, keep, peak_z)


def _split_halves(frame: np.ndarray, members: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Two halves of every bin: interleaved blocks of frames (1/20 of the bin each), so a
    molecule's consecutive detections stay in one half and both halves span the bin;
    bins of too few distinct frames alternate localizations instead."""
    halves: list[list[np.ndarray]] = [[], []]
    for m in members:
        f = frame[m]
        block = max(1, int(np.ptp(f)) // 20) if len(f) else 1
        side = ((f - f.min()) // block) % 2 if len(f) else np.zeros(0, np.int64)
        if len(f) and not 0.25 <= side.mean() <= 0.75:
            side = np.arange(len(f)) % 2
        halves[0].append(m[side == 0])
        halves[1].append(m[side == 1])
    return halves


#: The split-half estimates correlate each bin with the next few only (their precision
#: is then slightly pessimistic), keeping their cost linear in the number of bins.
HALF_PAIR_BAND = 3


def _band_pairs(n_bins: int, band: int = HALF_PAIR_BAND) -> tuple[np.ndarray, np.ndarray]:
    i, j = np.triu_indices(n_bins, k=1)
    near = j - i <= band
    return i[near], j[near]


def _split_half_precision(drift_a: np.ndarray, drift_b: np.ndarray) -> float:
    """Precision (nm) of the bin drifts from the two halves' estimates: their RMS difference
    (mean removed) / 2, as the full estimate averages two such halves."""
    difference = drift_a - drift_b
    difference -= difference.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(difference ** 2, axis=1))) / 2)


def estimate_drift_rcc(table: pd.DataFrame, n_bins: int = 10, pixel_nm: float = 20.0,
                       n_frames: Optional[int] = None, max_shift_nm: Optional[float] = None,
                       max_residual_nm: Optional[float] = None, blur_nm: Optional[float] = None,
                       interpolation: str = "cubic", field_nm: Optional[float] = None,
                       max_drift_fraction: float = MAX_DRIFT_FRACTION) -> DriftResult:
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
    field_nm : float, optional
        Smaller side of the camera's field of view (nm), for the reliability check
        (default: the localizations' extent).
    max_drift_fraction : float
        An estimated drift above this fraction of ``field_nm`` is unsupported.

    Returns
    -------
    DriftResult
        With :attr:`DriftResult.reliability` (:class:`DriftReliability`): whether the
        data support the estimate and whether it is significant. The estimate itself
        (``drift``) is returned either way; :func:`drift_to_apply` decides what is
        corrected.
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
    grid = _rcc_grid(x, y, pixel_nm, blur_nm)
    chosen = [members[k] for k in used]
    # Each bin is rendered once per half; the full bin's spectrum is their sum.
    halves = _split_halves(frame, chosen)
    spectra, spectra_b = (_bin_spectra(x, y, half, grid) for half in halves)
    precision = None
    if min(len(m) for half in halves for m in half) >= MIN_LOCS_PER_BIN:
        band = _band_pairs(len(chosen))
        precision = _split_half_precision(
            *(_rcc_solve(half, grid, max_shift_nm, max_residual_nm, band).bin_drift
              for half in (spectra, spectra_b)))
    for full, half in zip(spectra, spectra_b):
        full += half
    del spectra_b
    system = _rcc_solve(spectra, grid, max_shift_nm, max_residual_nm)
    del spectra
    bin_drift, keep, nb = system.bin_drift, system.keep, len(used)

    centres = np.array([frame[m].mean() for m in chosen])
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
    counts = np.array([len(m) for m in members])
    if field_nm is None:
        field_nm = float(min(np.ptp(x), np.ptp(y)))
    about_mean = bin_drift - bin_drift.mean(axis=0)
    reliability = assess_rcc(DriftReliability(
        locs_per_bin_min=float(counts.min()), locs_per_bin_median=float(np.median(counts)),
        peak_z_min=float(system.peak_z.min()), peak_z_median=float(np.median(system.peak_z)),
        pairs=int(len(keep)), pairs_rejected=int((~keep).sum()),
        pair_residual_rms_nm=float(np.sqrt(np.mean(system.residual[keep] ** 2))),
        precision_nm=precision,
        drift_rms_nm=float(np.sqrt(np.mean(np.sum(about_mean ** 2, axis=1)))),
        drift_max_nm=float(np.max(np.hypot(trajectory[:, 0], trajectory[:, 1]))),
        field_nm=float(field_nm)), max_drift_fraction)
    stats = {"method": "rcc", "bins": int(n_bins), "bins_used": nb, "pixel_nm": float(pixel_nm),
             "blur_nm": blur_nm, "max_shift_nm": max_shift_nm,
             "max_residual_nm": max_residual_nm, "interpolation": interpolation,
             "image_shape": list(grid.shape), "pairs": int(len(keep)),
             "pairs_rejected": int((~keep).sum()),
             "pair_residual_rms_nm": _round(reliability.pair_residual_rms_nm),
             **_summary(trajectory), "reliability": reliability.to_dict()}
    return DriftResult(drift, points, stats, reliability)


def drift_to_apply(result: DriftResult, on_unsupported: str = "error") -> pd.DataFrame:
    """The trajectory to subtract: the estimate when its reliability says ``applied``
    (fiducial estimates always), else zeros.

    Parameters
    ----------
    result : DriftResult
    on_unsupported : {"error", "warn"}
        An unsupported estimate raises :class:`DriftUnsupported` (a one-line UserError
        naming the reasons), or gives a warning; either way nothing is applied.
    """
    reliability = result.reliability
    if reliability is None or reliability.applied:
        return result.drift
    if reliability.verdict == "unsupported":
        message = f"drift (RCC): {reliability.summary()}"
        if on_unsupported == "error":
            raise DriftUnsupported(message + "; nothing applied (the drift option "
                                             "on_unsupported: warn goes on uncorrected)")
        warnings.warn(message + "; nothing applied", UserWarning, stacklevel=2)
    zeros = result.drift.copy()
    zeros[["dx_nm", "dy_nm"]] = 0.0
    return zeros


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
                "blur_nm": "blur_nm", "interpolation": "interpolation", "field_nm": "field_nm",
                "max_drift_fraction": "max_drift_fraction"}
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
                  on_unsupported: str = "error", **params) -> tuple[pd.DataFrame, DriftResult]:
    """Estimate the drift (:func:`estimate_drift`) and subtract what the estimate's
    reliability allows (:func:`drift_to_apply`, :func:`apply_drift`).

    Parameters
    ----------
    on_unsupported : {"error", "warn"}
        An RCC estimate the data do not support raises :class:`DriftUnsupported`, or
        warns; either way nothing is subtracted. A drift that is not significant is not
        subtracted either (no error).

    Returns
    -------
    corrected : pandas.DataFrame
    result : DriftResult
    """
    result = estimate_drift(table, method, n_frames=n_frames, **params)
    return apply_drift(table, drift_to_apply(result, on_unsupported)), result


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
