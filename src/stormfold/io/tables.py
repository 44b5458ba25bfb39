"""Read, write and convert localization tables, choosing the format by extension.

``.csv`` is ThunderSTORM CSV (:mod:`stormfold.io.thunderstorm`); ``.hdf5`` and ``.h5``
are Picasso HDF5 (:mod:`stormfold.io.picasso`). Picasso files store positions in
camera pixels, so writing one needs the pixel size and the image size.

Where CSV → HDF5 conversion and the post-processing commands find that geometry when it
is not given: a ``simulation.yaml`` or ``run.yaml`` in the folder of the CSV
(:func:`stormfold.io.metadata.geometry_near`, which reads the movie's geometry, never the
``null`` of a run configuration). A pixel size given by the user (``--pixel-size``) overrides
it. Without any, the conversion is refused (asking for ``--pixel-size``); without an image
size, width and height default to ``ceil(max coordinate / pixel size)``.
:func:`stormfold.io.metadata.frames_near` gives the frames a table covers, for the
evaluation.

Which columns are estimates rather than measurements travels with the table: from the
``columns_estimated`` of a ``run.yaml`` next to a CSV (:func:`estimated_near`) or the
``Estimated fields`` of a Picasso sidecar, into the sidecar of a Picasso output.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from stormfold.errors import UserError, as_path
from stormfold.io.atomic import same_file
from stormfold.io.metadata import (GEOMETRY_FILES, RUN_RECORD, check_pixel_size, frames_near,
                                   geometry_near, load_yaml_mapping)
from stormfold.io.picasso import read_picasso_hdf5, sidecar_path, write_picasso_hdf5
from stormfold.io.thunderstorm import read_thunderstorm_csv, write_thunderstorm_csv
from stormfold.table import n_frames_of, validate_table

FORMATS = {".csv": "thunderstorm", ".hdf5": "picasso", ".h5": "picasso"}
#: Largest image width or height (camera pixels) a Picasso output may be given: beyond any
#: camera chip, so a mistyped size is refused rather than making Render allocate it.
MAX_IMAGE_PX = 100_000


def table_format(path: str | Path) -> str:
    """``"thunderstorm"`` or ``"picasso"`` from the extension, else :class:`UserError`."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise UserError(f"{path}: unknown localization table format {suffix or '(none)'!r} "
                        f"(use .csv for ThunderSTORM or .hdf5/.h5 for Picasso)")
    return FORMATS[suffix]


def read_table(path: str | Path, pixel_size_nm: float | None = None,
               frame_base: int | None = None) -> pd.DataFrame:
    """Read a localization table (nm, 0-based frames) from ThunderSTORM CSV or Picasso HDF5.

    Parameters
    ----------
    path : str or Path
        ``.csv``, ``.hdf5`` or ``.h5`` file. CSV files from other tools are accepted
        (column aliases and the frame-base rule: :mod:`stormfold.io.thunderstorm`).
    pixel_size_nm : float, optional
        Camera pixel size (nm): overrides a Picasso file's YAML sidecar; converts a CSV's
        positions in pixels (ignored for positions in nm).
    frame_base : {0, 1}, optional
        First frame number of a CSV that does not state it (ignored for Picasso, 0-based).
    """
    path = as_path(path, "localization table")
    if table_format(path) == "picasso":
        return read_picasso_hdf5(path, pixel_size_nm)[0]
    return read_thunderstorm_csv(path, pixel_size_nm=pixel_size_nm, frame_base=frame_base)


