"""Checks of a movie before any work, from a few sampled frames: pixel statistics, NaN/Inf
pixels in the frames to be localized, and values that cannot be camera counts (ADU)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stormfold.io.movie import Movie

#: Frames read by :func:`sample_statistics` (evenly spaced over the movie).
SAMPLE_FRAMES = 16


def sample_statistics(movie: Movie, n_frames: int = SAMPLE_FRAMES) -> dict:
    """Pixel statistics of up to ``n_frames`` frames spread evenly over the movie.

    Cheap enough to run before any work (a few frames are read), and what the checks
    :func:`adu_warnings` and :func:`stormfold.physics.camera.check_baseline` use.

    Returns
    -------
    dict
        ``frames`` (the 0-based indices read), ``dtype``, ``min``, ``p1``, ``p50``,
        ``p99``, ``max`` (in the movie's units, usually ADU, over the finite pixels) and
        ``non_finite_frames`` (sampled frames with NaN/Inf pixels).
    """
    count = max(1, min(int(n_frames), movie.n_frames))
    frames = np.unique(np.linspace(0, movie.n_frames - 1, count).round().astype(np.int64))
    # NaN/Inf pixels are left out here: whether they are an error is decided when the
    # frames to be localized are read (nan_policy), not by a frame that merely was sampled.
    sample = np.stack([movie.read_context(int(i), int(i) + 1, fill=None)[0]
                       for i in frames]).astype(np.float64)
    finite = np.isfinite(sample)
    damaged = frames[~finite.reshape(len(frames), -1).all(axis=1)]
    values = sample[finite] if finite.any() else np.zeros(1)
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    return {"frames": frames.tolist(), "dtype": str(movie.dtype), "min": float(values.min()),
            "p1": float(p1), "p50": float(p50), "p99": float(p99), "max": float(values.max()),
            "non_finite_frames": damaged.tolist()}


def check_sampled_frames(movie: Movie, stats: dict, start: int = 0,
                         stop: int | None = None) -> None:
    """Refuse, before any work, NaN/Inf pixels that :func:`sample_statistics` met in a
    frame of [start, stop) when the movie's ``nan_policy`` is ``"error"`` (the message of
    :meth:`Movie.read`). Frames outside the range are not localized and do not count."""
    stop = movie.n_frames if stop is None else stop
    for i in stats.get("non_finite_frames", []):
        if start <= i < stop and movie.nan_policy == "error":
            movie.read(i, i + 1)


def adu_warnings(stats: dict) -> list[str]:
    """Reasons to doubt that a movie holds raw camera counts (ADU), from
    :func:`sample_statistics`; empty when nothing looks wrong.

    int8 movies are refused when opened (:func:`open_movie`). Float and signed-integer
    movies are accepted — simulations and corrected data are legitimately float — but the
    ADU → photon conversion (baseline, e⁻ per ADU) assumes camera counts, so values that
    cannot be counts are reported: negative pixels (background-subtracted or converted
    data), an image normalised to [0, 1], or constant frames.
    """
    found = []
    if stats["max"] == stats["min"]:
        found.append(f"the sampled frames are constant ({stats['min']:g}): no signal")
    elif np.dtype(stats["dtype"]).kind == "f" and stats["min"] >= 0 and stats["max"] <= 1:
        found.append(f"pixel values lie in [0, 1] ({stats['dtype']}): a normalised image, not "
                     f"camera counts; baseline and e-/ADU conversions will not give photons")
    if stats["min"] < 0:
        found.append(f"negative pixel values (down to {stats['min']:g}): camera counts are "
                     f"≥ 0, so the data were processed (background-subtracted or converted); "
                     f"photon counts and thresholds will be off")
    return found
