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

Pixel size (nm) comes from, in order: the ``pixel_size_nm`` argument (10–2000 nm); OME
``PhysicalSizeX``; the ImageJ ``unit`` with the resolution tags; the TIFF
``ResolutionUnit`` (inch or centimetre) with the resolution tags; Picasso's
``Pixelsize`` / ``Camera.Pixelsize``. Otherwise, or when the file's value is no camera
pixel (outside 10–2000 nm), it is unknown (``None``).

Nothing is accepted silently: :func:`open_movie` checks the frame count against the
metadata and the file size (:mod:`stormfold.io.tiff_layout`), refuses colour, images of
more than three dimensions without a plane choice (``axes``, ``z``, ``channel``), int8
pixels and frames too large for memory; :meth:`Movie.read` names a damaged frame and
NaN/Inf pixels (or repairs and counts them, ``nan_policy="zero"``); the readers
(:mod:`stormfold.io.readers`) name the file and frames of any damage. Of the checks a
command runs before any work, those on sampled frames are in :mod:`stormfold.io.movie_checks`
(the others: :func:`stormfold.io.metadata.check_camera_pixel_size`,
:func:`stormfold.physics.camera.check_baseline`,
:func:`stormfold.localize.registry.check_threshold`).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tifffile

from stormfold.errors import UserError, as_path
from stormfold.io.metadata import (check_camera_pixel_size, load_yaml_documents,
                                   missing_pixel_size, pixel_size_from_documents,
                                   plausible_pixel_size, tiff_pixel_size)
from stormfold.io.readers import (ConcatReader, ContiguousReader, FolderReader, TiffPagesReader,
                                  check_frame_memory, first_line)
from stormfold.io.tiff_layout import frame_layout, tifffile_messages
from stormfold.physics.geometry import FrameGeometry

#: File suffixes recognised as TIFF when listing a folder of frames.
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")

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
        entries, Picasso camera keys, stormfold's own ``info``, the ``axes`` and plane
        ``selection`` used ...).
    nan_policy : {"error", "zero", "median"}
        What :meth:`read` does with NaN/Inf pixels (see :func:`open_movie`).
    """

    def __init__(self, path: Path, reader: Any, n_frames: int, shape: tuple[int, int],
                 dtype: np.dtype, pixel_size_nm: float | None, metadata: dict,
                 pixel_size_note: str | None = None, nan_policy: str = "error"):
        self.path = Path(path)
        self._reader = reader
        self.n_frames = int(n_frames)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.pixel_size_nm = pixel_size_nm
        self.metadata = metadata
        self.nan_policy = check_nan_policy(nan_policy)
        self._pixel_size_note = pixel_size_note
        self._spec: tuple[list[Path], dict] = ([self.path], {})
        # frame index -> non-finite pixels replaced there (nan_policy "zero"); one entry
        # per damaged frame, so a frame read twice is counted once.
        self._repaired: dict[int, int] = {}

    def __len__(self) -> int:
        return self.n_frames

    def __repr__(self) -> str:
        px = "unknown" if self.pixel_size_nm is None else f"{self.pixel_size_nm:g} nm"
        return (f"Movie({str(self.path)!r}, n_frames={self.n_frames}, shape={self.shape}, "
                f"dtype={self.dtype}, pixel_size={px})")

    def __reduce__(self):
        # Re-open by path in another process (e.g. a dask worker) instead of pickling handles.
        return (_reopen, self.open_spec())

    def open_spec(self) -> tuple[list[Path], dict]:
        """``(paths, options)`` such that ``open_movies(paths, **options)`` opens this movie
        again (e.g. in a worker process): the pixel size given and the reader options."""
        paths, options = self._spec
        return list(paths), dict(options)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Read frames ``start`` (inclusive) to ``stop`` (exclusive).

        Returns
        -------
        numpy.ndarray
            Array ``(stop - start, rows, cols)`` of :attr:`dtype`, a copy owned by the caller.

        Raises
        ------
        UserError
            Frames out of range, a damaged or truncated frame, NaN/Inf pixels
            (``nan_policy="error"``), or frames that do not fit in memory; the message names
            the file and the frames.
        """
        frames = self._frames(start, stop, checked=True)
        if frames.dtype.kind == "f" and not np.isfinite(frames).all():
            self._non_finite(frames, int(start))
        return frames

    def read_context(self, start: int, stop: int, fill: float | None = 0.0) -> np.ndarray:
        """Read frames ``start`` to ``stop`` that are not localized here: context for their
        neighbours (temporal engines) or a sample for statistics. NaN/Inf pixels become
        ``fill`` (None: left as they are) without an error or a count — a frame outside
        ``--frames`` must not stop a run, and one inside is checked when read as data."""
        frames = self._frames(start, stop, checked=False)
        if frames.dtype.kind == "f" and fill is not None:
            frames[~np.isfinite(frames)] = fill
        return frames

    def _frames(self, start: int, stop: int, checked: bool) -> np.ndarray:
        """The frames as stored (``checked`` matters only to movies made of parts)."""
        self._check_range(start, stop)
        return self._reader.read(int(start), int(stop))

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= int(start) <= int(stop) <= self.n_frames:
            raise UserError(f"{self.path}: frames {start}:{stop} out of range for a movie of "
                            f"{self.n_frames} frames (0 ≤ start ≤ stop ≤ {self.n_frames})")
        if self._reader is None:
            raise UserError(f"movie {self.path} is closed")

    def _non_finite(self, frames: np.ndarray, start: int) -> None:
        bad = ~np.isfinite(frames)
        per_frame = bad.reshape(len(frames), -1).sum(axis=1)
        hit = np.flatnonzero(per_frame)
        if self.nan_policy == "error":
            listed = ", ".join(str(start + int(i)) for i in hit[:5])
            more = f" and {len(hit) - 5} more" if len(hit) > 5 else ""
            raise UserError(f"{self.path}: {int(per_frame.sum())} NaN/Inf pixels in frame(s) "
                            f"{listed}{more} (0-based; of the frames read so far, others may "
                            f"hold some too); pass nan_policy='median' "
                            f"(--nan-policy median) to replace them by their frame's median "
                            f"and count them")
        if self.nan_policy == "median":
            # The frame's median is its background level: a repaired pixel stands out
            # neither as dark (0 ADU is below the baseline: negative photons) nor bright.
            for i in hit:
                finite = frames[i][~bad[i]]
                frames[i][bad[i]] = np.median(finite) if finite.size else 0
        else:
            frames[bad] = 0
        for i in hit:
            self._repaired[start + int(i)] = int(per_frame[i])

    def repairs(self) -> dict | None:
        """What ``nan_policy="zero"`` replaced in the frames read so far (None: nothing).

        Returns
        -------
        dict or None
            ``nan_policy``, ``frames_repaired``, ``pixels_replaced`` and the first
            ``frames`` (0-based, up to 20): the record ``run.yaml`` states.
        """
        if not self._repaired:
            return None
        frames = sorted(self._repaired)
        return {"nan_policy": self.nan_policy, "frames_repaired": len(frames),
                "pixels_replaced": int(sum(self._repaired.values())), "frames": frames[:20]}

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


