"""One streaming pass over a movie, collecting what the calibration estimates come from.

For each batch of frames (raw ADU, cropped to the region of interest):

- candidates are detected (band-pass + local maxima, :mod:`stormfold.localize.classic.detect`)
  in provisional counts ``(ADU − baseline₀) / a₀``;
- **background pixels** are those farther than ``mask_radius_px`` from every pixel where
  the band-pass exceeds ``mask_threshold`` × noise (the Fiji "threshold, create selection"
  of the ZeroCostDL4Mic documentation, made robust to dim neighbours of bright spots);
  their integer ADU values are accumulated in a 65,536-bin histogram;
- every candidate is fitted (Poisson MLE, :mod:`stormfold.localize.classic.fit`); good fits
  are counted per frame (the counted density, a lower bound);
- **isolated** good fits (no other candidate within ``isolation_px``, window not clipped by
  the frame border, deviance not in the far upper tail) give a sample of photons, σ and background with their CRLB, and their
  residuals feed the **mean–variance relation**: each ROI pixel's squared residual divided
  by (1 − leverage) is an unbiased estimate of its variance, binned by the model's
  expected ADU.

- sums over frames of each pixel and of products of neighbouring pixels give the covariance
  of the frame-to-frame fluctuations (:mod:`.fluctuation`), for σ, photons and density
  when spots overlap.

Everything is accumulated in fixed-size arrays (histograms, bins, a capped spot sample), so
memory does not depend on the number of frames.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from stormfold.calibrate.fluctuation import FluctuationStats
from stormfold.localize.classic.detect import (band_pass, band_pass_noise_gain, extract_rois,
                                               local_maxima)
from stormfold.localize.classic.fit import B, N, S, X, Y, FitBounds, fit_spots, initial_guess

ADU_BINS = 65536
#: Residual bins: log-spaced in the model's expected counts above the provisional baseline.
RESIDUAL_EDGES = np.concatenate([[-np.inf], np.logspace(-2, 6, 161), [np.inf]])


@dataclass
class ProvisionalCamera:
    """The ADU → counts map used while scanning: counts = (ADU − baseline_adu) / adu_per_count,
    with Gaussian noise of variance ``read_var_adu2`` (ADU²) on top of Poisson counts."""

    baseline_adu: float
    adu_per_count: float = 1.0
    read_var_adu2: float = 1.0

    @property
    def gamma(self) -> float:
        """Read-noise variance in counts² (the fit's γ)."""
        return self.read_var_adu2 / self.adu_per_count ** 2


@dataclass
class ScanSettings:
    """Detection and fitting parameters of a scan.

    Attributes
    ----------
    roi_px : int
        Side of the fitted window.
    sigma_px : float
        PSF σ (pixels) for the detection filter and the fit's start.
    threshold : float
        Detection threshold in multiples of the robust noise of the band-passed frame.
    iterations : int
        Levenberg–Marquardt iterations.
    isolation_px : float
        A fit is isolated when no other candidate is closer than this (pixels).
    mask_radius_px : int
        Pixels within this Chebyshev distance of a signal pixel are not background.
    mask_threshold : float
        Signal pixels: band-pass value above this many times the noise (high enough that
        noise alone almost never masks background pixels, which would bias their statistics).
    max_deviance_sd : float
        Isolated spots whose fit deviance exceeds the batch median by more than this many
        robust standard deviations (from the lower quartile) are not used (a second emitter
        in the window).
    batch_frames : int
        Frames per batch.
    max_spots : int
        Cap on the number of isolated spots kept (first come).
    threads : int
        Torch threads during the scan (restored afterwards).
    """

    roi_px: int = 7
    sigma_px: float = 1.0
    threshold: float = 5.0
    iterations: int = 10
    isolation_px: float = 10.0
    mask_radius_px: int = 4
    mask_threshold: float = 6.0
    max_deviance_sd: float = 3.0
    batch_frames: int = 64
    max_spots: int = 200_000
    threads: int = 1


@dataclass
class ScanStats:
    """What one pass accumulated (see the module docstring)."""

    camera: ProvisionalCamera
    settings: ScanSettings
    frame_shape: tuple[int, int]
    n_frames: int = 0
    background_hist: np.ndarray = field(default_factory=lambda: np.zeros(ADU_BINS, np.int64))
    #: histogram of the number of good fits per frame (index = count)
    fits_per_frame_hist: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    #: Σ over frames of the frame's ADU sum and of its square (flux density)
    frame_sum_adu: float = 0.0
    frame_sum_sq_adu: float = 0.0
    n_candidates: int = 0
    n_fits: int = 0
    n_isolated: int = 0
    residual_n: np.ndarray = field(default_factory=lambda: np.zeros(len(RESIDUAL_EDGES) - 1))
    residual_sum_x: np.ndarray = field(default_factory=lambda: np.zeros(len(RESIDUAL_EDGES) - 1))
    residual_sum_v: np.ndarray = field(default_factory=lambda: np.zeros(len(RESIDUAL_EDGES) - 1))
    residual_sum_v2: np.ndarray = field(default_factory=lambda: np.zeros(len(RESIDUAL_EDGES) - 1))
    spots: dict[str, list[np.ndarray]] = field(default_factory=dict)
    fluctuation: FluctuationStats | None = None

    def spot_arrays(self) -> dict[str, np.ndarray]:
        """The isolated-spot sample as arrays (counts and pixels of the provisional camera)."""
        keys = ("N", "b", "sigma_px", "var_N", "var_sigma", "var_x", "nllr")
        return {k: (np.concatenate(self.spots[k]) if self.spots.get(k) else np.zeros(0))
                for k in keys}


def _neighbour_count(frame: torch.Tensor, row: torch.Tensor, col: torch.Tensor,
                     radius_px: float) -> np.ndarray:
    """Number of other candidates of the same frame within ``radius_px`` (k-d tree)."""
    from scipy.spatial import cKDTree

    if frame.numel() == 0:
        return np.zeros(0, np.int64)
    # Frames are separated along x by far more than the radius.
    pts = np.stack([col.cpu().numpy() + frame.cpu().numpy() * 1e6, row.cpu().numpy()], 1)
    tree = cKDTree(pts.astype(np.float64))
    counts = tree.query_ball_point(pts, radius_px, return_length=True)
    return np.asarray(counts, np.int64) - 1


def scan_batch(stats: ScanStats, adu: np.ndarray) -> None:
    """Accumulate one batch of (n, rows, cols) ADU frames into ``stats``."""
    st, cam = stats.settings, stats.camera
    size, half = st.roi_px, st.roi_px // 2
    raw = torch.as_tensor(np.asarray(adu, dtype=np.float32))
    counts = (raw - cam.baseline_adu) / cam.adu_per_count
    n, h, w = counts.shape
    stats.n_frames += n
    frame_sums = raw.double().flatten(1).sum(1)
    stats.frame_sum_adu += float(frame_sums.sum())
    stats.frame_sum_sq_adu += float((frame_sums ** 2).sum())
    if stats.fluctuation is None:
        stats.fluctuation = FluctuationStats(shape=(h, w))
    stats.fluctuation.add(adu)

    dog = band_pass(counts, st.sigma_px)
    # The noise of the background, from the pixel values themselves: the spread of the
    # values below the mode of the batch (signal only adds to the upper side), scaled by the
    # filter's noise gain. Unlike the MAD of the filtered frame it stays right when spots
    # cover most of the frame.
    pixel_noise = lower_spread(np.asarray(adu)) / cam.adu_per_count
    noise = torch.full((n,), max(pixel_noise, 1e-6) * band_pass_noise_gain(st.sigma_px),
                       dtype=counts.dtype)
    cand = local_maxima(dog, st.threshold * noise)
    cand.score = cand.score / noise[cand.frame]
    stats.n_candidates += len(cand)
    # Background pixels: farther than mask_radius from any pixel whose band-pass value
    # exceeds mask_threshold × noise. This masks the detected spots and also emitters that
    # are too close to a brighter one to give a local maximum of their own.
    signal = (dog > st.mask_threshold * noise[:, None, None]).to(counts.dtype)
    r = st.mask_radius_px
    near = F.max_pool2d(signal[:, None], 2 * r + 1, stride=1, padding=r)[:, 0] > 0
    values = np.asarray(adu)[~near.numpy()].astype(np.int64)
    stats.background_hist += np.bincount(np.clip(values, 0, ADU_BINS - 1), minlength=ADU_BINS)

    if len(cand) == 0:
        stats.fits_per_frame_hist[0] += n
        return
    rois, row0, col0 = extract_rois(counts, cand.frame, cand.row, cand.col, size)
    theta0 = initial_guess(rois, cand.row - row0, cand.col - col0, st.sigma_px)
    bounds = FitBounds(sigma_max_px=min(3.0, 0.45 * size))
    res = fit_spots(rois, theta0, gamma=cam.gamma, iterations=st.iterations, leverage=True,
                    bounds=bounds)
    th = res.theta
    x = col0.to(th.dtype) + th[:, X]
    y = row0.to(th.dtype) + th[:, Y]
    shift = torch.hypot(x - (cand.col.to(th.dtype) + 0.5), y - (cand.row.to(th.dtype) + 0.5))
    good = torch.isfinite(th).all(1) & torch.isfinite(res.crlb).all(1) & (shift <= 1.5)
    good &= (th[:, S] > bounds.sigma_min_px * 1.01) & (th[:, S] < bounds.sigma_max_px * 0.99)
    good &= (x >= 0) & (x < w) & (y >= 0) & (y < h)
    stats.n_fits += int(good.sum())
    per_frame = torch.bincount(cand.frame[good], minlength=n).numpy()
    hist = np.bincount(per_frame)
    if len(hist) > len(stats.fits_per_frame_hist):
        stats.fits_per_frame_hist = np.pad(stats.fits_per_frame_hist,
                                           (0, len(hist) - len(stats.fits_per_frame_hist)))
    stats.fits_per_frame_hist[:len(hist)] += hist

    unclipped = (row0 == cand.row - half) & (col0 == cand.col - half)
    lonely = torch.as_tensor(_neighbour_count(cand.frame, cand.row, cand.col, st.isolation_px) == 0)
    iso = good & unclipped & lonely
    if bool(iso.any()):
        # Drop spots that a single Gaussian does not describe (an undetected neighbour in
        # the window): deviance beyond the batch median + max_deviance_sd robust SDs, the
        # SD taken from the lower side (median − lower quartile), which neighbours do not
        # reach. The MAD, inflated by them, let through enough spots with a dim neighbour
        # to read the gain 15–40 % low at σ ≥ 1.5 px with background (review 20 D1).
        dev = 2.0 * res.nllr[iso]
        med = dev.median()
        spread = (med - dev.quantile(0.25)) / 0.6745 if dev.numel() >= 4 else \
            torch.tensor(math.inf)
        iso &= 2.0 * res.nllr <= med + st.max_deviance_sd * spread
    stats.n_isolated += int(iso.sum())
    if not bool(iso.any()):
        return
    # Mean–variance: residual² / (1 − h) estimates each pixel's variance (ADU²).
    mu = res.mu[iso]
    resid_adu = (rois[iso] - mu) * cam.adu_per_count
    v = (resid_adu ** 2 / (1.0 - res.hat[iso]).clamp_min(0.05)).double().flatten().numpy()
    x_adu = (cam.baseline_adu + mu.double() * cam.adu_per_count).flatten().numpy()
    idx = np.digitize(mu.double().flatten().numpy(), RESIDUAL_EDGES[1:-1])
    nb = len(RESIDUAL_EDGES) - 1
    stats.residual_n += np.bincount(idx, minlength=nb)
    stats.residual_sum_x += np.bincount(idx, weights=x_adu, minlength=nb)
    stats.residual_sum_v += np.bincount(idx, weights=v, minlength=nb)
    stats.residual_sum_v2 += np.bincount(idx, weights=v * v, minlength=nb)
    # The capped sample of isolated spots.
    have = sum(len(a) for a in stats.spots.get("N", []))
    room = st.max_spots - have
    if room > 0:
        sel = torch.nonzero(iso).flatten()[:room]
        sample = {"N": th[sel, N], "b": th[sel, B], "sigma_px": th[sel, S],
                  "var_N": res.crlb[sel, N], "var_sigma": res.crlb[sel, S],
                  "var_x": res.crlb[sel, X], "nllr": res.nllr[sel]}
        for k, val in sample.items():
            stats.spots.setdefault(k, []).append(val.double().numpy())


def scan_movie(movie, start: int, stop: int, roi: tuple[int, int, int, int] | None,
               camera: ProvisionalCamera, settings: ScanSettings,
               progress: bool = False) -> ScanStats:
    """One pass over frames [start, stop) of ``movie`` (a :class:`~stormfold.io.Movie`).

    Parameters
    ----------
    roi : (x0, y0, x1, y1) or None
        Columns x0..x1 and rows y0..y1 (end exclusive) of the analysed region.
    progress : bool
        Show a progress bar.
    """
    from tqdm import tqdm

    rows, cols = movie.shape
    x0, y0, x1, y1 = roi if roi is not None else (0, 0, cols, rows)
    stats = ScanStats(camera=camera, settings=settings, frame_shape=(y1 - y0, x1 - x0))
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads)  # small tensors: see ClassicOptions.threads
    try:
        with torch.inference_mode(), tqdm(total=stop - start, unit="frame", desc="calibrate",
                                          disable=not progress, leave=False) as bar:
            for _, frames in movie.iter_batches(settings.batch_frames, start=start, stop=stop):
                scan_batch(stats, frames[:, y0:y1, x0:x1])
                bar.update(len(frames))
    finally:
        torch.set_num_threads(previous)
    return stats


