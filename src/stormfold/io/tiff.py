"""TIFF writers: whole images/stacks (:func:`write_tiff`) and streamed movies
(:class:`TiffStackWriter`).

Layout of the files written:

* Up to :data:`BIGTIFF_BYTES` of pixel data: an **ImageJ** TIFF (Fiji shows the pixel
  size). Resolution tags in pixels per µm (``XResolution = 1000 / pixel_size_nm``),
  ImageJ ``unit=um``, axes ``YX`` or ``TYX`` (frames). ImageJ knows only uint8,
  uint16, int16 and float32: float64/float16 are stored as float32, bool as uint8;
  other integer types are written as plain TIFF (below).
* Larger data (ImageJ files cannot be BigTIFF), or dtypes ImageJ lacks: a plain
  **BigTIFF/TIFF** with resolution in pixels per centimetre (``ResolutionUnit = 3``,
  ``XResolution = 1e7 / pixel_size_nm``).

``metadata`` (a small JSON-serialisable dict) is stored as JSON text: in the ImageJ
``Info`` property (Fiji: Image > Show Info) for ImageJ files, under the ``info`` key of
tifffile's JSON ImageDescription for plain files. :func:`stormfold.io.open_movie`
returns it as ``movie.metadata["info"]``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from stormfold.errors import UserError
from stormfold.io.atomic import atomic_path
from stormfold.io.metadata import check_pixel_size

#: Pixel data larger than this (bytes, ~3.9 GB) go to BigTIFF, keeping clear of the
#: 4 GiB offset limit of classic TIFF (headers and IFDs need room too).
BIGTIFF_BYTES = 3_900_000_000

_IMAGEJ_CHARS = "BHhf"  # uint8, uint16, int16, float32
# Written memory maps are flushed after this many bytes so dirty pages stay bounded.
_FLUSH_BYTES = 256 * 2**20


def _stored_dtype(dtype: np.dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype.kind == "f" and dtype.char != "f":
        return np.dtype(np.float32)
    return dtype.newbyteorder("=")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metadata value {value!r} is not JSON-serialisable")


def _tiff_options(shape: tuple[int, ...], dtype: np.dtype, pixel_size_nm: float | None,
                  metadata: dict | None) -> dict:
    """Keyword arguments for tifffile.imwrite/memmap (see the module docstring)."""
    nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    axes = "TYX" if len(shape) == 3 else "YX"
    info = None if metadata is None else json.dumps(metadata, default=_json_default)
    imagej = nbytes <= BIGTIFF_BYTES and dtype.char in _IMAGEJ_CHARS
    options: dict[str, Any] = {"photometric": "minisblack"}
    if imagej:
        meta: dict[str, Any] = {"axes": axes}
        if pixel_size_nm is not None:
            per_um = 1000.0 / pixel_size_nm
            options["resolution"] = (per_um, per_um)
            meta["unit"] = "um"
        if info is not None:
            meta["Info"] = info
        options.update(imagej=True, metadata=meta)
    else:
        meta = {"axes": axes}
        if pixel_size_nm is not None:
            per_cm = 1e7 / pixel_size_nm
            options.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
        if info is not None:
            meta["info"] = json.loads(info)
        options.update(bigtiff=nbytes > BIGTIFF_BYTES, metadata=meta)
    return options


def _cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert to the stored dtype; floats going to integers are rounded and clipped."""
    if array.dtype == dtype:
        return array
    if dtype.kind in "iu" and array.dtype.kind == "f":
        info = np.iinfo(dtype)
        return np.clip(np.rint(array), info.min, info.max).astype(dtype)
    return array.astype(dtype)


def write_tiff(path: str | Path, array: np.ndarray, pixel_size_nm: float | None = None,
               metadata: dict | None = None) -> Path:
    """Write a 2-D image or a 3-D stack ``(frames, rows, cols)`` as TIFF, atomically.

    Parameters
    ----------
    path : str or Path
        Output file.
    array : numpy.ndarray
        Image ``(rows, cols)`` or stack ``(frames, rows, cols)``.
    pixel_size_nm : float, optional
        Pixel size (nm) recorded in the resolution tags.
    metadata : dict, optional
        Small JSON-serialisable dict stored as JSON (see the module docstring).

    Returns
    -------
    Path
    """
    array = np.asarray(array)
    if array.ndim not in (2, 3) or 0 in array.shape:
        raise UserError(f"{path}: write_tiff needs a non-empty 2-D image or 3-D stack, got "
                        f"shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise UserError(f"{path}: write_tiff writes real numbers, got {array.dtype} data")
    px = None if pixel_size_nm is None else check_pixel_size(pixel_size_nm, str(path))
    dtype = _stored_dtype(array.dtype)
    options = _tiff_options(array.shape, dtype, px, metadata)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, _cast(array, dtype), **options)
    return Path(path)


