"""Second-order SOFI cumulants of a movie, streamed in one pass (SPEC §6).

With δF(t) = F(t) − F̄ the per-pixel fluctuation of a movie of T frames:

- lag 0 (the variance):  G₂(0) = (1/T) Σ_{t=0}^{T−1} δF(t)²;
- lag 1:                 G₂(1) = (1/(T−1)) Σ_{t=0}^{T−2} δF(t)·δF(t+1),

both with the mean F̄ over *all* T frames. G₂(1) removes noise that is white in time (shot
and read noise), because the noise of two different frames is uncorrelated.

Accumulation is numerically stable and needs memory independent of T: each batch of frames
is reduced to its own mean and centred second moment (two passes over the batch, in
float64), and batches are merged with the pairwise update of Chan, Golub and LeVeque,
M2 = M2_a + M2_b + δ²·n_a·n_b/n. The lag-1 term is the co-moment of the paired sequences
x_t = F(t), y_t = F(t+1) (t = 0 … T−2), merged the same way,
C = C_a + C_b + δx·δy·n_a·n_b/n; the pair that straddles two batches is formed with the last
frame of the previous batch carried over. At the end,
Σ δF(t)δF(t+1) = C + n_p·(x̄ − F̄)(ȳ − F̄), n_p = T − 1. Nothing is computed from raw sums
of squares, so a large offset (camera baseline, background) costs no precision.

Only second-order auto-cumulants are implemented (``order=2``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stormfold.errors import UserError

ORDERS = (2,)
LAGS = (0, 1)


def check_order_lag(order: int, lag: int) -> None:
    """Refuse cumulant orders and lags that are not implemented (UserError)."""
    if order not in ORDERS:
        raise UserError(f"only second-order SOFI cumulants are implemented (--order 2), "
                        f"got order {order}")
    if lag not in LAGS:
        raise UserError(f"the time lag of the cumulant must be 0 (variance) or 1, got {lag}")


@dataclass
class SofiStatistics:
    """Per-pixel statistics of a movie (all (rows, cols) float64, in the movie's units).

    Attributes
    ----------
    n_frames : int
        Number of frames T.
    mean : ndarray
        F̄, the temporal mean.
    variance : ndarray
        G₂(0) = (1/T) Σ δF².
    lag1 : ndarray or None
        G₂(1) = (1/(T−1)) Σ δF(t)δF(t+1) (None when T < 2).
    """

    n_frames: int
    mean: np.ndarray
    variance: np.ndarray
    lag1: np.ndarray | None

    def cumulant(self, lag: int = 0) -> np.ndarray:
        """G₂(lag) for lag 0 or 1."""
        check_order_lag(2, lag)
        if lag == 0:
            return self.variance
        if self.lag1 is None:
            raise UserError("the lag-1 cumulant needs at least 2 frames")
        return self.lag1

    def scaled(self, gain: float, offset: float = 0.0) -> "SofiStatistics":
        """Statistics of a·F + b (e.g. ADU → photons): mean a·F̄ + b, cumulants a²·G₂."""
        g2 = float(gain) ** 2
        return SofiStatistics(self.n_frames, gain * self.mean + offset, g2 * self.variance,
                              None if self.lag1 is None else g2 * self.lag1)

    def to_photons(self, camera: Any) -> "SofiStatistics":
        """ADU statistics → photons with a :class:`stormfold.physics.Camera`."""
        a = camera.photons_per_adu
        return self.scaled(a, -a * camera.baseline_adu)


class CumulantAccumulator:
    """Running mean, variance and lag-1 co-moment of a movie fed batch by batch.

    Feed consecutive batches of frames with :meth:`update` (in movie order), then call
    :meth:`result`. Independent accumulators of *consecutive* parts of a movie can be
    combined with :meth:`merge` (the pair across the boundary is added from the stored
    first and last frames). Memory: a handful of float64 frames, whatever the movie length.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        # Pairs (F(t), F(t+1)): count, means of both members, co-moment.
        self.n_pairs = 0
        self.mean_x: np.ndarray | None = None
        self.mean_y: np.ndarray | None = None
        self.comoment: np.ndarray | None = None
        self.first: np.ndarray | None = None
        self.last: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int] | None:
        return None if self.mean is None else tuple(self.mean.shape)

    # ------------------------------------------------------------------ merging
    @staticmethod
    def _merge_mean_m2(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
        if n_a == 0:
            return n_b, mean_b, m2_b
        n = n_a + n_b
        delta = mean_b - mean_a
        mean = mean_a + delta * (n_b / n)
        m2 = m2_a + m2_b + delta * delta * (n_a * n_b / n)
        return n, mean, m2

    def _add_pairs(self, n_b: int, mx_b: np.ndarray, my_b: np.ndarray, c_b: np.ndarray) -> None:
        n_a = self.n_pairs
        if n_b == 0:
            return
        if n_a == 0:
            self.n_pairs, self.mean_x, self.mean_y, self.comoment = n_b, mx_b, my_b, c_b
            return
        n = n_a + n_b
        dx = mx_b - self.mean_x
        dy = my_b - self.mean_y
        self.comoment = self.comoment + c_b + dx * dy * (n_a * n_b / n)
        self.mean_x = self.mean_x + dx * (n_b / n)
        self.mean_y = self.mean_y + dy * (n_b / n)
        self.n_pairs = n

    @staticmethod
    def _pair_moments(x: np.ndarray, y: np.ndarray):
        mx, my = x.mean(axis=0), y.mean(axis=0)
        return len(x), mx, my, np.einsum("tij,tij->ij", x - mx, y - my)

    # ------------------------------------------------------------------ public
    def update(self, frames: np.ndarray) -> "CumulantAccumulator":
        """Add the next batch of frames, shape (B, rows, cols) or (rows, cols)."""
        f = np.asarray(frames, dtype=np.float64)
        if f.ndim == 2:
            f = f[None]
        if f.ndim != 3:
            raise UserError(f"frames must be (n, rows, cols), got shape {np.shape(frames)}")
        if len(f) == 0:
            return self
        if self.mean is not None and f.shape[1:] != self.mean.shape:
            raise UserError(f"frame shape {f.shape[1:]} differs from the earlier frames' "
                            f"{self.mean.shape}")
        mean_b = f.mean(axis=0)
        dev = f - mean_b
        m2_b = np.einsum("tij,tij->ij", dev, dev)
        del dev
        self.n, self.mean, self.m2 = self._merge_mean_m2(self.n, self.mean, self.m2,
                                                         len(f), mean_b, m2_b)
        seq = f if self.last is None else np.concatenate([self.last[None], f])
        if len(seq) >= 2:
            self._add_pairs(*self._pair_moments(seq[:-1], seq[1:]))
        if self.first is None:
            self.first = f[0].copy()
        self.last = f[-1].copy()
        return self

    def merge(self, other: "CumulantAccumulator") -> "CumulantAccumulator":
        """Append the statistics of ``other``, which must hold the frames right after ours."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.__dict__.update({k: v.copy() if isinstance(v, np.ndarray) else v
                                  for k, v in other.__dict__.items()})
            return self
        if other.mean.shape != self.mean.shape:
            raise UserError("cannot merge statistics of frames of different shapes")
        # The boundary pair (our last frame, their first frame), then their own pairs.
        self._add_pairs(1, self.last, other.first, np.zeros_like(self.last))
        if other.n_pairs:
            self._add_pairs(other.n_pairs, other.mean_x, other.mean_y, other.comoment)
        self.n, self.mean, self.m2 = self._merge_mean_m2(self.n, self.mean, self.m2,
                                                         other.n, other.mean, other.m2)
        self.last = other.last.copy()
        return self

    def result(self) -> SofiStatistics:
        """The statistics of every frame fed so far."""
        if self.n == 0:
            raise UserError("no frames: cannot compute SOFI statistics of an empty movie")
        variance = self.m2 / self.n
        lag1 = None
        if self.n_pairs:
            shift = (self.mean_x - self.mean) * (self.mean_y - self.mean)
            cross = self.comoment + self.n_pairs * shift
            lag1 = cross / self.n_pairs
        return SofiStatistics(self.n, self.mean.copy(), variance, lag1)


def movie_statistics(movie_or_array: Any, batch_frames: int = 256, start: int = 0,
                     stop: int | None = None, pixel_size_nm: float | None = None,
                     progress: bool = False) -> SofiStatistics:
    """Stream a movie once and return its :class:`SofiStatistics` (in the movie's units).

    Parameters
    ----------
    movie_or_array : Movie, path or ndarray (T, rows, cols)
        A :class:`stormfold.io.Movie`, a path :func:`stormfold.io.open_movie` reads, or an
        array (frames along the first axis).
    batch_frames : int
        Frames read and reduced at once (memory ∝ batch_frames × frame size).
    start, stop : int
        Frame range (0-based, stop exclusive; default the whole movie).
    pixel_size_nm : float, optional
        Passed to :func:`open_movie` for a path.
    progress : bool
        Show a progress bar.
    """
    from tqdm import tqdm

    from stormfold.io.movie import Movie, open_movie

    if int(batch_frames) < 1:
        raise UserError(f"batch_frames must be ≥ 1, got {batch_frames}")
    own = isinstance(movie_or_array, (str, Path))
    source = open_movie(movie_or_array, pixel_size_nm=pixel_size_nm) if own else movie_or_array
    try:
        if isinstance(source, Movie):
            n_total = source.n_frames
            read = source.read
        else:
            array = np.asarray(source)
            if array.ndim != 3:
                raise UserError(f"a movie array must be (frames, rows, cols), got shape "
                                f"{array.shape}")
            n_total = len(array)

            def read(a: int, b: int) -> np.ndarray:
                return array[a:b]
        stop = n_total if stop is None else min(int(stop), n_total)
        if not 0 <= start < stop:
            raise UserError(f"frame range {start}:{stop} is empty for a movie of {n_total} frames")
        acc = CumulantAccumulator()
        with tqdm(total=stop - start, unit="frame", desc="sofi statistics", disable=not progress,
                  leave=False) as bar:
            for a in range(int(start), stop, int(batch_frames)):
                b = min(a + int(batch_frames), stop)
                acc.update(read(a, b))
                bar.update(b - a)
        return acc.result()
    finally:
        if own:
            source.close()


def sofi_cumulant(movie_or_array: Any, order: int = 2, lag: int = 0, batch_frames: int = 256,
                  start: int = 0, stop: int | None = None, camera: Any = None,
                  pixel_size_nm: float | None = None, progress: bool = False) -> np.ndarray:
    """Second-order SOFI auto-cumulant image of a movie, in one streaming pass.

    Parameters
    ----------
    movie_or_array : Movie, path or ndarray (T, rows, cols)
        The movie (ADU for a camera movie).
    order : int
        Cumulant order; only 2 is implemented (anything else raises UserError).
    lag : {0, 1}
        0: the variance ⟨δF²⟩_t; 1: ⟨δF(t)δF(t+1)⟩_t (removes temporally white noise).
    batch_frames : int
        Frames per batch (bounds the memory).
    start, stop : int
        Frame range (0-based, stop exclusive).
    camera : stormfold.physics.Camera, optional
        Convert to photons: the cumulant is multiplied by photons_per_adu² (the ADU →
        photon map is affine, so the baseline does not enter). Default: movie units.
    pixel_size_nm : float, optional
        For a path without pixel size metadata (not needed for the statistics).
    progress : bool
        Show a progress bar.

    Returns
    -------
    ndarray, shape (rows, cols), float64
        G₂(lag) in (movie units)², or photons² with ``camera``.
    """
    check_order_lag(order, lag)
    stats = movie_statistics(movie_or_array, batch_frames, start, stop, pixel_size_nm, progress)
    if camera is not None:
        stats = stats.to_photons(camera)
    return stats.cumulant(lag)
