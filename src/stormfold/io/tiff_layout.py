"""Where the frames of a TIFF file are: axes, plane selection and damage checks.

A TIFF series is a stack of 2-D *planes* (pages, or the sample planes of a page stored
with ``PlanarConfiguration = 2``) indexed by one or more outer axes (time ``T``, focal
plane ``Z``, channel ``C``; tifffile names unknown axes ``Q``/``I``). A movie is one
plane per frame along ``T``, so the plane of frame t is ``first_plane + t · plane_step``
for fixed choices of the other axes (:class:`FrameLayout`).

Rules (:func:`frame_layout`):

* one outer axis, whatever its name: it is time (ImageJ often calls time "slices");
* more outer axes: the caller names them (``axes="TZYX"``) unless the file does with
  T/Z/C letters (ImageJ hyperstacks, OME), and chooses one plane of every non-time axis
  (``z=``, ``channel=``); otherwise the file is refused with its shape;
* colour (RGB, palette, YCbCr ...) is refused as colour; planar sample planes can be named
  like any axis when they are not colours (tifffile stores arrays of shape
  ``(..., 3, Y, X)`` as planar RGB unless told otherwise);
* the number of planes the metadata declares (ImageJ ``images``, tifffile's shape, OME
  ``SizeT·SizeZ·SizeC``) and the file size must cover what the page structure holds;
  a short or damaged file is refused with both numbers.
"""
from __future__ import annotations

import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import tifffile

from stormfold.errors import UserError
from stormfold.io.metadata import ome_pixels

#: Axis letters a caller may use in ``axes`` (time, focal plane, channel, rows, columns).
AXIS_LETTERS = "TZCYX"
# TIFF Photometric values of grayscale data (min-is-white, min-is-black); others are colour.
_GRAY_PHOTOMETRIC = (0, 1)


@dataclass
class FrameLayout:
    """How movie frames map onto the planes of a TIFF series.

    Attributes
    ----------
    n_frames : int
        Number of frames (planes along time).
    shape : (rows, cols)
        Frame size in pixels.
    dtype : numpy.dtype
        Pixel type as stored (file byte order).
    first_plane, plane_step : int
        Plane index of frame t is ``first_plane + t * plane_step``.
    planes_per_page : int
        Planes stored in one page (> 1 for planar sample planes).
    offset : int or None
        Byte offset of plane 0 when all planes are stored uncompressed and contiguous.
    series : int or None
        tifffile series index of the frames (None: every page is its own series).
    axes : str
        The outer axes and ``YX``, as used (e.g. ``"TZYX"``).
    selection : dict
        The planes chosen on non-time axes (``{"z": 3}``).
    """

    n_frames: int
    shape: tuple[int, int]
    dtype: np.dtype
    first_plane: int = 0
    plane_step: int = 1
    planes_per_page: int = 1
    offset: Optional[int] = None
    series: Optional[int] = 0
    axes: str = "TYX"
    selection: dict = field(default_factory=dict)

    @property
    def plane_bytes(self) -> int:
        return int(self.dtype.itemsize * self.shape[0] * self.shape[1])

    def planes(self, start: int, stop: int) -> np.ndarray:
        """Plane indices of frames ``start`` … ``stop - 1``."""
        return self.first_plane + np.arange(start, stop, dtype=np.int64) * self.plane_step


# --------------------------------------------------------------------------- tifffile log
class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def tifffile_messages() -> Iterator[list[str]]:
    """Collect what tifffile logs (damaged page chains, invalid metadata) instead of
    letting it reach the terminal; the caller turns it into one clear error."""
    logger = tifffile.logger()
    handler = _Collect()
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _page_chain_broken(messages: list[str]) -> Optional[str]:
    for message in messages:
        if "invalid page offset" in message or "invalid offset to page" in message \
                or "corrupted file" in message or "failed to reshape" in message:
            return message
    return None


# --------------------------------------------------------------------------- axes
def parse_axes(axes: str, ndim: int, path: Path) -> str:
    """Check a caller's axes string (letters of :data:`AXIS_LETTERS`, ending in YX)."""
    text = str(axes).strip().upper()
    if not text or any(a not in AXIS_LETTERS for a in text) or len(set(text)) != len(text) \
            or not text.endswith("YX"):
        raise UserError(f"axes {axes!r}: use each of the letters T, Z, C at most once, "
                        f"ending in YX (e.g. TZYX)")
    if len(text) != ndim:
        raise UserError(f"{path}: axes {text} name {len(text)} dimensions, the image has "
                        f"{ndim}")
    return text


