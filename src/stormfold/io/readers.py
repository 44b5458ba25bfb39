"""How frame ranges come off the disk for :class:`stormfold.io.movie.Movie`.

One reader per storage layout, each with ``read(start, stop) -> (n, rows, cols)`` and
``close()``: positional reads of a contiguous block (uncompressed TIFF stacks, Picasso
``.raw``), tifffile page reads (compressed or scattered pages), one file per frame (a
folder of TIFFs), and several movies end to end. A reader names the file and the frames
of any damage it meets, and turns a failed allocation into a :class:`UserError`;
:func:`check_frame_memory` refuses, when a movie is opened, frames too large for this
machine.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile

from stormfold.errors import UserError
from stormfold.io.tiff_layout import FrameLayout, tifffile_messages

if TYPE_CHECKING:
    from stormfold.io.movie import Movie

#: A frame (as float32) may use at most this fraction of the machine's memory: the
#: engines hold a batch of frames and several working copies of each.
MAX_FRAME_MEMORY_FRACTION = 0.25


# --------------------------------------------------------------------------- memory
def _physical_memory_bytes() -> int | None:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # not available on this platform
        return None


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def check_frame_memory(path: str | Path, shape: tuple[int, int]) -> None:
    """Refuse frames whose float32 copy would take more than
    :data:`MAX_FRAME_MEMORY_FRACTION` of this machine's memory (a UserError naming the
    file and the memory needed, instead of a MemoryError in the middle of the work)."""
    check_memory(4.0 * shape[0] * shape[1],
                 f"{path}: frames of {shape[1]} x {shape[0]} pixels need", " each as float32")


def check_memory(need_bytes: float, what: str, detail: str = "") -> None:
    """Refuse, before any work, arrays of ``need_bytes`` that would take more than
    :data:`MAX_FRAME_MEMORY_FRACTION` of this machine's memory; ``what`` (ending in "need")
    and ``detail`` say what they hold in the one-line :class:`UserError`."""
    total = _physical_memory_bytes()
    if total is not None and need_bytes > MAX_FRAME_MEMORY_FRACTION * total:
        raise UserError(f"{what} {_gib(need_bytes)}{detail}, more than "
                        f"{MAX_FRAME_MEMORY_FRACTION:.0%} of this machine's {_gib(total)} of "
                        f"memory")


def _memory_error(path: Path, start: int, stop: int, n_bytes: float) -> UserError:
    return UserError(f"{path}: not enough memory to read frames {start}:{stop} ({_gib(n_bytes)}); "
                     f"read fewer frames at a time (--batch-frames)")


def _allocate(shape: tuple[int, ...], dtype: np.dtype, path: Path, start: int,
              stop: int) -> np.ndarray:
    try:
        return np.empty(shape, dtype)
    except MemoryError:
        raise _memory_error(path, start, stop,
                            float(np.prod(shape, dtype=np.float64)) * dtype.itemsize) from None


# --------------------------------------------------------------------------- readers
class ContiguousReader:
    """Frames from a contiguous block of a file (uncompressed TIFF stack, Picasso .raw).

    Frames are read with positional reads into fresh arrays rather than through a memory
    map: a map keeps every page it touched in the process's resident memory, so streaming
    a long movie would look as if it held the whole file. Frame t is plane
    ``first_plane + t · plane_step`` of the block (a choice of Z or channel skips planes).
    """

    def __init__(self, path: Path, dtype: np.dtype, offset: int, frame_shape: tuple[int, int],
                 first_plane: int = 0, plane_step: int = 1):
        self._fh = open(path, "rb")
        self._dtype = dtype
        self._native = dtype.newbyteorder("=")
        self._offset = int(offset)
        self._frame_shape = tuple(int(v) for v in frame_shape)
        self._frame_bytes = dtype.itemsize * int(np.prod(self._frame_shape))
        self._first, self._step = int(first_plane), int(plane_step)
        self._path = path

    def read(self, start: int, stop: int) -> np.ndarray:
        out = _allocate((stop - start, *self._frame_shape), self._dtype, self._path, start, stop)
        if out.nbytes == 0:
            return out.astype(self._native, copy=False)
        if self._step == 1 or len(out) == 1:
            self._read_into(out, start, self._first + start * self._step)
        else:  # planes of other Z/channels lie between frames
            for i in range(len(out)):
                self._read_into(out[i:i + 1], start + i, self._first + (start + i) * self._step)
        return out.astype(self._native, copy=False)

    def _read_into(self, out: np.ndarray, frame: int, plane: int) -> None:
        position = self._offset + plane * self._frame_bytes
        view = memoryview(out).cast("B")
        if hasattr(os, "preadv"):  # positional: safe when threads share the reader
            got = os.preadv(self._fh.fileno(), [view], position)
        else:
            self._fh.seek(position)
            got = self._fh.readinto(view)
        if got != out.nbytes:
            last = frame + got // self._frame_bytes
            raise UserError(f"{self._path}: file is truncated at frame {last} (0-based): "
                            f"{got} of {out.nbytes} bytes read for frames {frame}:"
                            f"{frame + len(out)}")

    def close(self) -> None:
        self._fh.close()


class TiffPagesReader:
    """Frames read page by page (compressed or non-contiguous TIFF)."""

    def __init__(self, tif: tifffile.TiffFile, layout: FrameLayout, dtype: np.dtype, path: Path):
        self._tif = tif
        self._layout = layout
        self._dtype = dtype
        self._path = path

    def read(self, start: int, stop: int) -> np.ndarray:
        rows, cols = self._layout.shape
        if stop <= start:
            return np.empty((0, rows, cols), self._dtype)
        planes = self._layout.planes(start, stop)
        per_page = self._layout.planes_per_page
        pages = planes // per_page
        try:
            with tifffile_messages() as messages:
                data = self._tif.asarray(key=pages.tolist(), series=self._layout.series)
            if messages:  # tifffile logs some damage and fills the pixels with zeros
                raise ValueError(messages[0])
        except MemoryError:
            n_bytes = len(pages) * per_page * rows * cols * self._dtype.itemsize
            raise _memory_error(self._path, start, stop, n_bytes) from None
        except Exception as exc:  # tifffile/codec errors: a damaged page
            raise UserError(f"{self._path}: cannot read frames {start}:{stop} (0-based): "
                            f"{first_line(exc)}") from None
        data = np.asarray(data, dtype=self._dtype).reshape(len(pages), per_page, rows, cols)
        return data[np.arange(len(pages)), planes % per_page]

    def close(self) -> None:
        self._tif.close()


class FolderReader:
    """Frames from a sorted list of single-image TIFF files, one file per frame."""

    def __init__(self, files: list[Path], frame_shape: tuple[int, int], dtype: np.dtype):
        self._files = files
        self._frame_shape = frame_shape
        self._dtype = dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        out = _allocate((max(stop - start, 0), *self._frame_shape), self._dtype,
                        self._files[0].parent, start, stop)
        for i, file in enumerate(self._files[start:stop]):
            out[i] = self._read_one(file, start + i)
        return out

    def _read_one(self, file: Path, frame: int) -> np.ndarray:
        try:
            with tifffile_messages():
                image = tifffile.imread(file)
        except Exception as exc:  # any tifffile/OS failure is a bad input file
            raise UserError(f"{file}: frame {frame} (0-based) is not a readable TIFF file "
                            f"({first_line(exc)})") from None
        image = np.squeeze(image)
        if image.shape != self._frame_shape:
            raise UserError(f"{file}: frame {frame} (0-based) has shape {image.shape} in a "
                            f"folder of {self._frame_shape[0]}x{self._frame_shape[1]} frames")
        if image.dtype != self._dtype:
            raise UserError(f"{file}: frame {frame} (0-based) has data type {image.dtype}, the "
                            f"first frame {self._dtype}")
        return image

    def close(self) -> None:
        pass


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__



class ConcatReader:
    """Frames of several movies of one acquisition, end to end (e.g. split OME-TIFF files)."""

    def __init__(self, movies: list[Movie]):
        self.movies = movies
        self.offsets = np.cumsum([0] + [m.n_frames for m in movies])

    def read(self, start: int, stop: int, checked: bool = True) -> np.ndarray:
        """Frames [start, stop) from the parts: ``Movie.read`` (NaN/Inf checked), or with
        ``checked=False`` ``Movie.read_context`` (left as they are)."""
        parts = []
        for movie, lo, hi in zip(self.movies, self.offsets[:-1], self.offsets[1:]):
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                a, b = int(a - lo), int(b - lo)
                parts.append(movie.read(a, b) if checked else
                             movie.read_context(a, b, fill=None))
        if not parts:
            return np.empty((0, *self.movies[0].shape), self.movies[0].dtype)
        return np.concatenate(parts)

    def close(self) -> None:
        for movie in self.movies:
            movie.close()