def _reserve(path: Path) -> None:
    """Allocate the blocks of a memory-mapped file now: a full disk is then an ENOSPC
    error here, not a SIGBUS while the frames are written (file systems that cannot
    allocate ahead are left as they are)."""
    import errno
    import os

    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.fstat(fh.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise


class TiffStackWriter:
    """Stream frames into a TIFF stack whose size is known up front.

    The file is a memory map on a temporary file next to ``path`` (same layout as
    :func:`write_tiff`), renamed onto ``path`` by :meth:`close`. Memory does not grow
    with the number of frames: written pages are flushed to disk every ~256 MB.

    Parameters
    ----------
    path : str or Path
        Output file.
    n_frames : int
        Number of frames the file will hold.
    shape : tuple of int
        Frame size ``(rows, cols)`` in pixels.
    dtype : numpy dtype
        Pixel type (e.g. uint16 ADU).
    pixel_size_nm : float, optional
        Pixel size (nm) recorded in the resolution tags.
    metadata : dict, optional
        Small JSON-serialisable dict, stored as in :func:`write_tiff`.

    Examples
    --------
    >>> with TiffStackWriter("movie.tif", 1000, (64, 64), "uint16", 100.0) as out:
    ...     for first, frames in batches:
    ...         out.write(first, frames)
    """

    def __init__(self, path: str | Path, n_frames: int, shape: tuple[int, int], dtype: Any,
                 pixel_size_nm: float | None = None, metadata: dict | None = None):
        self.path = Path(path)
        self.n_frames = int(n_frames)
        self.shape = (int(shape[0]), int(shape[1]))
        if self.n_frames <= 0 or min(self.shape) <= 0:
            raise ValueError(f"TiffStackWriter needs frames and a non-empty frame shape, got "
                             f"{n_frames} frames of {shape}")
        self.dtype = _stored_dtype(np.dtype(dtype))
        px = None if pixel_size_nm is None else check_pixel_size(pixel_size_nm, str(path))
        full_shape = (self.n_frames, *self.shape)
        options = _tiff_options(full_shape, self.dtype, px, metadata)
        self._atomic = atomic_path(self.path)
        self._tmp = self._atomic.__enter__()
        try:
            self._map = tifffile.memmap(self._tmp, shape=full_shape, dtype=self.dtype, **options)
            _reserve(self._tmp)
        except BaseException as exc:
            self._map = None
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        # One flag per frame (1 byte each) to catch frames never written.
        self._written = np.zeros(self.n_frames, dtype=bool)
        self._next = 0
        self._unflushed = 0

    def write(self, first_frame: int | None, frames: np.ndarray) -> None:
        """Store ``frames`` (``(n, rows, cols)`` or one ``(rows, cols)`` frame) at
        ``first_frame`` (``None``: right after the previous write)."""
        if self._map is None:
            raise ValueError(f"TiffStackWriter for {self.path} is closed")
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        first = self._next if first_frame is None else int(first_frame)
        if frames.shape[1:] != self.shape:
            raise ValueError(f"frames of shape {frames.shape[1:]} for a {self.shape} stack")
        if not 0 <= first <= first + len(frames) <= self.n_frames:
            raise IndexError(f"frames {first}:{first + len(frames)} out of range for "
                             f"{self.n_frames} frames")
        self._map[first:first + len(frames)] = _cast(frames, self.dtype)
        self._written[first:first + len(frames)] = True
        self._next = first + len(frames)
        self._unflushed += frames.nbytes
        if self._unflushed >= _FLUSH_BYTES:
            self._map.flush()
            self._unflushed = 0

    def close(self) -> Path:
        """Flush and rename the finished file onto :attr:`path`.

        Raises
        ------
        ValueError
            When some frames were never written (the temporary file is removed).
        """
        if self._map is None:
            return self.path
        missing = np.flatnonzero(~self._written)
        self._release()
        if len(missing):
            error = ValueError(f"{self.path}: {len(missing)} of {self.n_frames} frames never "
                               f"written (first: {missing[0]})")
            self._atomic.__exit__(ValueError, error, None)
            raise error
        self._atomic.__exit__(None, None, None)
        return self.path

    def abort(self) -> None:
        """Discard the temporary file without writing :attr:`path`."""
        if self._map is None:
            return
        self._release()
        error = RuntimeError("aborted")
        self._atomic.__exit__(RuntimeError, error, None)

    def _release(self) -> None:
        self._map.flush()
        # Drop the only reference so the mapping (and its file handle) is closed.
        self._map = None

    def __enter__(self) -> "TiffStackWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
