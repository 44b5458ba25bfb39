"""Camera and emitter estimates from the statistics of a scan (:mod:`.scan`).

Camera model, per pixel, in ADU (SPEC §2): ADU = baseline + g·E + read noise, rounded,
where E is the photo-electron count (Poisson, mean λ) amplified by an EM register (Gamma,
excess-noise factor F = 2) or not (F = 1), and g is the mean number of ADU per
photo-electron (EM gain / e⁻ per ADU). Hence

    var(ADU) = a · (mean(ADU) − baseline) + r² + 1/12,   a = F · g,

the mean–variance relation: its slope a is measured from the residuals of the spot fits
(pixels of very different means), anchored by the background pixels. Only a is
identifiable this way; F must be told (``--emccd``): with F = 1 on EMCCD data, g comes out
as 2 g and photons as half the photo-electrons, which is the ZeroCostDL4Mic
documentation's correction for a simulator without EM gain.

The background pixels give their mean m and variance v; the line gives a. That leaves one
unknown: how much of (m − baseline) is background signal. Shot noise is skewed (third
cumulant c₃·g³·λ, c₃ = 1 for Poisson, 6 for the EM Gamma–Poisson compound), read noise is
not, so λ = κ₃ / (c₃·g³), bounded by 0 (all background variance is read noise) and by
(v − 1/12)/(F·g²) (no read noise). Then baseline = m − g·λ and r² = v − 1/12 − F·g²·λ.
A known baseline (``--baseline``) replaces the skewness step.

Those moment relations assume that rounding to integer ADU adds independent noise of variance
1/12 (Sheppard). That fails when each ADU is a few photo-electrons and the read noise is far
below one ADU (e.g. 3.6 e⁻/ADU and no read noise: κ₃ of the rounded Poisson lattice is 22 %
below g³λ), and the skewness split then misplaces the baseline. There the histogram itself
shows the lattice: :func:`lattice_scan` fits the exact model ADU = round(baseline + g·k),
k ~ Poisson(λ), by maximum likelihood over a grid of g (±6 % around the spot slope's) and of
the baseline along b + g·λ = mean, and its answer replaces the moments when the best g beats
every g more than 1 % away by :data:`LATTICE_MIN_MARGIN` in log-likelihood and the lattice is
sharp (:func:`lattice_is_sharp`: its deviance is what a right model leaves). Read noise of a
fraction of an ADU blurs the lattice: the read-noise-free model then still finds a g by a
wide margin, 3–9 % off, so the moments stay (with a note giving both gains).

``--emccd`` on a camera without EM gain shows as a mean–variance slope 1.5× (or more) the
F·g the background's skewness gives (an EMCCD gives 1): warned, as :data:`NOT_EMCCD_RATIO`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stormfold.calibrate.fluctuation import FluctuationEstimate, estimate_fluctuation
from stormfold.calibrate.scan import ScanStats, moments_from_histogram

#: Minimum pixels per residual bin, bins and spread needed to fit the mean–variance line.
MIN_BIN_PIXELS = 50
MIN_BINS = 4
#: Background pixels needed to split baseline and background with the skewness.
MIN_SKEW_PIXELS = 10_000
#: The slope is "told" when its relative standard error is below this.
MAX_SLOPE_REL_SE = 0.05
#: The lattice scan runs when the background s.d. is below this (ADU) and g at least
#: :data:`LATTICE_MIN_GAIN` ADU/e⁻ (a finer lattice is smooth: Sheppard holds).
LATTICE_MAX_STD_ADU = 4.0
LATTICE_MIN_GAIN = 0.1
#: Log-likelihood by which the best g must beat every g more than 1 % away.
LATTICE_MIN_MARGIN = 25.0
#: Largest third moment of the lattice model (g³λ) over the background's measured one: the
#: rounding lowers a true lattice's by up to ~25 % (module notes), read noise lowers it more.
LATTICE_MAX_SKEW_RATIO = 1.6


@dataclass
class MeanVariance:
    """The mean–variance line var = slope·mean + intercept (ADU², ADU) and its data."""

    slope: float
    intercept: float
    slope_se: float
    identifiable: bool
    reason: str
    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    v: np.ndarray = field(default_factory=lambda: np.zeros(0))
    v_se: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n: np.ndarray = field(default_factory=lambda: np.zeros(0))


def fit_mean_variance(stats: ScanStats, background: dict[str, float]) -> MeanVariance:
    """Weighted least-squares line through the binned residual variances and the
    background-pixel point (mean, variance), weights 1/SE²."""
    n = stats.residual_n
    ok = n >= MIN_BIN_PIXELS
    x = stats.residual_sum_x[ok] / n[ok]
    v = stats.residual_sum_v[ok] / n[ok]
    v_se = np.sqrt(np.maximum(stats.residual_sum_v2[ok] / n[ok] - v ** 2, 1e-12) / n[ok])
    pts_x, pts_v, pts_se = x, v, v_se
    if background["n"] >= MIN_BIN_PIXELS and np.isfinite(background["var"]):
        pts_x = np.append(pts_x, background["mean"])
        pts_v = np.append(pts_v, background["var"])
        pts_se = np.append(pts_se, math.sqrt(max(background["var_of_var"], 1e-12)))
    if len(x) < MIN_BINS:
        return MeanVariance(math.nan, math.nan, math.nan, False,
                            f"only {len(x)} residual bins with ≥ {MIN_BIN_PIXELS} pixels "
                            f"(too few well-isolated spots)", x, v, v_se, n[ok])
    w = 1.0 / pts_se ** 2
    design = np.stack([pts_x, np.ones_like(pts_x)], 1)
    cov = np.linalg.inv(design.T @ (design * w[:, None]))
    slope, intercept = cov @ (design.T @ (w * pts_v))
    chi2 = float((w * (pts_v - slope * pts_x - intercept) ** 2).sum())
    dof = max(len(pts_x) - 2, 1)
    # Inflate the errors when the points scatter more than their own error bars say.
    slope_se = math.sqrt(cov[0, 0] * max(1.0, chi2 / dof))
    rel = slope_se / slope if slope > 0 else math.inf
    if not slope > 0:
        ok_line, reason = False, f"the fitted slope {slope:.3g} is not positive"
    elif rel > MAX_SLOPE_REL_SE:
        ok_line, reason = False, f"the slope is uncertain (±{100 * rel:.0f} %)"
    else:
        ok_line, reason = True, f"slope ±{100 * rel:.2f} % from {len(x)} bins"
    return MeanVariance(float(slope), float(intercept), float(slope_se), ok_line, reason,
                        x, v, v_se, n[ok])


#: Relative systematic error allowed for the mean–variance slope (model error of the
#: residual variances, measured on simulations with known truth: ±1.5 %).
SLOPE_SYSTEMATIC = 0.015


@dataclass
class CameraEstimate:
    """What the data say about the camera (ADU unless stated).

    Attributes
    ----------
    baseline_adu : float
    adu_per_e : float
        g, mean ADU per photo-electron (EM gain included).
    excess_factor : float
        F assumed (2 with ``--emccd``, else 1).
    read_noise_adu : float
        Read-noise standard deviation.
    background_e : float
        λ, background photo-electrons per pixel and frame.
    background_mean_adu, background_std_adu : float
        Mean and standard deviation of the background pixels (what the ZeroCostDL4Mic
        documentation calls ADC offset and read-out noise when there is no background).
    gain_source, split_source : str
        Where g and the baseline/background split came from.
    baseline_se_adu, adu_per_e_se : float
        Standard errors (propagated from the skewness and the slope; NaN when given).
    lambda_skew, lambda_max : float
        λ implied by the skewness alone, and its upper limit (no read noise).
    notes : list of str
    """

    baseline_adu: float
    adu_per_e: float
    excess_factor: float
    read_noise_adu: float
    background_e: float
    background_mean_adu: float
    background_std_adu: float
    gain_source: str
    split_source: str
    baseline_se_adu: float = math.nan
    adu_per_e_se: float = math.nan
    lambda_skew: float = math.nan
    lambda_max: float = math.nan
    notes: list[str] = field(default_factory=list)
    #: Why the camera type (``--emccd`` or not) does not fit the data ("" when it does).
    mismatch: str = ""

    @property
    def adu_per_count(self) -> float:
        """ADU per Poisson count (a = F·g)."""
        return self.excess_factor * self.adu_per_e


@dataclass
class LatticeFit:
    """Exact rounded-lattice fit of the background histogram (:func:`lattice_scan`)."""

    adu_per_e: float
    baseline_adu: float
    background_e: float
    read_noise_adu: float
    margin: float
    deviance: float = math.nan
    dof: int = 1


def lattice_scan(hist: np.ndarray, g0: float, rel_range: float = 0.06, g_step: float = 0.001,
                 b_step_adu: float = 0.005) -> LatticeFit:
    """Maximum likelihood of ADU = round(baseline + g·k), k ~ Poisson(λ), on a grid.

    Parameters
    ----------
    hist : numpy.ndarray
        Counts per integer ADU value of the background pixels.
    g0 : float
        Centre of the g grid (ADU per e⁻); ``rel_range`` 0 keeps g fixed.
    rel_range, g_step : float
        Relative half-width and step of the g grid.
    b_step_adu : float
        Step of the baseline along the ridge b + g·λ = mean (the likelihood is a comb: a
        deep optimum about every electron, a few thousandths of an ADU wide).

    Returns
    -------
    LatticeFit
        The best (g, baseline, λ); the read noise (ADU) the variance leaves beyond the exact
        lattice model's; ``margin``: how much better its log-likelihood is than that of the
        best g more than 1 % away (0 when g is fixed).
    """
    from scipy.stats import poisson

    values = np.flatnonzero(hist)
    counts = hist[values].astype(np.float64)
    n = counts.sum()
    mean = float((values * counts).sum() / n)
    var = float((counts * (values - mean) ** 2).sum() / n)
    lo, width = int(values.min()), int(values.max() - values.min()) + 1
    gains = g0 * np.arange(1.0 - rel_range, 1.0 + rel_range + 1e-12, g_step) if rel_range > 0 \
        else np.array([g0])
    rows = []
    for g in gains:
        lam_max = max(var - 1.0 / 12.0, 0.0) / (g * g)
        lams = np.arange(0.0, lam_max + b_step_adu / g, b_step_adu / g)
        base = mean - g * lams
        k = np.arange(0, int(lam_max + 12.0 * math.sqrt(lam_max) + 10))
        pk = poisson.pmf(k[None, :], lams[:, None])
        # Exact rounding: each lattice point's probability lands in one ADU bin.
        idx = np.rint(base[:, None] + g * k[None, :]).astype(np.int64) - lo
        ok = (idx >= 0) & (idx < width)
        flat = (np.arange(len(lams))[:, None] * width + idx)[ok]
        model = np.bincount(flat, weights=pk[ok], minlength=len(lams) * width)
        prob = model.reshape(len(lams), width)[:, values - lo]
        nll = -(counts[None, :] * np.log(np.maximum(prob, 1e-12))).sum(1)
        i = int(np.argmin(nll))
        rows.append((float(nll[i]), float(g), float(base[i]), float(lams[i]), prob[i]))
    rows.sort(key=lambda r: r[0])
    best_nll, g, baseline, lam, best_prob = rows[0]
    # Deviance against the histogram itself: ≈ χ² with (bins − 3) degrees of freedom when
    # the exact lattice is the right model, far above when read noise blurs it.
    deviance = float(2.0 * (counts * np.log(counts / (n * np.maximum(best_prob, 1e-12)))).sum())
    others = [r[0] for r in rows if abs(r[1] / g - 1.0) > 0.01]
    margin = (min(others) - best_nll) if others else 0.0
    # Variance of the exact lattice model at the fit; what is left is read noise.
    k = np.arange(0, int(lam + 12.0 * math.sqrt(lam) + 10))
    adu = np.rint(baseline + g * k)
    pk = poisson.pmf(k, lam)
    model_var = float((pk * (adu - (pk * adu).sum()) ** 2).sum())
    return LatticeFit(g, baseline, lam, math.sqrt(max(var - model_var, 0.0)), float(margin),
                      deviance, max(len(values) - 3, 1))


#: Largest deviance per background pixel (twice the Kullback–Leibler divergence between
#: the histogram and the exact lattice) still taken as a sharp lattice: measured 6e-4 for
#: the camera model without read noise (3.6 e⁻/ADU), 0.015–0.036 with 0.14–1.2 ADU of read
#: noise, where the lattice's g is off by 3–9 %.
LATTICE_MAX_DEVIANCE_PER_PIXEL = 0.002


def lattice_is_sharp(fit: LatticeFit, n_pixels: float) -> bool:
    """Whether the exact (read-noise-free) lattice describes the histogram: its deviance
    within the χ² noise (mean + 5 SD) plus a small systematic allowance per pixel. Read
    noise of a fraction of an ADU blurs the lattice, and the lattice model then fits the
    blur with a wrong g by a large likelihood margin."""
    allowed = fit.dof + 5.0 * math.sqrt(2.0 * fit.dof) + LATTICE_MAX_DEVIANCE_PER_PIXEL * n_pixels
    return bool(fit.deviance <= allowed)


#: Mean–variance slope over F·g (g from the background's skewness) from which ``--emccd``
#: is taken as a mistake: 1 for an EMCCD, ≥ 1.5 for a camera without EM gain (κ₃/κ₂ is g,
#: not 3g, and read noise only lowers it), 1.05–1.2 for crowded spots.
NOT_EMCCD_RATIO = 1.3


def _not_emccd(ratio: float, what: str, bg: dict) -> str:
    k2, k3 = bg["var"], bg["m3"]
    shape = (bg["m4"] - 3.0 * k2 ** 2) * k2 / k3 ** 2 if k3 > 0 else math.nan
    return (f"--emccd does not fit this movie: the mean–variance slope of the spot residuals "
            f"is {ratio:.2f}× the {what} (an EMCCD gives 1, a camera without EM gain ≥ 1.5; "
            f"the background's κ₄κ₂/κ₃² is {shape:.2f}: EMCCD 1.33, no EM gain ≈ 1): the camera "
            f"probably has no EM gain, and the photons come out about {2.0 * ratio:.1f}× too "
            f"high — run without --emccd")


def _split(g: float, k2: float, k3: float, f: float, c3: float) -> tuple[float, float]:
    """λ from the skewness for gain g, bounded by 0 and the no-read-noise limit; and that limit."""
    lam_max = max(k2 - 1.0 / 12.0, 0.0) / (f * g * g)
    return min(max(k3 / (c3 * g ** 3), 0.0), lam_max), lam_max


def estimate_camera(stats: ScanStats, emccd: bool = False, baseline_adu: float | None = None,
                    adu_per_e: float | None = None, seed: int = 0
                    ) -> tuple[CameraEstimate, MeanVariance, dict]:
    """Baseline, gain, read noise and background from a scan (see the module docstring).

    Parameters
    ----------
    emccd : bool
        Excess-noise factor 2 and the Gamma–Poisson skewness.
    baseline_adu : float, optional
        A known baseline (skips the skewness split).
    adu_per_e : float, optional
        A known gain g, ADU per photo-electron (overrides the mean–variance slope).
    seed : int
        Seed of the parametric resampling that propagates the standard errors.

    Returns
    -------
    camera : CameraEstimate
    line : MeanVariance
    background : dict
        Moments of the background-pixel histogram.
    """
    f = 2.0 if emccd else 1.0
    c3 = 6.0 if emccd else 1.0
    bg = moments_from_histogram(stats.background_hist)
    notes: list[str] = []
    if not bg["n"] >= MIN_BIN_PIXELS:
        from stormfold.errors import UserError

        raise UserError(f"only {int(bg['n'])} background pixels after masking the spots: the "
                        f"movie (or --roi) is too dense or too small to calibrate")
    k1, k2, k3 = bg["mean"], bg["var"], bg["m3"]
    k3_se = max(math.sqrt(bg["var_of_k3"]), 1e-12)
    line = fit_mean_variance(stats, bg)
    slope_se = math.hypot(line.slope_se, SLOPE_SYSTEMATIC * line.slope) if line.identifiable \
        else math.nan
    rng = np.random.default_rng(seed)
    g_bg = k3 / (3.0 * max(k2 - 1.0 / 12.0, 1e-12))  # EMCCD without read noise
    g_bg_rel_se = k3_se / k3 if k3 > 0 else math.inf
    mismatch = ""
    if adu_per_e is not None:
        g, g_se, gain_source = float(adu_per_e), math.nan, "given"
        ratio = line.slope / (f * g) if line.identifiable else 1.0
        if emccd and ratio <= 1.0 / NOT_EMCCD_RATIO:
            mismatch = (f"--emccd does not fit this movie with the given gain: the mean–variance "
                        f"slope of the spot residuals is {ratio:.2f}× the 2·g an EMCCD gives "
                        f"(excess-noise factor 2); the camera has no EM gain, or --em-gain / "
                        f"--e-per-adu is wrong")
    elif emccd and baseline_adu is None and g_bg_rel_se < MAX_SLOPE_REL_SE:
        # EM gain makes the read noise negligible against the amplified shot noise, so
        # the background alone gives g: κ₂ = 2g²λ, κ₃ = 6g³λ ⇒ g = κ₃ / (3κ₂).
        g, g_se = g_bg, g_bg * g_bg_rel_se
        gain_source = ("background skewness, EMCCD with negligible read noise "
                       "(κ₃ / 3κ₂)")
        ratio = line.slope / (f * g) if line.identifiable else 1.0
        if ratio >= NOT_EMCCD_RATIO:
            mismatch = _not_emccd(ratio, "2·g from the background's skewness", bg)
        elif abs(ratio - 1.0) > 0.05:
            notes.append(f"the gain from the mean–variance slope of the spot residuals is "
                         f"{100 * (ratio - 1):+.0f} % from the background's: the "
                         f"spots are probably crowded (residuals inflated by neighbours); the "
                         f"background value is used")
    elif line.identifiable:
        g, g_se = line.slope / f, slope_se / f
        gain_source = f"mean–variance slope ({line.reason})"
    else:
        g, g_se = 1.0 / f, math.nan
        gain_source = f"assumed one Poisson count per ADU: cannot be told ({line.reason})"
        notes.append(f"the gain cannot be told from the data ({line.reason}); assumed one "
                     f"Poisson count per ADU (e_per_adu 1 without EM gain) — give --e-per-adu "
                     f"if you know it")
    told = adu_per_e is not None or line.identifiable or gain_source.startswith("background")
    lam_skew = k3 / (c3 * g ** 3)
    lam, lam_max = _split(g, k2, k3, f, c3)
    base_se = math.nan
    if baseline_adu is not None:
        lam = max((k1 - baseline_adu) / g, 0.0)
        split = "given (--baseline)"
    elif not told or bg["n"] < MIN_SKEW_PIXELS:
        # Without the gain (or with too few pixels) the skewness cannot be converted to
        # photo-electrons: fall back on the documentation's reading (background mean =
        # offset, its std = read noise).
        lam = 0.0
        why = "the gain is unknown" if not told else \
            f"only {int(bg['n'])} background pixels (< {MIN_SKEW_PIXELS} for the skewness)"
        split = (f"background mean taken as the baseline ({why}): any background light is "
                 f"counted in the offset, as in the ZeroCostDL4Mic simulator")
        notes.append(f"baseline = mean of the background pixels and read noise = their std "
                     f"(background light included), because {why}; give --baseline if known")
    else:
        if lam_skew > 1.2 * lam_max and not emccd and lam_max > 0 and not mismatch:
            # A warning, as --emccd on a camera without EM gain is (review 20): photons and
            # gain come out about half.
            mismatch = ("the background is more skewed than Poisson noise allows: the camera "
                        "may be an EMCCD (photons and e_per_adu would come out about half): "
                        "try --emccd")
        if lam_skew >= lam_max:
            split = "no read noise (background skewness at or above the shot-noise limit)"
        elif lam_skew <= 0:
            split = "no background signal (background pixels are not skewed)"
        else:
            split = "skewness of the background pixels"
        # Propagate the errors of g and κ₃ to the baseline.
        gs = rng.normal(g, g_se, 200) if np.isfinite(g_se) and g_se > 0 else np.full(200, g)
        k3s = rng.normal(k3, k3_se, 200)
        base = [k1 - gi * _split(gi, k2, ki, f, c3)[0] for gi, ki in zip(gs, k3s)]
        base_se = float(np.std(base))
    baseline = baseline_adu if baseline_adu is not None else k1 - g * lam
    read_var = max(k2 - 1.0 / 12.0 - f * g * g * lam, 0.0)
    if (baseline_adu is None and told and not emccd and bg["n"] >= MIN_SKEW_PIXELS
            and math.sqrt(k2) < LATTICE_MAX_STD_ADU and g >= LATTICE_MIN_GAIN):
        # Coarse ADU over a few-electron lattice: the moments are biased (module doc).
        fit = lattice_scan(stats.background_hist, g, rel_range=0.0 if adu_per_e is not None else 0.06)
        # A lattice without read noise has the skewness of its Poisson counts (less up to a
        # quarter from the rounding); a smooth histogram whose variance is mostly read noise
        # fits it only with a larger λ and too much skewness (review 20: 8 e⁻ read noise at
        # 4 e⁻/ADU read as background 112 for 50, read noise 1.2 e⁻).
        model_k3 = fit.adu_per_e ** 3 * fit.background_e
        skew_fits = k3 > 0 and model_k3 <= LATTICE_MAX_SKEW_RATIO * k3
        shaped = lattice_is_sharp(fit, bg["n"])
        sharp = shaped and skew_fits
        if shaped and not skew_fits and adu_per_e is None:
            notes.append(f"the background histogram fits a rounded Poisson lattice only with "
                         f"{model_k3 / max(k3, 1e-12):.1f}× its measured third moment: it is "
                         f"read noise, not a lattice, so the {gain_source} is used")
        elif not sharp and adu_per_e is None and abs(fit.adu_per_e / g - 1.0) > 0.01:
            notes.append(f"the lattice fit of the background histogram gives {1 / fit.adu_per_e:.4g} "
                         f"e⁻/ADU, {100 * (g / fit.adu_per_e - 1):+.1f} % from the {gain_source}; "
                         f"read noise blurs the lattice (deviance {fit.deviance:.0f} for "
                         f"{fit.dof} degrees of freedom), so the slope is used")
        if (sharp and fit.margin > LATTICE_MIN_MARGIN) or adu_per_e is not None:
            if adu_per_e is None:
                if np.isfinite(g_se) and abs(fit.adu_per_e - g) > 2.0 * g_se:
                    notes.append(f"the lattice of the background histogram gives "
                                 f"{1 / fit.adu_per_e:.4g} e⁻/ADU, the {gain_source} "
                                 f"{1 / g:.4g} ± {g_se / g ** 2:.2g}: the lattice is used")
                gain_source = (f"lattice of the background histogram (exact rounding, "
                               f"log-likelihood margin {fit.margin:.0f}); the {gain_source} "
                               f"gave {g:.4g}")
                g, g_se = fit.adu_per_e, math.nan
            baseline, lam, read_var = fit.baseline_adu, fit.background_e, fit.read_noise_adu ** 2
            base_se = math.nan
            split = ("maximum likelihood of the background histogram as a rounded Poisson "
                     "lattice (the skewness is biased by the coarse rounding)")
    if mismatch:
        notes.append(mismatch)
    cam = CameraEstimate(mismatch=mismatch, baseline_adu=float(baseline), adu_per_e=float(g),
                         excess_factor=f, read_noise_adu=math.sqrt(read_var),
                         background_e=float(lam),
                         background_mean_adu=k1, background_std_adu=math.sqrt(k2),
                         gain_source=gain_source, split_source=split, baseline_se_adu=base_se,
                         adu_per_e_se=float(g_se), lambda_skew=float(lam_skew),
                         lambda_max=float(lam_max), notes=notes)
    return cam, line, bg


def robust_mean_std(values: np.ndarray, n_sd: float = 3.0,
                    iterations: int = 10) -> tuple[float, float, np.ndarray]:
    """Mean and standard deviation by iterative σ-clipping at ``n_sd`` (starting from the
    median and 1.4826·MAD); also the kept mask.

    False detections (a few photons) and unresolved pairs (twice the photons) are removed;
    the std of the kept part of a normal distribution is corrected for the clipping
    (÷ 0.9866 at 3 SD).
    """
    values = np.asarray(values, np.float64)
    if values.size == 0:
        return math.nan, math.nan, np.zeros(0, bool)
    center = float(np.median(values))
    spread = 1.4826 * float(np.median(np.abs(values - center)))
    keep = np.ones(values.size, bool)
    for _ in range(iterations):
        if not spread > 0:
            break
        new = np.abs(values - center) <= n_sd * spread
        if new.sum() < 2:
            break
        center, spread = float(values[new].mean()), float(values[new].std(ddof=1))
        if np.array_equal(new, keep):
            break
        keep = new
    if keep.sum() < 2:
        return center, math.nan, keep
    from scipy.stats import truncnorm

    shrink = float(truncnorm.std(-n_sd, n_sd)) if math.isfinite(n_sd) else 1.0
    return float(values[keep].mean()), float(values[keep].std(ddof=1)) / shrink, keep


#: Isolated spots needed to use them for σ and photons (else the fluctuation estimates).
MIN_SPOTS = 200


@dataclass
class EmitterEstimate:
    """Emitters (photons before QE; nm; per µm²) and where each number came from.

    ``*_spots`` are from isolated spot fits, ``*_fluct`` from the fluctuation covariance
    (:mod:`.fluctuation`); ``photons_mean``, ``sigma_nm`` and ``density_per_um2`` are the
    values chosen for the simulation (spots when there are at least :data:`MIN_SPOTS`,
    else fluctuations). ``density_counted_per_um2`` (good fits per frame / area) is the
    documentation's estimate, a lower bound; ``density_per_um2`` is the signal per frame
    divided by the photons per emitter.
    """

    n_spots: int
    photons_mean: float
    photons_std: float
    sigma_nm: float
    sigma_std_nm: float
    density_per_um2: float
    density_counted_per_um2: float
    source: str
    photons_spots: float = math.nan
    photons_std_spots: float = math.nan
    sigma_spots_nm: float = math.nan
    sigma_std_spots_nm: float = math.nan
    background_fit_photons: float = math.nan
    photons_fluct: float = math.nan
    sigma_fluct_nm: float = math.nan
    density_fluct_per_um2: float = math.nan
    fits_per_frame: float = math.nan
    fluctuation: FluctuationEstimate | None = None
    notes: list[str] = field(default_factory=list)


def estimate_emitters(stats: ScanStats, camera: CameraEstimate, pixel_size_nm: float,
                      qe: float = 1.0) -> tuple[EmitterEstimate, dict[str, np.ndarray]]:
    """Photons (mean, spread), σ (median, spread), background and density.

    From the isolated spots, the spreads subtract the estimation noise:
    var(true) = var(estimates) − mean(CRLB), after dropping values more than 5 robust
    standard deviations from the median.

    Returns the estimate and the converted spot sample (photons, sigma_nm, bg_photons, kept).
    """
    spots = stats.spot_arrays()
    prov = stats.camera
    notes: list[str] = []
    # Provisional counts → ADU → photo-electrons → photons.
    to_photons = prov.adu_per_count / camera.adu_per_e / qe
    photons = spots["N"] * to_photons
    sigma_nm = spots["sigma_px"] * pixel_size_nm
    bg_photons = (prov.baseline_adu + spots["b"] * prov.adu_per_count - camera.baseline_adu) \
        / camera.adu_per_e / qe
    n_spots = int(photons.size)
    p_mean = p_std = s_med = s_std = bg_fit = math.nan
    keep = np.zeros(n_spots, bool)
    if n_spots >= 2:
        p_mean, p_std, keep_p = robust_mean_std(photons)
        _, s_std, keep_s = robust_mean_std(sigma_nm)
        keep = keep_p & keep_s
        crlb_p = float(np.nanmean(spots["var_N"][keep])) * to_photons ** 2
        crlb_s = float(np.nanmean(spots["var_sigma"][keep])) * pixel_size_nm ** 2
        p_std = math.sqrt(max(p_std ** 2 - crlb_p, 0.0))
        s_std = math.sqrt(max(s_std ** 2 - crlb_s, 0.0))
        s_med = float(np.median(sigma_nm[keep]))
        bg_fit = float(np.median(bg_photons[keep]))
    rows, cols = stats.frame_shape
    area_um2 = rows * cols * (pixel_size_nm / 1000.0) ** 2
    counts = np.arange(len(stats.fits_per_frame_hist))
    fits_per_frame = float((counts * stats.fits_per_frame_hist).sum() / max(stats.n_frames, 1))
    # Fluctuations: the signal above the background level, over every pixel.
    cv2 = (p_std / p_mean) ** 2 if n_spots >= MIN_SPOTS and p_mean > 0 else 0.0
    fl = estimate_fluctuation(stats.fluctuation, camera.background_mean_adu, cv2) \
        if stats.fluctuation is not None else FluctuationEstimate(reason="no frames")
    photons_fl = fl.emitter_adu / camera.adu_per_e / qe if fl.ok else math.nan
    sigma_fl = fl.sigma_px * pixel_size_nm if fl.ok else math.nan
    density_fl = fl.density_per_px2 / (pixel_size_nm / 1000.0) ** 2 if fl.ok else math.nan
    if n_spots >= MIN_SPOTS:
        source = f"{n_spots} isolated spots"
        photons_mean, photons_std, sigma, sigma_std = p_mean, p_std, s_med, s_std
    elif fl.ok:
        source = "fluctuation covariance (too few isolated spots)"
        photons_mean, sigma = photons_fl, sigma_fl
        photons_std = p_std if n_spots >= 20 else math.nan
        sigma_std = s_std if n_spots >= 20 else math.nan
        notes.append(f"only {n_spots} well-isolated spots: σ, photons and density come from the "
                     f"covariance of the frame-to-frame fluctuations, which assumes emitters "
                     f"drawn independently in every frame; their spreads are "
                     + ("from the few spots" if n_spots >= 20 else
                        "unknown (written as null: simulated without spread)"))
    else:
        source = "none"
        photons_mean = photons_std = sigma = sigma_std = math.nan
        notes.append(f"no well-isolated spots and no fluctuation estimate ({fl.reason}): "
                     f"σ and photons cannot be estimated")
    # Mean signal per pixel and frame (ADU) over the background level.
    signal_adu = stats.fluctuation.sum_1.mean() / stats.n_frames - camera.background_mean_adu \
        if stats.fluctuation is not None else math.nan
    emitter_adu = photons_mean * qe * camera.adu_per_e
    pixel_um2 = (pixel_size_nm / 1000.0) ** 2
    density = signal_adu / emitter_adu / pixel_um2 if emitter_adu > 0 else math.nan
    est = EmitterEstimate(n_spots=n_spots, photons_mean=photons_mean, photons_std=photons_std,
                          sigma_nm=sigma, sigma_std_nm=sigma_std, density_per_um2=float(density),
                          density_counted_per_um2=fits_per_frame / area_um2, source=source,
                          photons_spots=p_mean, photons_std_spots=p_std, sigma_spots_nm=s_med,
                          sigma_std_spots_nm=s_std, background_fit_photons=bg_fit,
                          photons_fluct=photons_fl, sigma_fluct_nm=sigma_fl,
                          density_fluct_per_um2=density_fl, fits_per_frame=fits_per_frame,
                          fluctuation=fl, notes=notes)
    return est, {"photons": photons, "sigma_nm": sigma_nm, "bg_photons": bg_photons, "kept": keep}