def half_sample_mode(values: np.ndarray) -> float:
    """Mode of a sample by the half-sample method (Bickel & Frühwirth 2006): repeatedly keep
    the half of the sorted values with the smallest range."""
    v = np.sort(np.asarray(values, np.float64).ravel())
    while v.size > 3:
        h = (v.size + 1) // 2
        widths = v[h - 1:] - v[:v.size - h + 1]
        i = int(np.argmin(widths))
        v = v[i:i + h]
    return float(v.mean())


def lower_spread(values: np.ndarray) -> float:
    """Robust standard deviation of the values below their mode: 1.4826 · median(mode − v).

    Spots only add light, so the lower side of the distribution of pixel values is the
    background noise, whatever the density (as long as some pixels are background).
    """
    v = np.asarray(values, np.float64).ravel()
    mode = half_sample_mode(v)
    below = mode - v[v < mode]
    if below.size == 0:
        return 0.0
    return float(1.4826 * np.median(below))


def provisional_camera(adu: np.ndarray) -> ProvisionalCamera:
    """A first guess from a few frames: the lower tail of the pixel values is background.

    baseline₀ = mode − 3·s and read variance s², where s is the robust spread of the
    pixels below their mode (:func:`lower_spread`); 1 ADU per count. The
    fit is a quasi-likelihood, so positions, σ and counts stay consistent under this guess;
    the calibration then replaces it by the estimated camera for the final pass.
    """
    values = np.asarray(adu, dtype=np.float64).ravel()
    mode = half_sample_mode(values)
    s = max(lower_spread(values), 0.5)
    return ProvisionalCamera(baseline_adu=mode - 3.0 * s, adu_per_count=1.0,
                             read_var_adu2=s * s + 1.0 / 12.0)


def moments_from_histogram(hist: np.ndarray) -> dict[str, float]:
    """Count, mean, variance, third and fourth central moments, and the variance of the
    sample variance and of the third cumulant, of integer values given as a histogram."""
    n = float(hist.sum())
    if n < 2:
        return {"n": n, "mean": math.nan, "var": math.nan, "m3": math.nan, "m4": math.nan,
                "var_of_var": math.nan, "var_of_k3": math.nan}
    k = np.flatnonzero(hist)
    c = hist[k].astype(np.float64)
    mean = float((c * k).sum() / n)
    d = k - mean
    m2, m3, m4, m6 = ((c * d ** p).sum() / n for p in (2, 3, 4, 6))
    return {"n": n, "mean": mean, "var": float(m2), "m3": float(m3), "m4": float(m4),
            "var_of_var": float((m4 - m2 ** 2) / n),
            "var_of_k3": float(max(m6 - m3 ** 2 - 6 * m4 * m2 + 9 * m2 ** 3, 0.0) / n)}
