"""Checks of a movie before any work, from a few sampled frames: pixel statistics, NaN/Inf
pixels in the frames to be localized, values that cannot be camera counts (ADU) and pixels
at the camera's full scale (saturation)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stormfold.io.movie import Movie

#: Frames read by :func:`sample_statistics` (evenly spaced over the movie).
SAMPLE_FRAMES = 16
#: Full-scale values of camera ADCs (12, 14 and 16 bits) that 16-bit and wider files hold
#: when the camera saturates, with the name used in the warning.
ADC_MAXIMA = {4095: "12-bit camera", 16383: "14-bit camera", 65535: "16-bit camera"}
#: Warn when at least this many sampled pixels sit at the saturation value. The maximum of
#: a movie that is not clipped is reached by 1–2 pixels (experiments/saturation_check.py:
#: 401 of 405 unclipped 16-frame simulations have 1 pixel at their maximum, 4 have 2), so
#: one that lands on 4095 by chance does not warn; clipped bright emitters put 1,825–1,941
#: sampled pixels at 4095 and 307–344 at 65535 (review 14: 20–100k photons, 0.3/µm²).
SATURATED_MIN_PIXELS = 5


def sample_statistics(movie: Movie, n_frames: int = SAMPLE_FRAMES) -> dict:
    """Pixel statistics of up to ``n_frames`` frames spread evenly over the movie.

    Cheap enough to run before any work (a few frames are read), and what the checks
    :func:`adu_warnings` and :func:`stormfold.physics.camera.check_baseline` use.

    Returns
    -------
    dict
        ``frames`` (the 0-based indices read), ``dtype``, ``min``, ``p1``, ``p50``,
        ``p99``, ``max`` (in the movie's units, usually ADU, over the finite pixels),
        ``non_finite_frames`` (sampled frames with NaN/Inf pixels), ``pixels`` (finite
        pixels sampled), ``saturation`` (the value a saturated pixel holds, ADU, see
        :func:`saturation_value`; None for float movies) and ``at_saturation`` (sampled
        pixels equal to it).
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
    top = float(values.max())
    level = saturation_value(movie.dtype, top)
    return {"frames": frames.tolist(), "dtype": str(movie.dtype), "min": float(values.min()),
            "p1": float(p1), "p50": float(p50), "p99": float(p99), "max": top,
            "non_finite_frames": damaged.tolist(), "pixels": int(finite.sum()),
            "saturation": level,
            "at_saturation": int(np.count_nonzero(values == level)) if level is not None else 0}


def saturation_value(dtype, sampled_max: float) -> int | None:
    """The value a saturated pixel of an integer movie holds, ADU.

    Parameters
    ----------
    dtype : numpy dtype
        The movie's pixel type.
    sampled_max : float
        Largest value of the sampled frames, ADU.

    Notes
    -----
    The dtype's maximum (255 for uint8, 65535 for uint16, ...) always; a camera ADC's
    full scale (:data:`ADC_MAXIMA`: 4095, 16383, 65535) stored in a wider integer type
    only when it is the sampled maximum (a 12-bit camera's clipped pixels read 4095 in a
    uint16 file; a movie whose pixels go beyond 4095 is not clipped there). None for
    float movies (simulations and processed data have no full scale).
    """
    kind = np.dtype(dtype)
    if kind.kind not in "iu":
        return None
    top = int(np.iinfo(kind).max)
    if sampled_max in ADC_MAXIMA and sampled_max < top:
        return int(sampled_max)
    return top


def _saturation_name(level: int, dtype: str) -> str:
    """How the warning names a saturation value."""
    top = int(np.iinfo(np.dtype(dtype)).max)
    if level == top and level not in ADC_MAXIMA:
        return f"the largest {dtype} value"
    return f"the maximum of a {ADC_MAXIMA.get(level, dtype)}"


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
    data), an image normalised to [0, 1], or constant frames. Saturated pixels — at least
    :data:`SATURATED_MIN_PIXELS` sampled pixels at the saturation value
    (:func:`saturation_value`) — bias the positions and photons of bright emitters.
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
    saturated = saturation_warning(stats)
    return found + ([saturated] if saturated else [])


def saturation_warning(stats: dict) -> str | None:
    """The line of :func:`adu_warnings` on saturated pixels, or None.

    Parameters
    ----------
    stats : dict
        From :func:`sample_statistics` (``saturation``, ADU, and ``at_saturation``).

    Returns
    -------
    str or None
        The count and share of sampled pixels at the saturation value when at least
        :data:`SATURATED_MIN_PIXELS` (constant frames are reported as such instead).
    """
    level, count = stats.get("saturation"), stats.get("at_saturation", 0)
    # One pixel at the maximum is a Poisson tail that happens to end there; a plateau of
    # identical values at full scale is clipping (SATURATED_MIN_PIXELS, measured).
    if level is None or count < SATURATED_MIN_PIXELS or stats["max"] == stats["min"]:
        return None
    share = 100.0 * count / max(stats.get("pixels", count), 1)
    return (f"{count} pixels ({share:.2g} %) of the sampled frames sit at {level} ADU, "
            f"{_saturation_name(level, stats['dtype'])}: saturated; positions and photons of "
            f"bright emitters are biased")
