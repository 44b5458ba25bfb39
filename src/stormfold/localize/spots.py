"""The movie's spots seen from outside any engine: shape, width and brightness.

Every learned engine was trained on round Gaussian PSFs of one width (Deep-STORM and the
unrolled solver: one simulation; gridnet: a σ range) and, Deep-STORM, one brightness. Off
that, they go silently wrong: an elongated spot (astigmatic 3-D data, an aberrated PSF)
becomes a pair (review 14: σx/σy = 1.3 costs gridnet 0.28 in Jaccard); Deep-STORM reports
emitters twice as bright as its training ones 1.9× over and misses those 4× dimmer (review
17: JI 0.52 at 5,000 photons, 0.08 at 500); the unrolled model finds 2× too many at σ
150 nm for its 110 nm (0.42). An engine's own "signal per localization"
(:mod:`stormfold.localize.domain`) cannot see the first two: the extra localizations share
out the extra light. :class:`SpotCheck` measures the spots themselves on the first frames
an engine sees (in photons) and warns once per finding.

**Spots.** Per frame, the maxima of the frame smoothed by a 1-px Gaussian that are the
largest within a ``(2·half + 1)``² window; a spot counts when no other local maximum within
``half + 1`` px reaches :data:`NEIGHBOUR_SHARE` of its height and its window's one-pixel ring
holds no more than :data:`RING_EXCESS` of its signal above the ring's median (the
background). Per spot: **photons**, the background-subtracted window sum; **SNR**, the
Gaussian-weighted signal over its shot noise; and, for spots with SNR ≥ :data:`MIN_SNR`,
the **covariance** C from second moments weighted by a round Gaussian W that follows the
spot — for a Gaussian spot the weighted moments are those of (C⁻¹ + W⁻¹)⁻¹, so C follows
exactly, and the pixel's 1/12 px² is taken off. From C: the width σ = √(mean eigenvalue)
and the axis ratio √(λmax/λmin). The window's half-width is three times the spots' median
width (3–8 px), from a first pass.

**Decisions** (each once, over the first batches until :data:`MIN_SPOTS` spots, at most
:data:`MAX_FRAMES` frames): the lower quartile of the axis ratios against
:data:`AXIS_RATIO_ABOVE`, and the width against the model's σ (:class:`SpotReference`:
three in four spots beyond its box, by the quartiles), both only when at least
:data:`MIN_MEASURED_SHARE` of the spots with SNR ≥ :data:`CANDIDATE_SNR` reach
:data:`MIN_SNR` (else the bright spots are mostly blended pairs); the photons of the spots
with SNR ≥ :data:`CANDIDATE_SNR` against the model's training photons (by the quartiles too). Crowded movies
(6/µm² and up) have too few isolated spots: nothing is said.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from stormfold.localize.domain import emit

#: Spots with a shot-noise SNR (signal / √(signal + background in the window)) below this
#: are not measured.
MIN_SNR = 25.0
#: Isolated spots with at least this SNR are counted as candidates; the check decides only
#: when at least :data:`MIN_MEASURED_SHARE` of them reach :data:`MIN_SNR`.
CANDIDATE_SNR = 10.0
MIN_MEASURED_SHARE = 0.5
#: Spots whose ring holds more than this share of their signal above its median are
#: crowded and not measured.
RING_EXCESS = 0.05
#: A spot with another local maximum nearby higher than this share of its own height
#: (above the background) is crowded and not measured.
NEIGHBOUR_SHARE = 0.15
#: ... and more than this many standard deviations of the smoothed background noise.
NOISE_PEAKS = 4.0
#: Warn only once this many spots were measured (over the first batches).
MIN_SPOTS = 30
#: Decide only where isolated spots are common: at least this many per frame and 1,000 px²
#: (`experiments/spot_checks.md`: 0.5–2/µm² of σ 1.1 px emitters give 0.4–1.3; 6–10/µm²,
#: where most are blends, 0.06–0.27; wide PSFs, σ 2 px at 2/µm², 0.04: undecided) ...
MIN_SPOT_RATE = 0.35
#: ... over at least this many measured frames (the rate of a crowded movie fluctuates).
MIN_MEASURED_FRAMES = 16
#: Frames of each batch measured (the first ones).
FRAMES_PER_BATCH = 4
#: Spots narrower than this (median σ, px) are too undersampled to judge their shape.
MIN_SHAPE_SIGMA_PX = 0.75
#: Give up (say nothing) after this many frames measured without enough isolated spots.
MAX_FRAMES = 128
#: Warn when the lower quartile of the axis ratios exceeds this. A quartile, not the median:
#: the blends that remain at 2/µm² are elongated and raise the upper half only (round
#: spots, 32 frames: medians up to 1.15, lower quartiles up to 1.09; σx/σy = 1.2: lower
#: quartiles 1.18–1.19). Records: `experiments/spot_checks.py`,
#: `experiments/results/spot_checks.md`.
AXIS_RATIO_ABOVE = 1.14




@dataclass
class Spots:
    """Per isolated spot with SNR ≥ :data:`CANDIDATE_SNR`: ``photons`` (window sum above the
    background), ``snr``, and for those with SNR ≥ :data:`MIN_SNR` the width ``sigma_px``
    and the ``axis_ratio`` (NaN for the others)."""

    photons: np.ndarray
    snr: np.ndarray
    sigma_px: np.ndarray
    axis_ratio: np.ndarray

    @classmethod
    def empty(cls) -> "Spots":
        return cls(*(np.empty(0) for _ in range(4)))

    @classmethod
    def concat(cls, parts: list["Spots"]) -> "Spots":
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate([getattr(p, k) for p in parts])
                     for k in ("photons", "snr", "sigma_px", "axis_ratio")))

    @property
    def measured(self) -> np.ndarray:
        """Spots bright enough for their shape (SNR ≥ :data:`MIN_SNR`)."""
        return np.isfinite(self.axis_ratio)


def measure_spots(frames: np.ndarray) -> Spots:
    """The isolated spots of ``frames`` (photons per pixel; see the module docstring).

    Parameters
    ----------
    frames : (n, rows, cols) or (rows, cols) array
        Frames in photons (after the camera conversion).

    Returns
    -------
    Spots
    """
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim == 2:
        frames = frames[None]
    first = _measure(frames, 1.2)
    widths = first.sigma_px[first.measured]
    # Few measurable spots among many are mostly blends: their width would mislead.
    if widths.size < 3 or widths.size < MIN_MEASURED_SHARE * first.snr.size:
        return first
    return _measure(frames, float(np.clip(np.median(widths), 0.7, 2.5)))


#: A frame is lit when its brightest 3 × 3 sum exceeds 9 × its median by this many
#: standard deviations of such a sum of Poisson pixels (3·√(median + 1)).
LIT_SD = 6.0


def lit_frames(frames: np.ndarray) -> np.ndarray:
    """Boolean mask of the ``frames`` (n, rows, cols; photons) that hold some signal: a
    3 × 3 sum :data:`LIT_SD` standard deviations above the frame's median level. Noise
    alone reaches about 4 over 10⁴ pixels."""
    frames = np.asarray(frames, dtype=np.float32)
    median = np.median(frames, axis=(1, 2))
    sums = ndimage.uniform_filter(frames, size=(1, 3, 3), mode="nearest") * 9.0
    excess = sums.max(axis=(1, 2)) - 9.0 * median
    return excess > LIT_SD * 3.0 * np.sqrt(np.maximum(median, 0.0) + 1.0)


def psf_sigma_px(frames: np.ndarray) -> tuple[np.ndarray | None, int]:
    """The movie's PSF σ (px) from the isolated spots of ``frames`` (photons): the lower
    quartile, median and upper quartile of the measured spots' widths, and their number;
    None where :class:`SpotCheck` would not
    decide either (fewer than :data:`MIN_MEASURED_FRAMES` lit frames, :func:`lit_frames`, or
    :data:`MIN_SPOTS`
    measured spots, isolated spots rarer than :data:`MIN_SPOT_RATE`, or fewer than
    :data:`MIN_MEASURED_SHARE` of the candidates measurable: blends)."""
    frames = np.asarray(frames)
    frames = frames[None] if frames.ndim == 2 else frames
    # Dark frames (before the activation, a gap) would dilute the rate of isolated spots
    # and make a sparse movie look crowded (review 22: 16 dark frames of 32 left the
    # unrolled solver's σ undecided): the rate and the frame count are the lit frames'.
    frames = frames[lit_frames(frames)]
    s = measure_spots(frames) if len(frames) else Spots.empty()
    n = int(s.measured.sum())
    common = s.snr.size >= MIN_SPOT_RATE * frames.size / 1000.0 and \
        frames.shape[0] >= MIN_MEASURED_FRAMES
    if not common or n < MIN_SPOTS or n < MIN_MEASURED_SHARE * s.snr.size:
        return None, n
    return np.percentile(s.sigma_px[s.measured], [25, 50, 75]), n


def _measure(frames: np.ndarray, weight_px: float) -> Spots:
    """:class:`Spots` of ``frames`` with moments weighted by a round Gaussian of σ
    ``weight_px`` in ``(2·half + 1)``² windows, half = 3·``weight_px`` (3–8 px)."""
    n, rows, cols = frames.shape
    half = int(np.clip(np.ceil(3 * weight_px), 3, 8))
    box, pad = 2 * half + 1, half + 2
    if rows < box + 4 or cols < box + 4:
        return Spots.empty()
    smooth = ndimage.gaussian_filter(frames, (0, 1, 1), mode="nearest")
    peak = smooth == ndimage.maximum_filter(smooth, size=(1, box, box), mode="nearest")
    peak[:, :pad, :] = peak[:, -pad:, :] = False
    peak[:, :, :pad] = peak[:, :, -pad:] = False
    f, r, c = np.nonzero(peak)
    if f.size == 0:
        return Spots.empty()
    # Windows with a one-pixel ring around them, gathered at once.
    off = np.arange(-half - 1, half + 2)
    win = frames[f[:, None, None], r[:, None, None] + off[None, :, None],
                 c[:, None, None] + off[None, None, :]]
    ring = np.ones((box + 2, box + 2), bool)
    ring[1:-1, 1:-1] = False
    bg = np.median(win[:, ring], axis=1)
    # Light beyond the window and its ring does not enter the sums.
    lonely = _isolated(smooth, f, r, c, bg, half + 1)
    win, bg = win[lonely], bg[lonely]
    if bg.size == 0:
        return Spots.empty()
    core = win[:, 1:-1, 1:-1]
    signal = core - bg[:, None, None]
    y, x = np.meshgrid(np.arange(box, dtype=np.float64) - half,
                       np.arange(box, dtype=np.float64) - half, indexing="ij")
    cx = cy = np.zeros(bg.size)
    for _ in range(3):  # the weight follows the spot's centre
        dx, dy = x[None] - cx[:, None, None], y[None] - cy[:, None, None]
        ws = np.exp(-(dx * dx + dy * dy) / (2 * weight_px ** 2)) * signal
        total = ws.sum(axis=(1, 2))
        safe = np.where(total > 0, total, 1.0)
        cx = np.clip((ws * x).sum(axis=(1, 2)) / safe, -1.0, 1.0)
        cy = np.clip((ws * y).sum(axis=(1, 2)) / safe, -1.0, 1.0)
    dx, dy = x[None] - cx[:, None, None], y[None] - cy[:, None, None]
    w = np.exp(-(dx * dx + dy * dy) / (2 * weight_px ** 2))
    ws = w * signal
    total = ws.sum(axis=(1, 2))
    snr = total / np.sqrt(np.maximum((w * w * core).sum(axis=(1, 2)), 1e-9))
    photons = signal.sum(axis=(1, 2))
    # A neighbour's light in the ring (its mean well above its median, beyond what the
    # ring's shot noise explains) marks a crowded spot whose sums would mix two emitters.
    n_ring = int(ring.sum())
    ring_excess = (win[:, ring].mean(axis=1) - bg) * n_ring
    allowed = np.maximum(RING_EXCESS * photons, 3 * np.sqrt(n_ring * np.maximum(bg, 1.0)))
    keep = (ring_excess <= allowed) & (snr >= CANDIDATE_SNR)
    ws, total, dx, dy, snr, photons = (a[keep] for a in (ws, total, dx, dy, snr, photons))
    m = np.stack([(ws * dx * dx).sum(axis=(1, 2)), (ws * dy * dy).sum(axis=(1, 2)),
                  (ws * dx * dy).sum(axis=(1, 2))], axis=1) / np.where(total > 0, total, 1)[:, None]
    # C = (M⁻¹ − W⁻¹)⁻¹ for 2 × 2 symmetric matrices, then minus the pixel's 1/12 px².
    with np.errstate(divide="ignore", invalid="ignore"):
        det = m[:, 0] * m[:, 1] - m[:, 2] ** 2
        inv = np.stack([m[:, 1] / det - 1 / weight_px ** 2, m[:, 0] / det - 1 / weight_px ** 2,
                        -m[:, 2] / det], axis=1)
        det2 = inv[:, 0] * inv[:, 1] - inv[:, 2] ** 2
        cxx, cyy, cxy = inv[:, 1] / det2 - 1 / 12, inv[:, 0] / det2 - 1 / 12, -inv[:, 2] / det2
        mean = (cxx + cyy) / 2
        dev = np.sqrt(((cxx - cyy) / 2) ** 2 + cxy ** 2)
        valid = (snr >= MIN_SNR) & (det > 0) & (det2 > 0) & (inv[:, 0] > 0) & (mean - dev > 0)
        sigma = np.where(valid, np.sqrt(np.abs(mean)), np.nan)
        ratio = np.where(valid, np.sqrt(np.abs((mean + dev) / (mean - dev))), np.nan)
    return Spots(photons=photons, snr=snr, sigma_px=sigma, axis_ratio=ratio)


def _isolated(smooth: np.ndarray, f: np.ndarray, r: np.ndarray, c: np.ndarray,
              bg: np.ndarray, reach: int) -> np.ndarray:
    """Spots with no other local maximum of ``smooth`` within ``reach`` px (Chebyshev)
    higher above ``bg`` than :data:`NEIGHBOUR_SHARE` of their own height and than the
    smoothed shot noise's :data:`NOISE_PEAKS` standard deviations (noise peaks around a dim
    spot are not neighbours)."""
    local = smooth == ndimage.maximum_filter(smooth, size=(1, 3, 3), mode="nearest")
    padded = np.pad(np.where(local, smooth, -np.inf), ((0, 0), (reach, reach), (reach, reach)),
                    constant_values=-np.inf)
    off = np.arange(2 * reach + 1)
    near = padded[f[:, None, None], r[:, None, None] + off[None, :, None],
                  c[:, None, None] + off[None, None, :]]
    near[:, reach, reach] = -np.inf
    height = smooth[f, r, c] - bg
    # A 1-px Gaussian smoothing leaves 1/(2√π) of the per-pixel noise (√bg photons).
    noise = np.sqrt(np.maximum(bg, 1.0)) / (2 * np.sqrt(np.pi))
    return (near.max(axis=(1, 2)) - bg) < np.maximum(NEIGHBOUR_SHARE * height,
                                                     NOISE_PEAKS * noise)


@dataclass(frozen=True)
class SpotReference:
    """What a model was trained on, for :class:`SpotCheck` (None: not checked).

    Attributes
    ----------
    sigma_nm : float or None
        PSF σ of the training simulation, nm.
    sigma_range : (float, float)
        Measured width over the model's σ outside which it warns.
    photons : float or None
        Mean photons per emitter of the training simulation.
    photons_range : (float, float)
        Measured photons over the training photons outside which it warns.
    consequence : str
        What goes wrong (end of the message).
    """

    sigma_nm: float | None = None
    sigma_range: tuple[float, float] = (0.0, float("inf"))
    photons: float | None = None
    photons_range: tuple[float, float] = (0.0, float("inf"))
    consequence: str = ""


class SpotCheck:
    """Warns once per finding when the spots of the first frames an engine sees are
    elongated, or (with a :class:`SpotReference`) wider or narrower or brighter or dimmer
    than the model's training spots (see the module docstring).

    Parameters
    ----------
    elongated : str
        What the engine does with an elongated spot (the middle of that message).
    reference : SpotReference, optional
        The training spots' width and brightness.

    Attributes
    ----------
    warn : callable(str) or None
        As :attr:`stormfold.localize.domain.DomainCheck.warn`.
    messages : list of str
        The warnings given.
    """

    def __init__(self, elongated: str, reference: SpotReference | None = None):
        self.elongated = elongated
        self.reference = reference
        self.reset()

    def reset(self, warn=None) -> None:
        """Measure again (a new movie), warning through ``warn``."""
        self.done = False
        self.shape_done = self.photons_done = False
        self.messages: list[str] = []
        self.parts: list[Spots] = []
        self.frames = 0
        self.area_px = 0
        self.warn = warn

    @property
    def message(self) -> str | None:
        """The warnings given, joined (None: none)."""
        return " / ".join(self.messages) if self.messages else None

    @property
    def spots(self) -> Spots:
        """All spots measured so far."""
        return Spots.concat(self.parts)

    @property
    def axis_ratio(self) -> float | None:
        """Lower quartile of the axis ratios measured so far (None before any)."""
        s = self.spots
        return float(np.percentile(s.axis_ratio[s.measured], 25)) if s.measured.any() \
            else None

    def _say(self, line: str) -> None:
        self.messages.append(line)
        emit(line, self.warn)

    def __call__(self, photons: np.ndarray, pixel_size_nm: float | None = None) -> None:
        """Measure a batch of frames (photons) until each finding is decided (or
        :data:`MAX_FRAMES` frames were seen: then nothing more is said); ``pixel_size_nm``
        (nm) is needed for the width test."""
        if self.done:
            return
        frames = np.asarray(photons)
        frames = frames[None] if frames.ndim == 2 else frames
        # A few frames of each batch: 50–150 ms and ~15 MB per 512² frame (review 19).
        frames = frames[:FRAMES_PER_BATCH]
        self.parts.append(measure_spots(frames))
        self.frames += frames.shape[0]
        self.area_px += frames.shape[0] * frames.shape[1] * frames.shape[2]
        s = self.spots
        n = int(s.measured.sum())
        # Where isolated spots are rare, most of those found are two emitters blended into
        # one wider, brighter, elongated spot; and when most single emitters are too dim to
        # measure, the bright ones that pass are such pairs: nothing can be said then.
        # Not relaxed for wide spots: blends look wide, and would relax it themselves (a
        # round PSF at 8/µm² then read as elongated).
        common = s.snr.size >= MIN_SPOT_RATE * self.area_px / 1000.0 and \
            self.frames >= MIN_MEASURED_FRAMES
        if not self.shape_done and common and n >= MIN_SPOTS \
                and n >= MIN_MEASURED_SHARE * s.snr.size:
            self.shape_done = True
            self._shape(s, n, pixel_size_nm)
        ref = self.reference
        if not self.photons_done and common and s.photons.size >= MIN_SPOTS:
            self.photons_done = True
            if ref is not None and ref.photons:
                self._brightness(s, ref)
        self.done = (self.shape_done and self.photons_done) or self.frames >= MAX_FRAMES

    def _shape(self, s: Spots, n: int, pixel_size_nm: float | None) -> None:
        ratio = float(np.percentile(s.axis_ratio[s.measured], 25))
        # Below ~0.75 px a spot's moments depend on where it sits in its pixel, separately
        # along x and y: round spots read as elongated (review 19: σ 0.5 px, binned runs).
        undersampled = float(np.median(s.sigma_px[s.measured])) < MIN_SHAPE_SIGMA_PX
        if ratio > AXIS_RATIO_ABOVE and not undersampled:
            self._say(f"the movie's spots are elongated (three in four of {n} bright spots "
                      f"have an axis ratio above {ratio:.2f}; a round PSF gives about 1.05): "
                      f"{self.elongated}; "
                      f"astigmatic 3-D data or an aberrated PSF need a model trained for "
                      f"them (README, \"Known limits\")")
            return  # an elongated spot's width says nothing of the model's σ
        ref = self.reference
        if ref is None or not ref.sigma_nm or not pixel_size_nm:
            return
        low, high = np.percentile(s.sigma_px[s.measured], [25, 75]) * pixel_size_nm
        side = _beyond(low / ref.sigma_nm, high / ref.sigma_nm, ref.sigma_range)
        if side:
            self._say(f"the movie's PSF is {'wider' if side > 0 else 'narrower'} than the "
                      f"model's: σ {low:.0f}–{high:.0f} nm (quartiles of {n} bright isolated "
                      f"spots), trained at {ref.sigma_nm:g} nm; {ref.consequence}")

    def _brightness(self, s: Spots, ref: SpotReference) -> None:
        low, high = np.percentile(s.photons, [25, 75])
        side = _beyond(low / ref.photons, high / ref.photons, ref.photons_range)
        if side:
            self._say(f"the movie's emitters are {'brighter' if side > 0 else 'dimmer'} than "
                      f"the model's: {low:.0f}–{high:.0f} photons (quartiles of "
                      f"{s.photons.size} isolated spots), trained at {ref.photons:g}; "
                      f"{ref.consequence}")


def _beyond(low: float, high: float, bounds: tuple[float, float]) -> int:
    """+1 when three in four values lie above the box (the lower quartile ``low`` does), −1
    when three in four lie below it (the upper quartile ``high``), else 0: blends of two
    emitters, wider and brighter, move one tail only."""
    return 1 if low > bounds[1] else -1 if high < bounds[0] else 0
