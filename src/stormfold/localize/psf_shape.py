"""Is the movie's PSF round? A one-line warning when its spots are elongated.

Every learned engine (gridnet, Deep-STORM, the unrolled solver) was trained on round
Gaussian PSFs. An elongated spot — astigmatic 3-D data, a tilted or aberrated objective —
looks to them like two emitters side by side, and they report it as a pair (review 14:
σx/σy = 1.3 costs gridnet 0.28 in Jaccard, silently). The check below measures the spots'
elongation on the first frames an engine sees (already in photons) and warns once.

Per frame, bright spots are the maxima of the frame smoothed by a 1-px Gaussian that are
the largest within ``2·half`` px. For each, the background is the median of the ring just
outside its ``(2·half + 1)``² window, and the second central moments of the
background-subtracted window give the spot's covariance; its axis ratio is
``sqrt(λ_max / λ_min)`` after the pixel's own variance (1/12 px²) is taken from both
eigenvalues. Only spots with a shot-noise signal-to-noise ratio ≥ :data:`MIN_SNR` count:
noise spreads the eigenvalues apart, so dim spots look elongated. The window's half-width
follows the spots' size (three times their median RMS width, 3–8 px). The median ratio over
at least :data:`MIN_SPOTS` spots is compared with :data:`AXIS_RATIO_ABOVE`. The orientation
is not averaged, so the two orientations of astigmatic data (above and below focus) count
alike.
"""
from __future__ import annotations

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
#: Warn only once this many spots were measured (over the first batches).
MIN_SPOTS = 20
#: Give up (say nothing) after this many frames without enough isolated spots.
MAX_FRAMES = 256
#: Warn when the median axis ratio exceeds this (`experiments/psf_shape.py`, record
#: `experiments/results/psf_shape.md`: the 19 round-PSF movies on which the check decided
#: — σ 0.7–2.0 px, 2,000–10,000 photons, background 0–200, 0.5–2/µm², sCMOS, EMCCD —
#: give medians of 1.03–1.145 and none warns; σx/σy = 1.2, 1.3, 1.5 give 1.20–1.55 and all
#: warn; 1.15 warns on 3 of 4, 1.1 on none. Crowded movies, 6/µm² and up, never decide).
AXIS_RATIO_ABOVE = 1.17


