"""PSF width, photons per emitter and density from the spatial covariance of the
frame-to-frame fluctuations — an estimator that keeps working when spots overlap.

If the emitters of each frame are drawn independently of the other frames (positions
from a fixed density ρ(z), per frame and µm², any structure), Campbell's theorem gives,
for the fluctuation of each pixel around its temporal mean,

    Cov(I_p, I_{p+τ}) (averaged over p) = ρ̄ · E[N²] · K(τ),   K(τ) = k(τx)·k(τy),
    k(t) = ∫ tri(t − s) · Normal(s; 0, 2σ²) ds,

where N is an emitter's signal (ADU), ρ̄ the mean density per pixel² and ``tri`` the
autocorrelation of a unit pixel (K sums to 1 over all lags). Camera noise is independent
from pixel to pixel, so it only adds to the lag 0, which is left out. The mean signal per
pixel is M = ρ̄·N̄, hence, with the photons' coefficient of variation cv,

    N̄ = A / (M·(1 + cv²)),   ρ̄ = M² (1 + cv²) / A,   A = ρ̄·E[N²]  (fitted with σ).

Assumptions (stated in the calibration report): frames independent of each other (the
``independent`` activation of the simulator; blinking that lasts many frames inflates A and
N̄), a uniform background (it is removed with the temporal mean), a Gaussian PSF.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: Half-plane of lags (dy, dx) used, |dx|, dy ≤ MAX_LAG, lag 0 excluded.
MAX_LAG = 3
LAGS = tuple((dy, dx) for dy in range(MAX_LAG + 1) for dx in range(-MAX_LAG, MAX_LAG + 1)
             if dy > 0 or dx > 0)


@dataclass
class FluctuationStats:
    """Running sums over frames for the fluctuation covariance (memory ∝ frame size)."""

    shape: tuple[int, int]
    n_frames: int = 0
    sum_1: np.ndarray | None = None
    sum_lag: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)

    def add(self, frames: np.ndarray) -> None:
        """Accumulate (n, rows, cols) frames (ADU)."""
        f = np.asarray(frames, np.float64)
        self.n_frames += len(f)
        s1 = f.sum(0)
        self.sum_1 = s1 if self.sum_1 is None else self.sum_1 + s1
        for lag in LAGS:
            sa, sb = _pair_slices(lag, self.shape)
            prod = np.einsum("tij,tij->ij", f[:, sa[0], sa[1]], f[:, sb[0], sb[1]])
            self.sum_lag[lag] = self.sum_lag.get(lag, 0.0) + prod

    def covariance(self) -> dict[tuple[int, int], float]:
        """Mean over pixels of the unbiased temporal covariance at each lag (ADU²)."""
        return {lag: mean for lag, (mean, _) in self.covariance_with_error().items()}

    def covariance_with_error(self) -> dict[tuple[int, int], tuple[float, float]]:
        """Mean over pixels of the temporal covariance at each lag and its standard error
        (ADU²), the error from the scatter of the per-pixel covariances.

        Camera noise alone makes the per-pixel products independent from pixel to pixel
        and from lag to lag, so under "nothing fluctuates" each mean is an independent
        zero-mean estimate with this error; spatial structure only enlarges it.
        """
        t = self.n_frames
        if t < 3 or self.sum_1 is None:
            return {}
        m = self.sum_1 / t
        out = {}
        for lag in LAGS:
            sa, sb = _pair_slices(lag, self.shape)
            cov = (self.sum_lag[lag] - t * m[sa] * m[sb]) / (t - 1)
            se = float(cov.std(ddof=1) / math.sqrt(cov.size)) if cov.size > 1 else math.inf
            out[lag] = (float(cov.mean()), se)
        return out


def _pair_slices(lag: tuple[int, int], shape: tuple[int, int]):
    """Slices (rows, cols) of the pixels p and p + lag for every pair inside the frame."""
    dy, dx = lag
    h, w = shape
    j0, j1 = max(0, -dx), w - max(0, dx)
    return (slice(0, h - dy), slice(j0, j1)), (slice(dy, h), slice(j0 + dx, j1 + dx))


def pixel_overlap(t: np.ndarray, sigma_px: float) -> np.ndarray:
    """k(t) = ∫ tri(t − s) Normal(s; 0, 2σ²) ds for integer lags t (pixels)."""
    t = np.asarray(t, np.float64)
    s = np.linspace(-1.0, 1.0, 401)
    sd = math.sqrt(2.0) * sigma_px
    dens = np.exp(-0.5 * ((t[..., None] + s) / sd) ** 2) / (sd * math.sqrt(2.0 * math.pi))
    return np.trapezoid((1.0 - np.abs(s)) * dens, s, axis=-1)


@dataclass
class FluctuationEstimate:
    """Result of :func:`estimate_fluctuation` (NaN when it failed)."""

    sigma_px: float = math.nan
    amplitude_adu2: float = math.nan
    mean_signal_adu: float = math.nan
    emitter_adu: float = math.nan
    density_per_px2: float = math.nan
    lags: list = field(default_factory=list)
    covariance: list = field(default_factory=list)
    model: list = field(default_factory=list)
    amplitude_se_adu2: float = math.nan
    ok: bool = False
    significant: bool = False
    #: True when the covariance shows no blinking at all (not merely a failed fit).
    no_blinking: bool = False
    reason: str = ""


#: Standard errors by which the fluctuation amplitude must exceed zero to count as blinking
#: (the fit picks σ among many, so well above the 2–3 of a single test).
MIN_AMPLITUDE_Z = 5.0


def estimate_fluctuation(stats: FluctuationStats, background_level_adu: float,
                         cv2: float = 0.0) -> FluctuationEstimate:
    """Fit A·k(dx)k(dy) to the covariance at the non-zero lags; derive N̄ and ρ̄.

    Parameters
    ----------
    background_level_adu : float
        Mean ADU of a pixel without signal (baseline + background).
    cv2 : float
        Squared coefficient of variation of the emitters' photons (0 if unknown).
    """
    from scipy.optimize import least_squares

    cov_se = stats.covariance_with_error()
    if not cov_se:
        return FluctuationEstimate(reason="fewer than 3 frames")
    cov = {k: v[0] for k, v in cov_se.items()}
    lags = np.array(list(cov), np.float64)
    c = np.array([cov[k] for k in cov])
    c_se = np.array([cov_se[k][1] for k in cov])
    scale = max(abs(c).max(), 1e-12)

    def model(p):
        a, s = p
        return a * pixel_overlap(lags[:, 0], s) * pixel_overlap(lags[:, 1], s)

    def resid(p):
        return (model(p) - c) / scale

    c1 = cov.get((0, 1), 0.0)
    if not c1 > 0:
        return FluctuationEstimate(no_blinking=True,
                                   reason="no positive correlation of the frame-to-frame "
                                          "fluctuations between neighbouring pixels")
    res = least_squares(resid, x0=[c1 / pixel_overlap(np.array([0.0]), 1.0)[0] /
                                   pixel_overlap(np.array([1.0]), 1.0)[0], 1.0],
                        bounds=([0.0, 0.2], [np.inf, 10.0]))
    a, s = res.x
    m = float(stats.sum_1.mean() / stats.n_frames - background_level_adu)
    # Standard error of A at the fitted σ: the weighted linear fit of the independent lags.
    shape = model([1.0, s])
    a_se = float(1.0 / math.sqrt(max(((shape / c_se) ** 2).sum(), 1e-300)))
    est = FluctuationEstimate(sigma_px=float(s), amplitude_adu2=float(a), mean_signal_adu=m,
                              lags=lags.tolist(), covariance=c.tolist(),
                              model=model(res.x).tolist(), amplitude_se_adu2=a_se)
    if not a > MIN_AMPLITUDE_Z * a_se:
        est.reason = (f"the frame-to-frame fluctuations are not correlated between neighbouring "
                      f"pixels beyond noise (amplitude {a:.3g} ± {a_se:.2g} ADU², needs "
                      f"{MIN_AMPLITUDE_Z:g} standard errors)")
        est.no_blinking = True
        return est
    est.significant = True
    if not (m > 0 and a > 0):
        est.reason = "no signal above the background"
        return est
    est.emitter_adu = float(a / (m * (1.0 + cv2)))
    est.density_per_px2 = float(m * m * (1.0 + cv2) / a)
    est.ok = True
    return est