def _colour_name(page) -> str:
    try:
        return tifffile.PHOTOMETRIC(int(page.photometric)).name
    except ValueError:
        return f"photometric {int(page.photometric)}"


def frame_layout(tif: tifffile.TiffFile, path: Path, axes: Optional[str] = None,
                 z: Optional[int] = None, channel: Optional[int] = None,
                 messages: Optional[list[str]] = None) -> FrameLayout:
    """The frames of an open TIFF (see the module docstring).

    Parameters
    ----------
    tif : tifffile.TiffFile
        The open file (headers only are read).
    path : Path
        Its path, for messages and the file size.
    axes : str, optional
        The image's dimensions in order (``"TZYX"``), overriding the file's axis names.
    z, channel : int, optional
        0-based plane chosen on the Z and C axes.
    messages : list of str, optional
        What tifffile logged while the headers were read (:func:`tifffile_messages`).

    Raises
    ------
    UserError
        Colour images, undeclared or unselected extra dimensions, bad selections, empty,
        truncated or damaged files.
    """
    all_series = tif.series
    if not all_series:
        raise UserError(f"{path}: TIFF file holds no images")
    page = tif.pages.first
    series = all_series[0]
    dtype = np.dtype(series.dtype)
    if _pages_are_frames(all_series):
        # Some writers put each page in its own series; the pages are still the frames.
        if z is not None or channel is not None or (axes is not None and len(axes) != 3):
            raise UserError(f"{path}: a plain stack of {len(tif.pages)} pages has no Z or "
                            f"channel axis to choose from")
        layout = FrameLayout(len(tif.pages), tuple(all_series[0].shape), dtype, series=None)
        _check_damage(tif, path, layout, messages or [])
        return layout
    _check_other_series(all_series, path)
    file_axes, dims = series.axes, tuple(int(d) for d in series.shape)
    if math.prod(dims) == 0 or len(dims) < 2:
        raise UserError(f"{path}: empty stack (0 frames)")
    gray = int(page.photometric) in _GRAY_PHOTOMETRIC
    if file_axes.endswith("S") and dims[-1] > 1:
        what = "colour" if not gray else "multi-sample"
        raise UserError(f"{path}: {what} image ({_colour_name(page)}, {dims[-1]} samples per "
                        f"pixel, shape {dims}); stormfold reads single-channel grayscale "
                        f"frames: save one channel as grayscale")
    if file_axes.endswith("S"):
        file_axes, dims = file_axes[:-1], dims[:-1]
    if not file_axes.endswith("YX") and min(dims[-2:]) == 1:
        # tifffile names the axes of a stack of 1-pixel-wide frames oddly (10x1x1 → YQX):
        # the frames' size is the problem to report, not the axis names.
        raise UserError(f"{path}: frames of {dims[-2]} x {dims[-1]} pixels (shape {dims}): too "
                        f"small to be camera frames")
    if not file_axes.endswith("YX"):
        raise UserError(f"{path}: image axes {file_axes} (shape {dims}) do not end in rows "
                        f"and columns (YX)")
    outer_axes, outer = file_axes[:-2], dims[:-2]
    shape = (dims[-2], dims[-1])
    ppp = outer[-1] if outer_axes.endswith("S") else 1
    if axes is not None:
        letters = parse_axes(axes, len(dims), path)[:-2]
    elif "S" in outer_axes and not gray:
        hint = _axes_hint(len(outer))
        raise UserError(f"{path}: colour image ({_colour_name(page)}, shape {dims}); stormfold "
                        f"reads grayscale frames. If these {outer[-1]} planes are not colours, "
                        f"name the axes, e.g. axes={hint!r} with z= or channel=")
    elif len(outer) <= 1:
        letters = "T" * len(outer)
        if outer_axes in ("C", "Z") and outer[0] > 1:
            # one outer axis is read as time whatever its name, but say so when the file
            # names it otherwise: a channel or z stack is rarely a blinking movie
            name = "channels" if outer_axes == "C" else "z planes"
            warnings.warn(f"{path}: its metadata calls the {outer[0]} planes {name}; they are "
                          f"read as {outer[0]} frames in time (give axes= if that is wrong)")
    elif all(a in "TZC" for a in outer_axes) and len(set(outer_axes)) == len(outer_axes):
        letters = outer_axes
    else:
        raise UserError(f"{path}: {len(dims)}-D image of shape {dims} (axes {file_axes}): "
                        f"say which axis is time and choose one plane of the others, e.g. "
                        f"axes={_axes_hint(len(outer))!r} with z=0")
    layout = _select(path, letters, outer, shape, dtype, z, channel)
    layout.planes_per_page = ppp
    n_planes = math.prod(outer)
    if series.dataoffset is not None:
        layout.offset = int(series.dataoffset)
    elif any(p is None for p in series.pages):  # tifffile would return zeros for these
        present = sum(p is not None for p in series.pages) * ppp
        where = "OME metadata" if tif.is_ome else "metadata"
        raise UserError(f"{path}: file is truncated or damaged: the {where} declares "
                        f"{n_planes} frames, the file holds {present}")
    elif len(series.pages) * ppp != n_planes:
        raise _layout_error(path, series, n_planes, ppp, file_axes, messages or [])
    _check_damage(tif, path, layout, messages or [], n_planes)
    return layout