def write_table(path: str | Path, table: pd.DataFrame, pixel_size_nm: float | None = None,
                width_px: int | None = None, height_px: int | None = None,
                n_frames: int | None = None,
                estimated: Mapping[str, str] | None = None) -> Path:
    """Write a localization table as ThunderSTORM CSV or Picasso HDF5 (atomically).

    Parameters
    ----------
    path : str or Path
        ``.csv``, ``.hdf5`` or ``.h5`` file.
    table : pandas.DataFrame
        Localization table (nm, 0-based frames).
    pixel_size_nm : float, optional
        Camera pixel size (nm); required for Picasso.
    width_px, height_px : int, optional
        Image size in pixels for Picasso (default ``ceil(max x / px)``,
        ``ceil(max y / px)``).
    n_frames : int, optional
        Movie length for Picasso (default: last frame + 1).
    estimated : dict, optional
        Columns that are estimates (column → how), named in a Picasso sidecar.

    Callers that write next to their inputs should refuse ``path`` when
    :func:`stormfold.io.atomic.same_file` says it is an input.
    """
    path = Path(path)
    if table_format(path) == "thunderstorm":
        return write_thunderstorm_csv(path, table)
    if pixel_size_nm is None:
        raise UserError(f"{path}: writing Picasso HDF5 needs the camera pixel size: "
                        f"pass --pixel-size NM")
    px = check_pixel_size(pixel_size_nm, str(path))
    table = validate_table(table)
    check_float32(table, path)
    default_w, default_h = default_image_size(table, px)
    return write_picasso_hdf5(path, table, px,
                              default_w if width_px is None else width_px,
                              default_h if height_px is None else height_px,
                              n_frames=n_frames, estimated=estimated)


def write_frames_csv(path: str | Path, table: pd.DataFrame, frame_columns: tuple[str, ...] = (),
                     float_format: str | None = None) -> Path:
    """Write a plain CSV table (atomically) with its ``frame_columns`` 1-based.

    Every CSV stormfold writes numbers frames from 1, as ThunderSTORM does; in memory they
    are 0-based. Used for the drift trajectories and the cluster summaries.
    """
    from stormfold.io.atomic import atomic_path

    out = table.copy()
    for column in frame_columns:
        if column in out.columns:
            out[column] = out[column] + 1
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, float_format=float_format)
    return Path(path)


def default_image_size(table: pd.DataFrame, pixel_size_nm: float) -> tuple[int, int]:
    """``(width_px, height_px)`` just covering every localization (at least 1 x 1)."""
    if not len(table):
        return 1, 1
    width = math.ceil(float(table["x_nm"].max()) / pixel_size_nm)
    height = math.ceil(float(table["y_nm"].max()) / pixel_size_nm)
    return max(width, 1), max(height, 1)


def estimated_near(path: str | Path) -> dict[str, str]:
    """``columns_estimated`` (column → how it was estimated) of a ``run.yaml`` next to
    ``path`` (written by ``stormfold localize``/``run``); empty when there is none."""
    document = load_yaml_mapping(Path(path).parent / RUN_RECORD)
    found = document.get("columns_estimated") if document is not None else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, Mapping) else {}


__all__ = ["FORMATS", "GEOMETRY_FILES", "convert_table", "default_image_size",
           "estimated_near", "frames_near", "geometry_near", "read_table", "table_format",
           "table_sources", "write_frames_csv", "write_table"]


def check_float32(table: pd.DataFrame, source: str | Path) -> None:
    """Refuse (one line naming ``source`` and the column) values that a Picasso file's
    float32 fields would store as ±inf."""
    limit = float(np.finfo(np.float32).max)
    for name in table.columns:
        if name == "frame" or not pd.api.types.is_float_dtype(table[name]):
            continue
        values = table[name].to_numpy(dtype=np.float64)
        big = np.isfinite(values) & (np.abs(values) > limit)
        if big.any():
            raise UserError(f"{source}: column {name} has {int(big.sum())} value(s) beyond the "
                            f"float32 range (±{limit:.3g}) of a Picasso file: nothing written")


def table_sources(path: str | Path) -> list[Path]:
    """Every file that reading the table ``path`` may consult, which no output may replace.

    The table itself; for Picasso HDF5 its sidecar; for a CSV the ``simulation.yaml`` /
    ``run.yaml`` next to it that exist (geometry, frame base, frame range, estimated
    columns). A command's record ``OUT.yaml`` or a Picasso output's sidecar could
    otherwise replace the geometry the command has just read.
    """
    path = Path(path)
    if table_format(path) == "picasso":
        return [path, sidecar_path(path)]
    return [path, *(path.parent / name for name in GEOMETRY_FILES
                    if (path.parent / name).is_file())]