def spot_axis_ratios(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """Axis ratios (≥ 1) of the bright isolated spots of ``frames`` (photons).

    Parameters
    ----------
    frames : (n, rows, cols) or (rows, cols) array
        Frames in photons (after the camera conversion).

    Returns
    -------
    ratios : ndarray of float
        One ratio per spot that passed the SNR and crowding tests; empty when none did.
    candidates : int
        Isolated spots with an SNR of at least :data:`CANDIDATE_SNR` (the measured ones
        among them).
    """
    frames = np.asarray(frames, dtype=np.float64)
    if frames.ndim == 2:
        frames = frames[None]
    first, _ = _covariances(frames, 1.2)
    if first.shape[0] == 0:
        return np.empty(0), 0
    size = float(np.clip(np.sqrt(np.median(first[:, 0] + first[:, 1]) / 2), 0.7, 2.5))
    cov, candidates = _covariances(frames, size)
    mean = (cov[:, 0] + cov[:, 1]) / 2
    dev = np.sqrt(((cov[:, 0] - cov[:, 1]) / 2) ** 2 + cov[:, 2] ** 2)
    ok = mean - dev > 0
    return np.sqrt((mean[ok] + dev[ok]) / (mean[ok] - dev[ok])), candidates


def _covariances(frames: np.ndarray, weight_px: float) -> tuple[np.ndarray, int]:
    """``(n_spots, 3)`` PSF covariances (Cxx, Cyy, Cxy; px², pixel integration removed) of
    the bright isolated spots of ``frames``, from moments weighted by a round Gaussian of
    σ ``weight_px``, and the number of isolated spots with an SNR ≥ :data:`CANDIDATE_SNR`.

    For a Gaussian spot of covariance C, the moments weighted by a Gaussian of covariance
    W are those of (C⁻¹ + W⁻¹)⁻¹, so C follows from them exactly; the weight keeps the far
    pixels' noise and the neighbours' tails out of the moments.
    """
    n, rows, cols = frames.shape
    half = int(np.clip(np.ceil(3 * weight_px), 3, 8))
    box, pad = 2 * half + 1, half + 2
    if rows < box + 4 or cols < box + 4:
        return np.empty((0, 3)), 0
    smooth = ndimage.gaussian_filter(frames, (0, 1, 1), mode="nearest")
    peak = smooth == ndimage.maximum_filter(smooth, size=(1, box, box), mode="nearest")
    peak[:, :pad, :] = peak[:, -pad:, :] = False
    peak[:, :, :pad] = peak[:, :, -pad:] = False
    f, r, c = np.nonzero(peak)
    if f.size == 0:
        return np.empty((0, 3)), 0
    # Windows with a one-pixel ring around them, gathered at once.
    off = np.arange(-half - 1, half + 2)
    win = frames[f[:, None, None], r[:, None, None] + off[None, :, None],
                 c[:, None, None] + off[None, None, :]]
    ring = np.ones((box + 2, box + 2), bool)
    ring[1:-1, 1:-1] = False
    bg = np.median(win[:, ring], axis=1)
    lonely = _isolated(smooth, f, r, c, bg, 2 * half)
    f, r, c, win, bg = f[lonely], r[lonely], c[lonely], win[lonely], bg[lonely]
    if f.size == 0:
        return np.empty((0, 3)), 0
    core = win[:, 1:-1, 1:-1]
    signal = core - bg[:, None, None]
    y, x = np.meshgrid(np.arange(box, dtype=np.float64) - half,
                       np.arange(box, dtype=np.float64) - half, indexing="ij")
    cx = cy = np.zeros(f.size)
    for _ in range(3):  # the weight follows the spot's centre
        dx, dy = x[None] - cx[:, None, None], y[None] - cy[:, None, None]
        w = np.exp(-(dx * dx + dy * dy) / (2 * weight_px ** 2))
        ws = w * signal
        total = ws.sum(axis=(1, 2))
        safe = np.where(total > 0, total, 1.0)
        cx = np.clip((ws * x).sum(axis=(1, 2)) / safe, -1.0, 1.0) + cx * 0
        cy = np.clip((ws * y).sum(axis=(1, 2)) / safe, -1.0, 1.0)
    dx, dy = x[None] - cx[:, None, None], y[None] - cy[:, None, None]
    w = np.exp(-(dx * dx + dy * dy) / (2 * weight_px ** 2))
    ws = w * signal
    total = ws.sum(axis=(1, 2))
    noise = np.sqrt(np.maximum((w * w * core).sum(axis=(1, 2)), 1e-9))
    # A neighbour's light in the ring (its mean well above its median) marks a crowded
    # spot whose moments would mix two emitters.
    ring_excess = (win[:, ring].mean(axis=1) - bg) * ring.sum()
    lonely = ring_excess <= RING_EXCESS * signal.sum(axis=(1, 2))
    candidates = int(np.count_nonzero(lonely & (total / noise >= CANDIDATE_SNR)))
    keep = lonely & (total / noise >= MIN_SNR)
    if not keep.any():
        return np.empty((0, 3)), candidates
    ws, total, dx, dy = ws[keep], total[keep], dx[keep], dy[keep]
    m = np.stack([(ws * dx * dx).sum(axis=(1, 2)), (ws * dy * dy).sum(axis=(1, 2)),
                  (ws * dx * dy).sum(axis=(1, 2))], axis=1) / total[:, None]
    # C = (M⁻¹ − W⁻¹)⁻¹ for 2 × 2 symmetric matrices, then minus the pixel's 1/12 px².
    det = m[:, 0] * m[:, 1] - m[:, 2] ** 2
    good = det > 0
    m, det = m[good], det[good]
    inv = np.stack([m[:, 1] / det - 1 / weight_px ** 2, m[:, 0] / det - 1 / weight_px ** 2,
                    -m[:, 2] / det], axis=1)
    det2 = inv[:, 0] * inv[:, 1] - inv[:, 2] ** 2
    good = (det2 > 0) & (inv[:, 0] > 0)
    inv, det2 = inv[good], det2[good]
    return np.stack([inv[:, 1] / det2 - 1 / 12, inv[:, 0] / det2 - 1 / 12, -inv[:, 2] / det2],
                    axis=1), candidates


def _isolated(smooth: np.ndarray, f: np.ndarray, r: np.ndarray, c: np.ndarray,
              bg: np.ndarray, reach: int) -> np.ndarray:
    """Spots with no other local maximum of ``smooth`` within ``reach`` px (Chebyshev)
    brighter than :data:`NEIGHBOUR_SHARE` of their own height above ``bg``."""
    local = smooth == ndimage.maximum_filter(smooth, size=(1, 3, 3), mode="nearest")
    padded = np.pad(np.where(local, smooth, -np.inf), ((0, 0), (reach, reach), (reach, reach)),
                    constant_values=-np.inf)
    off = np.arange(2 * reach + 1)
    near = padded[f[:, None, None], r[:, None, None] + off[None, :, None],
                  c[:, None, None] + off[None, None, :]]
    near[:, reach, reach] = -np.inf
    height = smooth[f, r, c] - bg
    return (near.max(axis=(1, 2)) - bg) < NEIGHBOUR_SHARE * height


class EllipticityCheck:
    """Warns once when the spots of the first frames an engine sees are elongated.

    Parameters
    ----------
    consequence : str
        What the engine does with an elongated spot (the middle of the one-line message).

    Attributes
    ----------
    warn : callable(str) or None
        As :attr:`stormfold.localize.domain.DomainCheck.warn`.
    message : str or None
        The warning given, if any.
    ratios : list of ndarray
        Axis ratios measured so far.
    """

    def __init__(self, consequence: str):
        self.consequence = consequence
        self.reset()

    def reset(self, warn=None) -> None:
        """Measure again (a new movie), warning through ``warn``."""
        self.done = False
        self.message: str | None = None
        self.ratios: list[np.ndarray] = []
        self.frames = 0
        self.candidates = 0
        self.warn = warn

    @property
    def median_ratio(self) -> float | None:
        """Median axis ratio of the spots measured so far (None before any)."""
        found = np.concatenate(self.ratios) if self.ratios else np.empty(0)
        return float(np.median(found)) if found.size else None

    def __call__(self, photons: np.ndarray) -> None:
        """Measure a batch of frames (photons) until enough spots were seen (or
        :data:`MAX_FRAMES` frames were, in crowded movies: then nothing is said)."""
        if self.done:
            return
        photons = np.asarray(photons)
        ratios, candidates = spot_axis_ratios(photons)
        self.ratios.append(ratios)
        self.candidates += candidates
        self.frames += 1 if photons.ndim == 2 else photons.shape[0]
        n = sum(r.size for r in self.ratios)
        # When most single emitters are too dim to measure, the bright spots that pass are
        # mostly pairs blended into one elongated spot: nothing can be said then.
        if n < MIN_SPOTS or n < MIN_MEASURED_SHARE * self.candidates:
            self.done = self.frames >= MAX_FRAMES
            return
        self.done = True
        ratio = self.median_ratio
        if ratio > AXIS_RATIO_ABOVE:
            self.message = (f"the movie's spots are elongated (median axis ratio {ratio:.2f} "
                            f"over {n} bright spots; a round PSF gives about 1.0): "
                            f"{self.consequence}; astigmatic 3-D data or an aberrated PSF "
                            f"need a model trained for them (README, \"Known limits\")")
            emit(self.message, self.warn)