def _layout_error(path, series, n_planes, ppp, file_axes, messages) -> UserError:
    broken = _page_chain_broken(messages)
    if broken:
        return UserError(f"{path}: file is truncated or damaged: {len(series.pages) * ppp} of "
                         f"{n_planes} planes found (tifffile: {broken})")
    return UserError(f"{path}: unsupported TIFF layout ({len(series.pages)} pages for "
                     f"{n_planes} planes of axes {file_axes})")


def _axes_hint(n_outer: int) -> str:
    return ("T" + "ZC"[:max(n_outer - 1, 0)] + "YX") if n_outer <= 3 else "TZCYX"


def _select(path: Path, letters: str, outer: tuple[int, ...], shape: tuple[int, int],
            dtype: np.dtype, z: Optional[int], channel: Optional[int]) -> FrameLayout:
    """Frames along T for the chosen Z and C planes."""
    strides = [math.prod(outer[k + 1:]) for k in range(len(outer))]
    wanted = {"Z": ("z", z), "C": ("channel", channel)}
    first, step, n_frames, selection = 0, 0, 1, {}
    for letter, size, stride in zip(letters, outer, strides):
        if letter == "T":
            step, n_frames = stride, size
            continue
        name, value = wanted[letter]
        if value is None:
            raise UserError(f"{path}: {size} planes along {letter} (shape {outer + shape}, axes "
                            f"{letters}YX): choose one with {name}=0…{size - 1}")
        if not 0 <= int(value) < size:
            raise UserError(f"{path}: {name}={value} is out of range: the {letter} axis has "
                            f"{size} planes (0…{size - 1})")
        first += int(value) * stride
        selection[name] = int(value)
    for letter, (name, value) in wanted.items():
        if value is not None and letter not in letters:
            raise UserError(f"{path}: {name}={value} given, but the image has no {letter} axis "
                            f"(axes {letters}YX, shape {outer + shape})")
    return FrameLayout(n_frames, shape, dtype, first, step, axes=letters + "YX",
                       selection=selection)


def _check_other_series(all_series: list, path: Path) -> None:
    """A file of several image series (OME-TIFF positions, a stack with a thumbnail or
    mask series): refuse series of different shapes, which hold different images; of the
    same shape, read the first and say so."""
    if len(all_series) < 2:
        return
    names = [f"{'x'.join(map(str, s.shape))} {s.axes}" for s in all_series]
    described = ", ".join(names[:4])
    more = ", ..." if len(all_series) > 4 else ""
    shapes = {(tuple(s.shape), s.axes, np.dtype(s.dtype)) for s in all_series}
    if len(shapes) > 1:
        raise UserError(f"{path}: holds {len(all_series)} image series of different shapes "
                        f"({described}{more}); stormfold reads one movie per file: save the "
                        f"series to read as its own TIFF")
    warnings.warn(f"{path}: holds {len(all_series)} image series of shape {names[0]}; "
                  f"reading the first one (series 0) only", UserWarning, stacklevel=2)