def _reopen(paths: list[Path], options: dict) -> Movie:
    return open_movies(paths, **options)


# --------------------------------------------------------------------------- open_movie
NAN_POLICIES = ("error", "zero", "median")


def check_nan_policy(value: str) -> str:
    """``value`` if it is one of :data:`NAN_POLICIES`, else :class:`UserError`."""
    if value not in NAN_POLICIES:
        raise UserError(f"nan_policy {value!r}: choose one of {', '.join(NAN_POLICIES)}")
    return value


def open_movie(path: str | Path, pixel_size_nm: float | None = None, *,
               nan_policy: str = "error", axes: str | None = None, z: int | None = None,
               channel: int | None = None) -> Movie:
    """Open a movie without reading its pixel data.

    Parameters
    ----------
    path : str or Path
        A TIFF/BigTIFF/OME-TIFF stack, a folder of single-frame TIFFs, or a Picasso
        ``.raw`` file (with ``<stem>.yaml`` next to it).
    pixel_size_nm : float, optional
        Camera pixel size in nm (10–2000); overrides whatever the file says.
    nan_policy : {"error", "zero", "median"}
        NaN/Inf pixels (float movies) are an error naming the frames when they are read
        (default), or replaced by 0 or by their frame's median (its background level; 0
        ADU lies below a camera's baseline) and counted (:meth:`Movie.repairs`). The check runs on
        each batch as it is read, not in an extra pass over the movie.
    axes : str, optional
        TIFF stacks: the image's dimensions in order, e.g. ``"TZYX"`` (letters T, Z, C,
        Y, X), overriding the names in the file. Needed for images with more than three
        dimensions whose file does not name them T/Z/C.
    z, channel : int, optional
        TIFF stacks: the focal plane and channel (0-based) to read from a
        multi-dimensional image; every Z or C axis of more than one plane needs one.

    Returns
    -------
    Movie

    Raises
    ------
    UserError
        Missing path, unreadable or unsupported file, colour image, an image of more
        than three dimensions without a plane choice, empty stack, truncated or damaged
        file (naming the frames declared and present), frames of different shapes or
        too large for memory, int8 pixels, missing or inconsistent Picasso sidecar, bad
        pixel size or option.
    """
    path = as_path(path, "movie")
    given = None if pixel_size_nm is None else check_camera_pixel_size(pixel_size_nm, str(path))
    check_nan_policy(nan_policy)
    for name, value in (("z", z), ("channel", channel)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or int(value) != value or value < 0):
            raise UserError(f"{name} must be a plane index ≥ 0, got {value!r}")
    if not path.exists():
        raise UserError(f"movie not found: {path}")
    planes = {"axes": axes, "z": z, "channel": channel}
    if path.is_dir() or path.suffix.lower() == ".raw":
        chosen = [f"{k}={v!r}" for k, v in planes.items() if v is not None]
        if chosen:
            raise UserError(f"{path}: {', '.join(chosen)} apply to TIFF stacks; this movie "
                            f"has one plane per frame")
        movie = _open_folder(path) if path.is_dir() else _open_picasso_raw(path)
    else:
        movie = _open_tiff_file(path, axes, z, channel)
    movie.nan_policy = nan_policy
    options = {"nan_policy": nan_policy, **{k: v for k, v in planes.items() if v is not None}}
    if given is not None:
        movie.pixel_size_nm = given
        options["pixel_size_nm"] = given
    movie._spec = ([path], options)
    try:
        check_count_dtype(movie.dtype, path)
    except UserError:
        movie.close()
        raise
    return movie


