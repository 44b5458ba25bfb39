"""napari readers and writer: localization tables as Points layers, Picasso movies.

Readers follow npe2's contract: ``get_reader(path)`` returns a function that makes layer
tuples, or None when the file is not one of ours (napari then asks its other readers).
Errors of a file that *is* ours become a one-line message (napari shows it as a
notification).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from stormfold.errors import UserError
from stormfold.napari._layers import movie_layer_kwargs, points_to_table, table_to_points

LayerTuple = tuple[Any, dict, str]


# --------------------------------------------------------------------------- readers
def get_table_reader(path: str | list[str]) -> Callable[[str], list[LayerTuple]] | None:
    """Reader of ThunderSTORM CSV / Picasso HDF5 localization files, else None."""
    if isinstance(path, list):
        return None
    if not _is_table(Path(path)):
        return None
    return read_table_layers


def get_movie_reader(path: str | list[str]) -> Callable[[str], list[LayerTuple]] | None:
    """Reader of Picasso ``.raw`` movies (with their ``.yaml`` sidecar), else None."""
    if isinstance(path, list):
        return None
    path = Path(path)
    if path.suffix.lower() != ".raw" or not path.with_suffix(".yaml").is_file():
        return None
    return read_movie_layers


def _is_table(path: Path) -> bool:
    """Cheap test of the header (CSV) or of the /locs dataset (HDF5) without reading rows."""
    from stormfold.io.thunderstorm import resolve_layout

    suffix = path.suffix.lower()
    if not path.is_file():
        return False
    if suffix == ".csv":
        import pandas as pd

        try:
            headers = pd.read_csv(path, nrows=0).columns
            resolve_layout(headers, str(path))
        except (UserError, ValueError, UnicodeDecodeError, pd.errors.ParserError,
                pd.errors.EmptyDataError):
            return False
        return True
    if suffix in (".hdf5", ".h5"):
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                locs = fh.get("locs")
                return isinstance(locs, h5py.Dataset) and locs.dtype.names is not None
        except OSError:
            return False
    return False


def read_table_layers(path: str) -> list[LayerTuple]:
    """One Points layer (nm, frame axis first) from a localization table file."""
    from stormfold.io.picasso import read_picasso_hdf5
    from stormfold.io.tables import geometry_near, table_format
    from stormfold.io.thunderstorm import read_thunderstorm_csv

    path = Path(path)
    if table_format(path) == "picasso":
        table, info = read_picasso_hdf5(path)
        px, shape = info["pixel_size_nm"], (info["height_px"], info["width_px"])
    else:
        table = read_thunderstorm_csv(path)
        geometry = geometry_near(path)
        px = geometry.get("pixel_size_nm")
        shape = (geometry.get("height_px"), geometry.get("width_px"))
    meta = {"source": str(path)}
    if None not in shape:
        meta["frame_shape"] = [int(shape[0]), int(shape[1])]
    return [table_to_points(table, path.stem, pixel_size_nm=px, metadata=meta)]


class MovieFrames:
    """Array view of a :class:`~stormfold.io.movie.Movie` (frames, rows, cols): napari
    slices it frame by frame, so a long movie is never read whole."""

    def __init__(self, movie):
        self.movie = movie
        self.shape = (movie.n_frames, *movie.shape)
        self.dtype = movie.dtype
        self.ndim = 3

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        first, rest = key[0], key[1:]
        if isinstance(first, (int, np.integer)):
            return self.movie[int(first)][rest] if rest else self.movie[int(first)]
        frames = self.movie[first] if isinstance(first, slice) else \
            np.stack([self.movie[int(i)] for i in np.arange(self.shape[0])[first]])
        return frames[(slice(None), *rest)] if rest else frames

    def __array__(self, dtype=None, copy=None):
        frames = self.movie[:]
        return frames if dtype is None else frames.astype(dtype)


def read_movie_layers(path: str) -> list[LayerTuple]:
    """An Image layer (world in nm) of a Picasso ``.raw`` movie, read frame by frame."""
    import dask.array as da

    from stormfold.io.movie import open_movie

    movie = open_movie(path)
    frames = da.from_array(MovieFrames(movie), chunks=(1, *movie.shape), asarray=True,
                           fancy=False, meta=np.empty((0, 0, 0), movie.dtype))
    meta = {"source": str(path), "movie_metadata": movie.metadata}
    return [(frames, movie_layer_kwargs(Path(path).stem, movie.pixel_size_nm, meta), "image")]


# --------------------------------------------------------------------------- writer
def write_points(path: str, data: Any, attributes: dict) -> list[str]:
    """Write a Points layer as ThunderSTORM CSV (``.csv``) or Picasso HDF5 (``.hdf5``/``.h5``).

    The layer's data are taken as (frame, y_nm, x_nm) — the layers this plugin makes — and
    its numeric features as table columns. Picasso files need the pixel size, from the
    layer's ``metadata["stormfold"]["pixel_size_nm"]``.
    """
    from stormfold.io.tables import table_format, write_table
    from stormfold.napari._layers import META_KEY

    meta = (attributes.get("metadata") or {}).get(META_KEY) or {}
    table = points_to_table(data, attributes.get("features"))
    px = meta.get("pixel_size_nm")
    width = height = None
    if table_format(path) == "picasso":
        if px is None:
            raise UserError(f"{path}: writing Picasso HDF5 needs the camera pixel size, and "
                            f"this layer has none: save as .csv instead")
        if meta.get("frame_shape"):
            height, width = (int(v) for v in meta["frame_shape"])
    try:
        write_table(path, table, px, width, height)
    except OSError as exc:
        # The error names the temporary file of the atomic write; the user gave ``path``.
        raise UserError(f"cannot write {path}: {exc.strerror or type(exc).__name__}") from None
    return [str(path)]
