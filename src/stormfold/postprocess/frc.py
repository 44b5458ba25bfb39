"""Fourier ring correlation (FRC) resolution of a localization table (SPEC §8).

Following Nieuwenhuizen et al. (Nat. Methods 10:557, 2013): the localizations are split
into two halves — at random (``split="random"``, each localization independently) or by
alternating blocks of ``block_frames`` frames (``split="blocks"``, which also keeps
repeated detections of one blinking event together) — and both are rendered as
histograms on the same square grid with pixel ``pixel_nm``, multiplied by a 2-D Tukey
window (α = ``tukey_alpha``) and Fourier transformed. With rings of integer radius k in
frequency-index units (spatial frequency q = k / (N · pixel_nm), cycles per nm):

    FRC(q) = Re Σ_ring F₁ F₂* / √(Σ_ring |F₁|² · Σ_ring |F₂|²)

The curve is smoothed with a moving average of ``smooth_rings`` rings, and the
resolution is 1/q at its first crossing (linearly interpolated, DC ring excluded) of
the threshold 1/7. When it never crosses below the Nyquist frequency the resolution is
finer than two pixels and is reported as ``None``.

For localizations of fixed sites, each site seen n times with isotropic Gaussian
jitter σ, a random split gives FRC(q) ≈ (n − 1)g / (2 + (n − 1)g) with
g = exp(−4π²σ²q²), hence a resolution of 2πσ / √ln(3(n − 1)) — the relation the tests
check.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import pandas as pd
import scipy.fft
from scipy.ndimage import uniform_filter1d
from scipy.signal.windows import tukey

from stormfold.errors import UserError
from stormfold.postprocess.render import histogram_2d
from stormfold.table import check_length_nm, validate_table

SPLITS = ("random", "blocks")
THRESHOLD = 1.0 / 7.0
#: Largest FRC grid side (pixels).
MAX_SIDE = 16384
#: Smallest grid side (pixels): fewer rings carry no resolution.
MIN_SIDE = 16
#: Fewest localizations in the smaller half: below, the two renderings are a few isolated
#: points whose FRC curve crosses the threshold wherever their spacing puts it (3
#: localizations gave "695 nm", 50 gave "473 nm"), not a resolution.
MIN_HALF = 50


@dataclass
class FrcParams:
    """Parameters of :func:`frc` (the ``frc`` section of a post-processing YAML).

    Attributes
    ----------
    pixel_nm : float
        Pixel size (nm) of the two renderings; the resolution must exceed 2 pixels.
    split : {"random", "blocks"}
        How the localizations are split in two.
    block_frames : int
        Frames per block for ``split="blocks"``.
    seed : int
        Random seed of ``split="random"``.
    tukey_alpha : float
        Taper fraction of the Tukey window (0: none, 1: Hann).
    smooth_rings : int
        Moving-average window (rings) of the curve before the threshold crossing.
    threshold : float
        FRC threshold (default 1/7).
    """

    pixel_nm: float = 5.0
    split: Literal["random", "blocks"] = "random"
    block_frames: int = 100
    seed: int = 0
    tukey_alpha: float = 0.25
    smooth_rings: int = 5
    threshold: float = THRESHOLD

    def validate(self) -> None:
        check_length_nm(self.pixel_nm, "frc: pixel_nm")
        if self.block_frames < 1:
            raise UserError(f"frc: block_frames must be ≥ 1, got {self.block_frames}")
        if not 0 <= self.tukey_alpha <= 1:
            raise UserError(f"frc: tukey_alpha must be in [0, 1], got {self.tukey_alpha}")
        if int(self.smooth_rings) != self.smooth_rings or self.smooth_rings < 1:
            raise UserError(f"frc: smooth_rings must be an integer ≥ 1, got {self.smooth_rings}")
        if not 0 < self.threshold < 1:
            raise UserError(f"frc: threshold must be in (0, 1), got {self.threshold}")
        if self.seed < 0:
            raise UserError(f"frc: seed must be ≥ 0, got {self.seed}")


@dataclass
class FrcResult:
    """FRC curve and resolution.

    Attributes
    ----------
    curve : pandas.DataFrame
        ``q_per_nm`` (ring frequency, cycles/nm), ``frc`` (raw), ``frc_smoothed``,
        ``n_pixels`` (Fourier pixels in the ring).
    resolution_nm : float or None
        1/q at the first crossing of the threshold (None: not crossed below Nyquist).
    stats : dict
        Parameters and the sizes of the halves.
    """

    curve: pd.DataFrame
    resolution_nm: Optional[float]
    stats: dict = field(default_factory=dict)


def split_halves(table: pd.DataFrame, split: str = "random", seed: int = 0,
                 block_frames: int = 100) -> np.ndarray:
    """``True`` for the rows of the first half, ``False`` for the second.

    ``random``: each row independently with probability 1/2 (``seed``); ``blocks``:
    frames [0, B) → first, [B, 2B) → second, and so on.
    """
    if split == "random":
        return np.random.default_rng(seed).random(len(table)) < 0.5
    if split == "blocks":
        if int(block_frames) != block_frames or block_frames < 1:
            raise UserError(f"block_frames must be a positive integer, got {block_frames}")
        return (table["frame"].to_numpy() // int(block_frames)) % 2 == 0
    raise UserError(f"unknown FRC split {split!r}: choose one of {', '.join(SPLITS)}")


def frc_curve(image1: np.ndarray, image2: np.ndarray, pixel_nm: float,
              tukey_alpha: float = 0.25) -> pd.DataFrame:
    """FRC of two square images of the same size.

    Parameters
    ----------
    image1, image2 : (N, N) arrays
        Renderings of the two halves.
    pixel_nm : float
        Pixel size (nm).
    tukey_alpha : float
        Taper fraction of the 2-D Tukey window.

    Returns
    -------
    pandas.DataFrame
        ``q_per_nm``, ``frc``, ``n_pixels`` for rings k = 0 … N // 2.
    """
    image1 = np.asarray(image1, np.float32)
    image2 = np.asarray(image2, np.float32)
    if image1.shape != image2.shape or image1.ndim != 2 or image1.shape[0] != image1.shape[1]:
        raise ValueError(f"FRC needs two square images of one size, got {image1.shape} "
                         f"and {image2.shape}")
    n = image1.shape[0]
    w1 = tukey(n, tukey_alpha).astype(np.float32)
    f1 = scipy.fft.rfft2(image1 * w1[:, None] * w1[None, :], workers=-1)
    f2 = scipy.fft.rfft2(image2 * w1[:, None] * w1[None, :], workers=-1)
    ky = (np.fft.fftfreq(n) * n).astype(np.float32)
    kx = np.arange(f1.shape[1], dtype=np.float32)
    ring = np.rint(np.hypot(ky[:, None], kx[None, :])).astype(np.int32).ravel()
    # The half plane of rfft2 stands for the full plane: columns other than kx = 0 and
    # the Nyquist column appear twice there.
    weight = np.full(f1.shape[1], 2.0, np.float32)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    n_rings = n // 2 + 1

    def ring_sum(values: np.ndarray) -> np.ndarray:
        return np.bincount(ring, (values * weight[None, :]).ravel())[:n_rings]

    cross = ring_sum(f1.real * f2.real + f1.imag * f2.imag)
    p1 = ring_sum(f1.real ** 2 + f1.imag ** 2)
    p2 = ring_sum(f2.real ** 2 + f2.imag ** 2)
    counts = ring_sum(np.ones(f1.shape, np.float32))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = cross / np.sqrt(p1 * p2)
    value = np.where(np.isfinite(value), value, 0.0)
    q = np.arange(n_rings) / (n * pixel_nm)
    return pd.DataFrame({"q_per_nm": q, "frc": value, "n_pixels": counts.astype(np.int64)})


def frc_resolution(q_per_nm: np.ndarray, curve: np.ndarray,
                   threshold: float = THRESHOLD) -> Optional[float]:
    """1/q (nm) at the first crossing of ``threshold`` after the DC ring, or None."""
    below = np.flatnonzero(curve[1:] < threshold)
    if not len(below):
        return None
    k = int(below[0]) + 1
    if k == 1:
        return float(1.0 / q_per_nm[1])
    c0, c1 = curve[k - 1], curve[k]
    t = (c0 - threshold) / (c0 - c1)
    q = q_per_nm[k - 1] + t * (q_per_nm[k] - q_per_nm[k - 1])
    return float(1.0 / q)


def frc(table: pd.DataFrame, pixel_nm: float = 5.0, split: str = "random", seed: int = 0,
        block_frames: int = 100, tukey_alpha: float = 0.25, smooth_rings: int = 5,
        threshold: float = THRESHOLD) -> FrcResult:
    """FRC resolution of a localization table (see the module docstring).

    Parameters
    ----------
    table : pandas.DataFrame
        Localization table.
    pixel_nm : float
        Rendering pixel size (nm); use a few times smaller than the expected resolution.
    split : {"random", "blocks"}
        How to split the localizations.
    seed : int
        Seed of the random split.
    block_frames : int
        Block length (frames) of the ``blocks`` split.
    tukey_alpha : float
        Taper fraction of the Tukey window.
    smooth_rings : int
        Moving-average window (rings) before the threshold crossing.
    threshold : float
        FRC threshold, in (0, 1).

    Returns
    -------
    FrcResult

    Raises
    ------
    UserError
        A parameter out of range (:meth:`FrcParams.validate`), or fewer than
        :data:`MIN_HALF` localizations in the smaller half.
    """
    table = validate_table(table)
    check_length_nm(pixel_nm, "FRC pixel size")
    FrcParams(pixel_nm, split, block_frames, seed, tukey_alpha, smooth_rings,
              threshold).validate()
    if len(table) < 2:
        raise UserError("FRC needs at least two localizations")
    first = split_halves(table, split, seed, block_frames)
    if first.all() or not first.any():
        raise UserError(f"the {split} split left one half empty (all localizations in one "
                        f"block of frames?): use a smaller --block-frames or --split random")
    x = table["x_nm"].to_numpy()
    y = table["y_nm"].to_numpy()
    side_nm = max(float(np.ptp(x)), float(np.ptp(y)), pixel_nm)
    n = scipy.fft.next_fast_len(int(np.ceil(side_nm / pixel_nm)) + 1, real=True)
    if n > MAX_SIDE:
        raise UserError(f"FRC grid at {pixel_nm:g} nm would be {n} × {n} pixels: use a larger "
                        f"--pixel-nm or an ROI")
    if n < MIN_SIDE:
        span = max(float(np.ptp(x)), float(np.ptp(y)))
        raise UserError(f"FRC grid at {pixel_nm:g} nm would be {n} × {n} pixels (the "
                        f"localizations span {span:g} nm): use a --pixel-nm of at most "
                        f"{span / (MIN_SIDE - 1):.3g} nm (at least {MIN_SIDE} pixels across)")
    smaller = int(min(first.sum(), (~first).sum()))
    if smaller < MIN_HALF:
        raise UserError(f"FRC from {len(table)} localizations ({smaller} in the smaller half, "
                        f"fewer than {MIN_HALF}): too few for a resolution")
    # Centre the data on the grid so the window tapers every side alike.
    half = 0.5 * n * pixel_nm
    origin = (0.5 * (float(x.min()) + float(x.max())) - half,
              0.5 * (float(y.min()) + float(y.max())) - half)
    image1 = histogram_2d(x[first], y[first], pixel_nm, (n, n), origin).astype(np.float32)
    image2 = histogram_2d(x[~first], y[~first], pixel_nm, (n, n), origin).astype(np.float32)
    curve = frc_curve(image1, image2, pixel_nm, tukey_alpha)
    smoothed = curve["frc"].to_numpy()
    if smooth_rings > 1:
        smoothed = uniform_filter1d(smoothed, int(smooth_rings), mode="nearest")
    curve["frc_smoothed"] = smoothed
    resolution = frc_resolution(curve["q_per_nm"].to_numpy(), smoothed, threshold)
    stats = {"pixel_nm": float(pixel_nm), "split": split, "seed": int(seed),
             "block_frames": int(block_frames), "tukey_alpha": float(tukey_alpha),
             "smooth_rings": int(smooth_rings), "threshold": float(threshold),
             "grid": int(n), "n_half1": int(first.sum()), "n_half2": int((~first).sum()),
             "resolution_nm": None if resolution is None else round(resolution, 3)}
    return FrcResult(curve[["q_per_nm", "frc", "frc_smoothed", "n_pixels"]], resolution, stats)