def _pages_are_frames(all_series: list) -> bool:
    if len(all_series) < 2:
        return False
    first = all_series[0]
    return all(len(s.shape) == 2 and tuple(s.shape) == tuple(first.shape)
               and np.dtype(s.dtype) == np.dtype(first.dtype) and len(s.pages) == 1
               for s in all_series)


# --------------------------------------------------------------------------- damage
def declared_planes(tif: tifffile.TiffFile, shape: tuple[int, int]) -> Optional[tuple[int, str]]:
    """(planes, where) the file's metadata declares, or None when it declares nothing."""
    if tif.is_imagej:
        images = (tif.imagej_metadata or {}).get("images")
        if isinstance(images, (int, np.integer)) and images > 0:
            return int(images), "ImageJ header"
    if tif.is_ome:
        planes = _ome_planes(tif.ome_metadata)
        if planes:
            return planes, "OME metadata"
    if tif.is_shaped and tif.shaped_metadata:
        declared = tif.shaped_metadata[0].get("shape")
        if isinstance(declared, list) and len(declared) >= 2 and all(
                isinstance(d, int) for d in declared):
            return math.prod(declared) // max(shape[0] * shape[1], 1), "tifffile shape"
    return None


def _ome_planes(xml: Optional[str]) -> Optional[int]:
    pixels = ome_pixels(xml)
    if pixels is None:
        return None
    try:
        return math.prod(int(pixels.get(k, 1)) for k in ("SizeT", "SizeZ", "SizeC"))
    except ValueError:
        return None


def _check_damage(tif: tifffile.TiffFile, path: Path, layout: FrameLayout,
                  messages: list[str], n_planes: Optional[int] = None) -> None:
    """Refuse files shorter than their metadata, page structure or data say.

    A broken chain of pages is accepted only when the metadata declares exactly the
    planes found and all their data are present (e.g. a file cut after its pixel data).
    """
    size = path.stat().st_size
    found = n_planes if n_planes is not None else layout.n_frames
    declared = declared_planes(tif, layout.shape)
    if declared is not None and declared[0] > found:
        count, where = declared
        present = _planes_present(tif, layout, size, count)
        raise UserError(f"{path}: file is truncated or damaged: the {where} declares {count} "
                        f"frames, the file ({size} bytes) holds {present}")
    if layout.offset is not None:
        needed = layout.offset + found * layout.plane_bytes
        if needed > size:
            present = max(size - layout.offset, 0) // layout.plane_bytes
            raise UserError(f"{path}: file is truncated: {found} frames need {needed} bytes, "
                            f"the file has {size} (complete frames: {present})")
    else:
        last = tif.pages[-1] if layout.series is None else tif.series[layout.series].pages[-1]
        end = _data_end(last)
        if end > size:
            present = _pages_present(tif, size) * layout.planes_per_page
            raise UserError(f"{path}: file is truncated: {present} complete frames of the "
                            f"{found} its pages list (the data end at byte {end}, the file "
                            f"has {size})")
    broken = _page_chain_broken(messages)
    if broken and declared is None:
        raise UserError(f"{path}: file is truncated or damaged: its chain of pages breaks "
                        f"after {found} frame{'s' if found != 1 else ''} and no metadata says "
                        f"how many there should be (tifffile: {broken})")


def _data_end(page) -> int:
    if page is None:
        return 0
    offsets, counts = page.dataoffsets, page.databytecounts
    return max((int(o) + int(c) for o, c in zip(offsets, counts)), default=0)


def _pages_present(tif, size: int) -> int:
    """Pages of the file whose data lie wholly inside it (a damaged series may list fewer)."""
    return sum(1 for p in tif.pages if p is not None and _data_end(p) <= size)


def _planes_present(tif, layout: FrameLayout, size: int, declared: int) -> int:
    """Complete planes in a file cut short: by bytes for contiguous data, else by pages."""
    page = tif.pages.first
    if page.is_contiguous and page.compression == 1:
        offset = int(page.dataoffsets[0])
        return int(min(max(size - offset, 0) // layout.plane_bytes, declared))
    return _pages_present(tif, size) * layout.planes_per_page