def check_count_dtype(dtype: np.dtype, source: str | Path) -> None:
    """Refuse pixels that cannot be camera counts (:class:`UserError` naming ``source``).

    Only real integer and floating-point pixels are counts: complex and bool values have
    no single count (numpy would drop the imaginary part or read True as 1 without a word),
    and bytes, strings, records and Python objects are not numbers at all (a Picasso sidecar
    declaring them would have raw bytes read as object pointers). int8 pixels are refused
    too: an 8-bit camera counts 0…255, which int8 wraps to negative above 127.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise UserError(f"{source}: complex pixels (dtype {dtype}) cannot be camera counts: "
                        f"save the real part or the magnitude as a real image")
    if dtype.kind == "b":
        raise UserError(f"{source}: true/false pixels (dtype bool, a mask?) cannot be camera "
                        f"counts")
    if dtype.kind not in "uif":
        raise UserError(f"{source}: pixel values must be real numbers (integer or floating "
                        f"point), got dtype {dtype}")
    if dtype == np.int8:
        raise UserError(f"{source}: int8 pixels cannot be camera counts (an 8-bit camera "
                        f"counts 0…255, which int8 wraps to negative above 127): save the "
                        f"movie as uint8 or uint16")


def open_movies(paths: list[str | Path], pixel_size_nm: float | None = None,
                **options: Any) -> Movie:
    """Open several movies of one acquisition as one movie (frames end to end).

    All parts must have the same frame shape and data type; the pixel size and metadata
    are the first part's (parts with a different known pixel size are refused).
    ``options`` are the keyword arguments of :func:`open_movie` (``nan_policy``, ``axes``,
    ``z``, ``channel``), applied to every part; NaN/Inf pixels are checked (or repaired
    and counted) by the parts.
    """
    if len(paths) == 1:
        return open_movie(paths[0], pixel_size_nm, **options)
    if not paths:
        raise UserError("no movie given")
    seen: dict[Path, int] = {}
    for i, path in enumerate(paths):
        # The same file twice doubles every localization (review 15): a slip, not a movie.
        key = Path(path).resolve() if Path(path).exists() else Path(path)
        if key in seen:
            raise UserError(f"movie {path} is listed twice (parts {seen[key] + 1} and {i + 1})")
        seen[key] = i
    movies: list[Movie] = []
    try:
        for path in paths:
            movies.append(open_movie(path, pixel_size_nm, **options))
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
    combined = _CombinedMovie(first.path, ConcatReader(movies), sum(m.n_frames for m in movies),
                              first.shape, first.dtype, first.pixel_size_nm,
                              {**first.metadata, "parts": [str(m.path) for m in movies]},
                              nan_policy=first.nan_policy)
    given = {} if pixel_size_nm is None else {"pixel_size_nm": pixel_size_nm}
    combined._spec = ([m.path for m in movies], {**options, **given})
    return combined


class _CombinedMovie(Movie):
    """The parts of :func:`open_movies`: NaN/Inf pixels are handled (and counted) by them."""

    def _frames(self, start: int, stop: int, checked: bool) -> np.ndarray:
        # the parts check (or skip, for context frames) their own NaN/Inf pixels
        self._check_range(start, stop)
        return self._reader.read(int(start), int(stop), checked=checked)

    def _non_finite(self, frames: np.ndarray, start: int) -> None:  # parts did it already
        return None

    def repairs(self) -> dict | None:
        reports = [(int(lo), movie.repairs())
                   for movie, lo in zip(self._reader.movies, self._reader.offsets)]
        reports = [(lo, r) for lo, r in reports if r]
        if not reports:
            return None
        return {"nan_policy": self.nan_policy,
                "frames_repaired": sum(r["frames_repaired"] for _, r in reports),
                "pixels_replaced": sum(r["pixels_replaced"] for _, r in reports),
                "frames": [lo + f for lo, r in reports for f in r["frames"]][:20]}


def _open_tiff(path: Path, messages: list[str]) -> tifffile.TiffFile:
    try:
        return tifffile.TiffFile(path)
    except Exception as exc:  # tifffile raises several types for non-TIFF input
        broken = f"; {messages[0]}" if messages else ""
        raise UserError(f"{path}: not a TIFF file ({first_line(exc)}{broken}); movies must be "
                        f"TIFF stacks, folders of TIFFs or Picasso .raw files") from None


def _open_tiff_file(path: Path, axes: str | None = None, z: int | None = None,
                    channel: int | None = None) -> Movie:
    with tifffile_messages() as messages:
        tif = _open_tiff(path, messages)
        try:
            layout = frame_layout(tif, path, axes, z, channel, messages)
            check_frame_memory(path, layout.shape)
            pixel, note = tiff_pixel_size(tif)
            metadata = _tiff_metadata(tif)
        except Exception:
            tif.close()
            raise
    metadata["axes"] = layout.axes
    if layout.selection:
        metadata["selection"] = dict(layout.selection)
    if layout.offset is not None:
        reader: Any = ContiguousReader(path, layout.dtype.newbyteorder(tif.byteorder),
                                        layout.offset, layout.shape, layout.first_plane,
                                        layout.plane_step)
        tif.close()
    else:
        reader = TiffPagesReader(tif, layout, layout.dtype.newbyteorder("="), path)
    return Movie(path, reader, layout.n_frames, layout.shape, layout.dtype, pixel, metadata, note)


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
    return Movie(path, FolderReader(files, shape, dtype), len(files), shape, dtype, pixel,
                 metadata, note)


def _folder_frame_info(file: Path):
    with tifffile_messages() as messages:
        tif = _open_tiff(file, messages)
        with tif:
            _check_one_plane(tif, file)
            layout = frame_layout(tif, file, messages=messages)
            if layout.n_frames != 1:
                raise UserError(f"{file}: holds {layout.n_frames} frames; a folder movie needs "
                                f"one frame per file")
            check_frame_memory(file, layout.shape)
            pixel, note = tiff_pixel_size(tif)
            return (layout.shape, layout.dtype.newbyteorder("="), pixel, note,
                    _tiff_metadata(tif))


def _check_one_plane(tif, file: Path) -> None:
    """A file of a folder movie holds one 2-D frame: say how many planes it has instead of
    what they would be in a stack of their own (e.g. "colour" for three planes that
    tifffile tagged RGB)."""
    page = tif.pages.first
    series = tif.series[0] if tif.series else None
    pixels = int(page.imagelength) * int(page.imagewidth)
    planes = len(tif.pages) if series is None else max(len(tif.pages),
                                                        int(np.prod(series.shape)) // max(pixels, 1))
    if planes > 1:
        rgb = " tagged as RGB colour" if int(page.photometric) == 2 else ""
        raise UserError(f"{file}: holds {planes} planes of {page.imagelength} x "
                        f"{page.imagewidth} pixels{rgb}; a folder movie needs one frame per file")


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
        raise UserError(f"{sidecar}: bad movie description ({first_line(exc)})") from None
    check_count_dtype(dtype, f"{sidecar} (Data Type {first['Data Type']!r})")
    if min(width, height, n_frames) <= 0:
        raise UserError(f"{path}: empty movie ({n_frames} frames of {height}x{width} px)")
    frame_bytes = height * width * dtype.itemsize
    expected = n_frames * frame_bytes
    actual = path.stat().st_size
    if actual != expected:
        present, extra = divmod(actual, frame_bytes)
        tail = f" and {extra} bytes" if extra else ""
        raise UserError(f"{path}: size {actual} bytes does not match {sidecar.name}: it "
                        f"declares {n_frames} frames of {height} x {width} x {dtype.itemsize} "
                        f"bytes ({expected} bytes), the file holds {present} frames{tail}")
    check_frame_memory(path, (height, width))
    pixel, note = plausible_pixel_size(pixel_size_from_documents(documents, sidecar),
                                       f"Pixelsize in {sidecar.name}")
    if pixel is None and note is None:
        note = missing_pixel_size(documents, sidecar.name)
    metadata = {"format": "picasso-raw",
                "picasso": {k: v for k, v in first.items() if _small_scalar(v)}}
    reader = ContiguousReader(path, dtype, 0, (height, width))
    return Movie(path, reader, n_frames, (height, width), dtype, pixel, metadata, note)
