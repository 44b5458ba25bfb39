"""Movies held in memory (numpy or dask arrays) behind the :class:`~stormfold.io.movie.Movie`
interface, so the streaming runner, calibration and SOFI take them like files.

Used for frames that have no file of their own: a simulation kept in memory, an image
layer of a viewer, a stack computed in a notebook. A dask array stays lazy: frames are
computed batch by batch as the runner asks for them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stormfold.errors import UserError
from stormfold.io.metadata import check_camera_pixel_size
from stormfold.io.movie import Movie, check_count_dtype, check_nan_policy


class _ArrayReader:
    """Frame ranges of an array-like ``(frames, rows, cols)`` as owned numpy copies."""

    def __init__(self, frames: Any):
        self._frames = frames

    def read(self, start: int, stop: int) -> np.ndarray:
        # np.array copies a numpy slice and computes a dask one: the caller owns the result.
        return np.array(self._frames[start:stop])

    def close(self) -> None:
        self._frames = None


def movie_from_array(frames: Any, pixel_size_nm: float | None = None,
                     metadata: dict | None = None, name: str = "<array>",
                     nan_policy: str = "error") -> Movie:
    """A :class:`Movie` reading from an array of frames.

    Parameters
    ----------
    frames : array-like, shape (n_frames, rows, cols) or (rows, cols)
        Camera frames in ADU (numpy, dask or any array with ``shape``, ``dtype`` and
        slicing). The array is not copied; a single 2-D frame is a one-frame movie.
    pixel_size_nm : float, optional
        Camera pixel size (nm, 10–2000), as for :func:`stormfold.io.movie.open_movie`.
    metadata : dict, optional
        As :attr:`Movie.metadata`; ``{"info": {"camera": {...}}}`` gives the camera the way
        a stormfold-written TIFF does (see :func:`stormfold.localize.runner.resolve_camera`).
    name : str
        What error messages and ``run.yaml`` call the movie.
    nan_policy : {"error", "zero", "median"}
        NaN/Inf pixels are an error when read, or replaced (0, the frame's median) and counted
        (:meth:`Movie.repairs`), as for files.

    Raises
    ------
    UserError
        Not a stack of 2-D frames, no frames, colour, non-numeric or int8 pixels, bad pixel
        size or ``nan_policy``.
    """
    shape = tuple(int(n) for n in getattr(frames, "shape", ()))
    dtype = np.dtype(getattr(frames, "dtype", np.float64))
    if len(shape) == 2:
        frames = frames[None]
        shape = (1, *shape)
    if len(shape) != 3:
        raise UserError(f"{name}: a movie is a stack of 2-D frames (frames, rows, cols), got "
                        f"an array of shape {shape}")
    if min(shape) < 1:
        raise UserError(f"{name}: empty movie (shape {shape})")
    check_count_dtype(dtype, name)
    px = None if pixel_size_nm is None else check_camera_pixel_size(pixel_size_nm, name)
    note = None if px is not None else "an array without a pixel size"
    meta = {"format": "array", **(metadata or {})}
    return Movie(Path(name), _ArrayReader(frames), shape[0], shape[1:], dtype, px, meta, note,
                 nan_policy=check_nan_policy(nan_policy))