def check_apart(outputs: Iterable[str | Path], table: str | Path) -> None:
    """Refuse, in one line naming both, an output that would replace a file read with the
    table ``table`` (:func:`table_sources`)."""
    sources = table_sources(table)
    for out in outputs:
        for source in sources:
            if not same_file(out, source):
                continue
            if source == sources[0]:
                raise UserError(f"output {out} would overwrite the input file {source}: "
                                f"choose another output name")
            what = "sidecar" if table_format(table) == "picasso" else "camera geometry"
            raise UserError(f"output {out} would overwrite the input's {what} {source} (read "
                            f"with {sources[0]}): choose another output name")


def convert_table(src: str | Path, dst: str | Path, pixel_size_nm: float | None = None,
                  width_px: int | None = None, height_px: int | None = None,
                  frame_base: int | None = None) -> pd.DataFrame:
    """Convert a localization table between ThunderSTORM CSV and Picasso HDF5.

    Parameters
    ----------
    src, dst : str or Path
        Input and output files; the formats follow the extensions.
    pixel_size_nm : float, optional
        Camera pixel size (nm). For a Picasso input it overrides the sidecar; for
        CSV → HDF5 it is needed unless a ``simulation.yaml``/``run.yaml`` next to the
        CSV gives it (see the module docstring).
    width_px, height_px : int, optional
        Image size for a Picasso output (default: from the Picasso input or the
        YAML next to the CSV, else just covering the localizations).
    frame_base : {0, 1}, optional
        First frame number of a CSV input from another tool (default: stated by its
        layout or inferred; see :mod:`stormfold.io.thunderstorm`).

    Returns
    -------
    pandas.DataFrame
        The table that was written.

    Raises
    ------
    UserError
        Unknown extension, ``dst`` is ``src``, unreadable input, pixel size unknown,
        an image size too small for the localizations. Nothing is written then.
    """
    src, dst = Path(src), Path(dst)
    in_format, out_format = table_format(src), table_format(dst)
    check_apart([dst, sidecar_path(dst)] if out_format == "picasso" else [dst], src)
    geometry: dict[str, Any] = {}
    if in_format == "picasso":
        table, info = read_picasso_hdf5(src, pixel_size_nm)
        geometry = {k: info[k] for k in ("pixel_size_nm", "width_px", "height_px", "n_frames")
                    if info.get(k) is not None}
        estimated = info["columns_estimated"]
    else:
        table = read_thunderstorm_csv(src, pixel_size_nm=pixel_size_nm, frame_base=frame_base)
        estimated = estimated_near(src)
        if out_format == "picasso" and (pixel_size_nm is None or width_px is None
                                        or height_px is None):
            geometry = geometry_near(src, pixel_size_nm)
            if pixel_size_nm is not None and not math.isclose(
                    geometry.get("pixel_size_nm", pixel_size_nm), pixel_size_nm):
                geometry = {}  # image size in another pixel size does not apply
    px = pixel_size_nm if pixel_size_nm is not None else geometry.get("pixel_size_nm")
    if out_format == "thunderstorm":
        if width_px is not None or height_px is not None:
            warnings.warn(f"{dst}: a ThunderSTORM CSV has no image size: the width and height "
                          "given are not used", UserWarning, stacklevel=2)
        write_thunderstorm_csv(dst, table)
        return table
    if px is None:
        raise UserError(f"{src}: pixel size unknown (no {' or '.join(GEOMETRY_FILES)} with "
                        f"pixel_size_nm next to it): pass --pixel-size NM")
    check_float32(table, src)
    n_frames = geometry.get("n_frames")
    if n_frames is not None and n_frames < n_frames_of(table):
        n_frames = None
    size = []
    for name, given, needed in zip(("width", "height"), (width_px, height_px),
                                   default_image_size(table, px)):
        if given is not None and given > MAX_IMAGE_PX:
            raise UserError(f"an image {name} of {given} px is more than any camera has: give "
                            f"at most {MAX_IMAGE_PX}")
        if given is not None and given < needed:
            raise UserError(f"an image {name} of {given} px leaves localizations of {src} "
                            f"outside the image (they reach {needed} px at {px:g} nm per pixel): give at "
                            f"least {needed}")
        # A recorded camera size can be smaller than drift-corrected positions reach.
        recorded = geometry.get(f"{name}_px")
        size.append(given if given is not None else
                    None if recorded is None else max(int(recorded), needed))
    write_table(dst, table, px, size[0], size[1], n_frames=n_frames, estimated=estimated)
    return table
