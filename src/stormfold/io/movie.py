"""Movie readers that never load the whole movie.

:func:`open_movie` accepts

* a TIFF, BigTIFF or OME-TIFF stack (one file, many pages),
* a folder of single-frame TIFFs (sorted by the numbers in the file names, as the
  ISBI challenge ships ``00001.tif`` ...),
* a Picasso ``.raw`` movie with its ``.yaml`` sidecar,

and returns a :class:`Movie` that reads frame ranges on demand. Memory does not depend
on the movie length: uncompressed contiguous data (ImageJ stacks, tifffile stacks,
Picasso ``.raw``) are read frame range by frame range with positional reads, and anything
else (compressed or scattered pages) page by page. Opening a movie reads headers only, never pixel data.

Pixel size (nm) comes from, in order: the ``pixel_size_nm`` argument; OME
``PhysicalSizeX``; the ImageJ ``unit`` with the resolution tags; the TIFF
``ResolutionUnit`` (inch or centimetre) with the resolution tags; Picasso's
``Pixelsize`` / ``Camera.Pixelsize``. Otherwise it is unknown (``None``).
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tifffile

from stormfold.errors import UserError
from stormfold.io.metadata import (check_pixel_size, load_yaml_documents,
                                   pixel_size_from_documents, tiff_pixel_size)
from stormfold.physics.geometry import FrameGeometry

#: File suffixes recognised as TIFF when listing a folder of frames.
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")

# --------------------------------------------------------------------------- readers
class _ContiguousReader:
    """Frames from a contiguous block of a file (uncompressed TIFF stack, Picasso .raw).

    Frames are read with positional reads into fresh arrays rather than through a memory
    map: a map keeps every page it touched in the process's resident memory, so streaming
    a long movie would look as if it held the whole file.
    """

    def __init__(self, path: Path, dtype: np.dtype, offset: int, shape: tuple[int, int, int]):
        self._fh = open(path, "rb")
        self._dtype = dtype
        self._native = dtype.newbyteorder("=")
        self._offset = int(offset)
        self._frame_shape = tuple(int(v) for v in shape[1:])
        self._frame_bytes = dtype.itemsize * int(np.prod(self._frame_shape))
        self._path = path

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self._frame_shape), dtype=self._dtype)
        if out.nbytes:
            position = self._offset + start * self._frame_bytes
            if hasattr(os, "preadv"):  # positional: safe when threads share the reader
                got = os.preadv(self._fh.fileno(), [memoryview(out).cast("B")], position)
            else:
                self._fh.seek(position)
                got = self._fh.readinto(memoryview(out).cast("B"))
            if got != out.nbytes:
                raise UserError(f"{self._path}: file is truncated (frames {start}:{stop} "
                                f"not all present)")
        return out.astype(self._native, copy=False)

    def close(self) -> None:
        self._fh.close()


class _TiffPagesReader:
    """Frames read page by page (compressed or non-contiguous TIFF)."""

    def __init__(self, tif: tifffile.TiffFile, series: int | None, frame_shape: tuple[int, int],
                 dtype: np.dtype):
        self._tif = tif
        self._series = series
        self._frame_shape = frame_shape
        self._dtype = dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.empty((0, *self._frame_shape), self._dtype)
        data = self._tif.asarray(key=range(start, stop), series=self._series)
        return np.asarray(data, dtype=self._dtype).reshape(stop - start, *self._frame_shape)

    def close(self) -> None:
        self._tif.close()


class _FolderReader:
    """Frames from a sorted list of single-image TIFF files, one file per frame."""

    def __init__(self, files: list[Path], frame_shape: tuple[int, int], dtype: np.dtype):
        self._files = files
        self._frame_shape = frame_shape
        self._dtype = dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((max(stop - start, 0), *self._frame_shape), self._dtype)
        for i, file in enumerate(self._files[start:stop]):
            out[i] = self._read_one(file)
        return out

    def _read_one(self, file: Path) -> np.ndarray:
        try:
            image = tifffile.imread(file)
        except Exception as exc:  # any tifffile/OS failure is a bad input file
            raise UserError(f"{file}: not a readable TIFF file ({_first_line(exc)})") from None
        image = np.squeeze(image)
        if image.shape != self._frame_shape:
            raise UserError(f"{file}: frame of shape {image.shape} in a folder of "
                            f"{self._frame_shape[0]}x{self._frame_shape[1]} frames")
        if image.dtype != self._dtype:
            raise UserError(f"{file}: data type {image.dtype} differs from the first frame "
                            f"({self._dtype})")
        return image

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- Movie
class Movie:
    """A movie of camera frames read on demand.

    Attributes
    ----------
    path : Path
        The file or folder the movie came from.
    n_frames : int
        Number of frames.
    shape : tuple of int
        Frame size ``(rows, cols)`` in camera pixels.
    dtype : numpy.dtype
        Pixel data type (native byte order), usually uint16 ADU.
    pixel_size_nm : float or None
        Camera pixel size in the sample plane (nm); ``None`` when unknown.
    metadata : dict
        Camera and acquisition information found in the file (``format``, ImageJ
        entries, Picasso camera keys, stormfold's own ``info`` ...).
    """

    def __init__(self, path: Path, reader: Any, n_frames: int, shape: tuple[int, int],
                 dtype: np.dtype, pixel_size_nm: float | None, metadata: dict,
                 pixel_size_note: str | None = None):
        self.path = Path(path)
        self._reader = reader
        self.n_frames = int(n_frames)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.pixel_size_nm = pixel_size_nm
        self.metadata = metadata
        self._pixel_size_note = pixel_size_note
        self._given_pixel_size: float | None = None

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        px = "unknown" if self.pixel_size_nm is None else f"{self.pixel_size_nm:g} nm"
        return (f"Movie({str(self.path)!r}, n_frames={self.n_frames}, shape={self.shape}, "
                f"dtype={self.dtype}, pixel_size={px})")

    def __reduce__(self):
        # Re-open by path in another process (e.g. a dask worker) instead of pickling maps.
        parts = getattr(self, "_parts", None)
        if parts:
            return (open_movies, (parts, self._given_pixel_size))
        return (open_movie, (self.path, self._given_pixel_size))

    def read(self, start: int, stop: int) -> np.ndarray:
        """Read frames ``start`` (inclusive) to ``stop`` (exclusive).

        Returns
        -------
        numpy.ndarray
            Array ``(stop - start, rows, cols)`` of :attr:`dtype`, a copy owned by the caller.
        """
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.n_frames:
            raise IndexError(f"frames {start}:{stop} out of range for a movie of "
                             f"{self.n_frames} frames")
        if self._reader is None:
            raise ValueError(f"movie {self.path} is closed")
        return self._reader.read(start, stop)

    def __getitem__(self, key: int | slice) -> np.ndarray:
        """One frame ``(rows, cols)`` for an int, a stack ``(n, rows, cols)`` for a slice."""
        if isinstance(key, slice):
            start, stop, step = key.indices(self.n_frames)
            if step == 1:
                return self.read(start, max(start, stop))
            indices = range(start, stop, step)
            out = np.empty((len(indices), *self.shape), self.dtype)
            for i, index in enumerate(indices):
                out[i] = self.read(index, index + 1)[0]
            return out
        index = int(key)
        if index < 0:
            index += self.n_frames
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {key} out of range for a movie of {self.n_frames} frames")
        return self.read(index, index + 1)[0]

    def iter_batches(self, batch_frames: int, start: int = 0,
                     stop: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_frame_index, frames)`` for consecutive batches of frames.

        Parameters
        ----------
        batch_frames : int
            Frames per batch (the last batch may be shorter); bounds the memory used.
        start, stop : int
            Frame range (``stop`` defaults to the end of the movie).
        """
        if int(batch_frames) <= 0:
            raise ValueError(f"batch_frames must be positive, got {batch_frames}")
        stop = self.n_frames if stop is None else min(int(stop), self.n_frames)
        for first in range(int(start), stop, int(batch_frames)):
            yield first, self.read(first, min(first + int(batch_frames), stop))

    def require_pixel_size(self) -> float:
        """The pixel size in nm, or :class:`UserError` asking for ``--pixel-size``."""
        if self.pixel_size_nm is None:
            why = f" ({self._pixel_size_note})" if self._pixel_size_note else ""
            raise UserError(f"pixel size unknown for {self.path}{why}: pass --pixel-size NM")
        return float(self.pixel_size_nm)

    @property
    def geometry(self) -> FrameGeometry:
        """Frame size and camera pixel size (:class:`UserError` asking for ``--pixel-size``
        when the pixel size is unknown)."""
        return FrameGeometry(self.shape[0], self.shape[1], self.require_pixel_size())

    def close(self) -> None:
        """Release the file handle (reading afterwards is an error)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __enter__(self) -> "Movie":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- open_movie
def open_movie(path: str | Path, pixel_size_nm: float | None = None) -> Movie:
    """Open a movie without reading its pixel data.

    Parameters
    ----------
    path : str or Path
        A TIFF/BigTIFF/OME-TIFF stack, a folder of single-frame TIFFs, or a Picasso
        ``.raw`` file (with ``<stem>.yaml`` next to it).
    pixel_size_nm : float, optional
        Camera pixel size in nm; overrides whatever the file says.

    Returns
    -------
    Movie

    Raises
    ------
    UserError
        Missing path, unreadable or unsupported file, RGB image, empty stack, frames of
        different shapes, missing or inconsistent Picasso sidecar, bad pixel size.
    """
    path = Path(path)
    given = None if pixel_size_nm is None else check_pixel_size(pixel_size_nm, str(path))
    if not path.exists():
        raise UserError(f"movie not found: {path}")
    if path.is_dir():
        movie = _open_folder(path)
    elif path.suffix.lower() == ".raw":
        movie = _open_picasso_raw(path)
    else:
        movie = _open_tiff_file(path)
    if given is not None:
        movie.pixel_size_nm = given
        movie._given_pixel_size = given
    return movie


class _ConcatReader:
    """Frames of several movies of one acquisition, end to end (e.g. split OME-TIFF files)."""

    def __init__(self, movies: list[Movie]):
        self.movies = movies
        self.offsets = np.cumsum([0] + [m.n_frames for m in movies])

    def read(self, start: int, stop: int) -> np.ndarray:
        parts = []
        for movie, lo, hi in zip(self.movies, self.offsets[:-1], self.offsets[1:]):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                parts.append(movie.read(int(a - lo), int(b - lo)))
        if not parts:
            return np.empty((0, *self.movies[0].shape), self.movies[0].dtype)
        return np.concatenate(parts)

    def close(self) -> None:
        for movie in self.movies:
            movie.close()


def open_movies(paths: list[str | Path], pixel_size_nm: float | None = None) -> Movie:
    """Open several movies of one acquisition as one movie (frames end to end).

    All parts must have the same frame shape and data type; the pixel size and metadata
    are the first part's (parts with a different known pixel size are refused).
    """
    if len(paths) == 1:
        return open_movie(paths[0], pixel_size_nm)
    if not paths:
        raise UserError("no movie given")
    movies: list[Movie] = []
    try:
        for path in paths:
            movies.append(open_movie(path, pixel_size_nm))
        first = movies[0]
        for movie in movies[1:]:
            if movie.shape != first.shape or movie.dtype != first.dtype:
                raise UserError(f"{movie.path}: frames {movie.shape} {movie.dtype} differ from "
                                f"{first.path}: {first.shape} {first.dtype}")
            if None not in (movie.pixel_size_nm, first.pixel_size_nm) and \
                    not math.isclose(movie.pixel_size_nm, first.pixel_size_nm, rel_tol=1e-6):
                raise UserError(f"{movie.path}: pixel size {movie.pixel_size_nm:g} nm differs "
                                f"from {first.path}: {first.pixel_size_nm:g} nm")
    except BaseException:
        for movie in movies:
            movie.close()
        raise
    combined = Movie(first.path, _ConcatReader(movies), sum(m.n_frames for m in movies),
                     first.shape, first.dtype, first.pixel_size_nm,
                     {**first.metadata, "parts": [str(m.path) for m in movies]})
    combined._given_pixel_size = first._given_pixel_size
    combined._parts = [m.path for m in movies]
    return combined


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_tiff(path: Path) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for non-TIFF input
        raise UserError(f"{path}: not a TIFF file ({_first_line(exc)}); movies must be TIFF "
                        f"stacks, folders of TIFFs or Picasso .raw files") from None


def _open_tiff_file(path: Path) -> Movie:
    tif = _open_tiff(path)
    try:
        layout = _tiff_layout(tif, path)
        pixel, note = tiff_pixel_size(tif)
        metadata = _tiff_metadata(tif)
    except Exception:
        tif.close()
        raise
    n_frames, shape, dtype, series, offset = layout
    if offset is not None:
        reader: Any = _ContiguousReader(path, dtype.newbyteorder(tif.byteorder), offset,
                                    (n_frames, *shape))
        tif.close()
    else:
        reader = _TiffPagesReader(tif, series, shape, dtype.newbyteorder("="))
    return Movie(path, reader, n_frames, shape, dtype, pixel, metadata, note)


def _tiff_layout(tif: tifffile.TiffFile, path: Path):
    """(n_frames, (rows, cols), dtype, series index or None, data offset or None)."""
    all_series = tif.series
    if not all_series:
        raise UserError(f"{path}: TIFF file holds no images")
    series = all_series[0]
    axes, dims = series.axes, tuple(series.shape)
    if "S" in axes and dims[axes.index("S")] > 1:
        raise UserError(f"{path}: RGB or multi-sample image (axes {axes}, shape {dims}); "
                        f"stormfold needs single-channel grayscale frames")
    dims = tuple(d for a, d in zip(axes, dims) if a != "S")
    if len(dims) < 2 or math.prod(dims) == 0:
        raise UserError(f"{path}: empty stack (0 frames)")
    shape = (int(dims[-2]), int(dims[-1]))
    n_frames = int(math.prod(dims[:-2]))
    dtype = np.dtype(series.dtype)
    if _pages_are_frames(all_series, shape, dtype):
        # Some writers put each page in its own series; the pages are still the frames.
        return len(tif.pages), shape, dtype, None, None
    offset = series.dataoffset
    if offset is not None:
        needed = offset + n_frames * shape[0] * shape[1] * dtype.itemsize
        if needed > path.stat().st_size:
            raise UserError(f"{path}: file is truncated ({path.stat().st_size} bytes, "
                            f"{n_frames} frames need {needed})")
        return n_frames, shape, dtype, 0, int(offset)
    if len(series.pages) != n_frames:
        raise UserError(f"{path}: unsupported TIFF layout ({len(series.pages)} pages for "
                        f"{n_frames} frames of axes {axes})")
    return n_frames, shape, dtype, 0, None


def _pages_are_frames(all_series: list, shape: tuple[int, int], dtype: np.dtype) -> bool:
    if len(all_series) < 2:
        return False
    return all(tuple(s.shape) == shape and np.dtype(s.dtype) == dtype and len(s.pages) == 1
               for s in all_series)


def _tiff_metadata(tif: tifffile.TiffFile) -> dict:
    """Small, JSON-friendly summary of what the TIFF says about itself."""
    page = tif.pages[0]
    kind = "ome-tiff" if tif.is_ome else "imagej-tiff" if tif.is_imagej else "tiff"
    meta: dict[str, Any] = {"format": kind, "bigtiff": bool(tif.is_bigtiff),
                            "resolution": [float(v) for v in page.resolution],
                            "resolution_unit": int(page.resolutionunit)}
    imagej = dict(tif.imagej_metadata or {})
    info = imagej.pop("Info", None)
    scalars = {k: v for k, v in imagej.items() if _small_scalar(v)}
    if scalars:
        meta["imagej"] = scalars
    if tif.is_shaped and tif.shaped_metadata and "info" in tif.shaped_metadata[0]:
        info = tif.shaped_metadata[0]["info"]
    if info is not None:
        meta["info"] = _decode_info(info)
    return meta


def _small_scalar(value: Any) -> bool:
    # Camera keys are short; long strings (e.g. Picasso's per-structure kinetics lists)
    # would bloat every copy of the metadata.
    if isinstance(value, str):
        return len(value) <= 256
    return isinstance(value, (int, float, bool))


def _decode_info(info: Any) -> Any:
    # stormfold stores its metadata as JSON text (see stormfold.io.tiff.write_tiff).
    if isinstance(info, str):
        try:
            return json.loads(info)
        except ValueError:
            return info
    return info


# --------------------------------------------------------------------------- folders
def _natural_key(path: Path) -> tuple:
    """Sort key comparing digit runs as numbers: 2.tif < 10.tif, 00001.tif < 00002.tif."""
    parts = re.split(r"(\d+)", path.name)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p)


def _open_folder(path: Path) -> Movie:
    files = sorted((f for f in path.iterdir()
                    if f.is_file() and f.suffix.lower() in TIFF_SUFFIXES
                    and not f.name.startswith(".")), key=_natural_key)
    if not files:
        raise UserError(f"{path}: folder holds no TIFF files (.tif/.tiff)")
    shape, dtype, pixel, note, metadata = _folder_frame_info(files[0])
    # Checking every header at open time would cost seconds for 10^5 files; the last
    # one is checked here and every frame again when it is read.
    if len(files) > 1:
        last = _folder_frame_info(files[-1])
        if last[0] != shape:
            raise UserError(f"{files[-1]}: frame of shape {last[0]} in a folder of "
                            f"{shape[0]}x{shape[1]} frames (first file {files[0].name})")
    metadata = {**metadata, "format": "tiff-folder", "n_files": len(files),
                "first_file": files[0].name}
    return Movie(path, _FolderReader(files, shape, dtype), len(files), shape, dtype, pixel,
                 metadata, note)


def _folder_frame_info(file: Path):
    tif = _open_tiff(file)
    with tif:
        n_frames, shape, dtype, _, _ = _tiff_layout(tif, file)
        if n_frames != 1:
            raise UserError(f"{file}: holds {n_frames} frames; a folder movie needs one "
                            f"frame per file")
        pixel, note = tiff_pixel_size(tif)
        return shape, dtype.newbyteorder("="), pixel, note, _tiff_metadata(tif)


# --------------------------------------------------------------------------- Picasso raw
def _open_picasso_raw(path: Path) -> Movie:
    sidecar = path.with_suffix(".yaml")
    if not sidecar.is_file():
        raise UserError(f"{path}: Picasso .raw movie without its {sidecar.name} sidecar")
    documents = load_yaml_documents(sidecar)
    first = documents[0] if documents else {}
    try:
        width, height = int(first["Width"]), int(first["Height"])
        n_frames = int(first["Frames"])
        dtype = np.dtype(str(first["Data Type"])).newbyteorder(str(first.get("Byte Order", "<")))
    except KeyError as exc:
        raise UserError(f"{sidecar}: missing {exc.args[0]!r} in the first YAML document "
                        f"(needs Width, Height, Frames, Data Type)") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"{sidecar}: bad movie description ({_first_line(exc)})") from None
    if min(width, height, n_frames) <= 0:
        raise UserError(f"{path}: empty movie ({n_frames} frames of {height}x{width} px)")
    expected = n_frames * height * width * dtype.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise UserError(f"{path}: size {actual} bytes does not match {sidecar.name} "
                        f"({n_frames} frames x {height} x {width} x {dtype.itemsize} bytes "
                        f"= {expected})")
    pixel = pixel_size_from_documents(documents, sidecar)
    note = None if pixel is not None else f"no Pixelsize in {sidecar.name}"
    metadata = {"format": "picasso-raw",
                "picasso": {k: v for k, v in first.items() if _small_scalar(v)}}
    reader = _ContiguousReader(path, dtype, 0, (n_frames, height, width))
    return Movie(path, reader, n_frames, (height, width), dtype, pixel, metadata, note)
