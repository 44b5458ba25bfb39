"""Picasso HDF5 localization files and their YAML sidecars.

Format (SPEC §1): dataset ``/locs`` of records ``frame`` (uint32, 0-based), ``x``, ``y``,
``photons``, ``sx``, ``sy``, ``bg``, ``lpx``, ``lpy`` (float32), plus any extra fields
(``net_gradient``, ``likelihood``, ``iterations`` ...). ``x``, ``y``, ``sx``, ``sy``,
``lpx``, ``lpy`` are in camera pixels with the *centre* of pixel i at i, so

    x_nm = (x_px + 0.5) · pixel_size_nm

(stormfold's origin is the pixel corner, SPEC §1). The sidecar ``<stem>.yaml`` is a
multi-document YAML file; the first document has ``Width``, ``Height``, ``Frames``.

Column mapping: ``photons`` ↔ photons; mean of ``sx``, ``sy`` (px) × px ↔ ``sigma_nm``
(written as sx = sy = sigma_nm / px); ``bg`` ↔ bg; mean of ``lpx``, ``lpy`` × px ↔
``uncertainty_nm`` (same rule); extra fields pass through under their own names.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import yaml

from stormfold import __version__
from stormfold.errors import UserError
from stormfold.io.atomic import atomic_path
from stormfold.io.metadata import (check_pixel_size, load_yaml_documents,
                                   pixel_size_from_documents, sidecar_path)
from stormfold.table import n_frames_of, validate_table

LOCS_DATASET = "locs"
#: The fields Picasso expects, in its order (frame uint32, the rest float32).
BASE_FIELDS = ("frame", "x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy")
# Table columns consumed by the base fields (everything else becomes an extra field).
_MAPPED_COLUMNS = ("frame", "x_nm", "y_nm", "photons", "sigma_nm", "bg", "uncertainty_nm")
def _first_int(documents: Sequence[Mapping], key: str) -> int | None:
    for doc in documents:
        if key in doc:
            try:
                return int(doc[key])
            except (TypeError, ValueError):
                return None
    return None


# --------------------------------------------------------------------------- reading
def read_picasso_hdf5(path: str | Path,
                      pixel_size_nm: float | None = None) -> tuple[pd.DataFrame, dict]:
    """Read a Picasso HDF5 localization file into a localization table.

    Parameters
    ----------
    path : str or Path
        The ``.hdf5`` file; its sidecar ``<stem>.yaml`` is read when present.
    pixel_size_nm : float, optional
        Camera pixel size (nm); overrides the sidecar.

    Returns
    -------
    table : pandas.DataFrame
        ``frame``, ``x_nm``, ``y_nm`` and, when the fields exist, ``photons``,
        ``sigma_nm``, ``bg``, ``uncertainty_nm`` (nm), then extra fields unchanged
        (floats as float64, integers as int64).
    info : dict
        ``pixel_size_nm``, ``width_px``, ``height_px``, ``n_frames`` (``None`` when the
        sidecar lacks them), ``documents`` (the sidecar's YAML documents),
        ``extra_fields`` (names of the pass-through fields), ``sidecar`` (path or None).

    Raises
    ------
    UserError
        Missing or non-HDF5 file, no ``/locs`` records, missing frame/x/y fields, pixel
        size neither given nor in the sidecar.
    """
    path = Path(path)
    locs = _read_locs(path)
    sidecar = sidecar_path(path)
    documents = load_yaml_documents(sidecar) if sidecar.is_file() else []
    if pixel_size_nm is not None:
        px = check_pixel_size(pixel_size_nm, str(path))
    else:
        px = pixel_size_from_documents(documents, sidecar)
        if px is None:
            raise UserError(f"{path}: pixel size unknown (no Pixelsize in "
                            f"{sidecar.name if documents else 'a YAML sidecar'}): "
                            f"pass --pixel-size NM")
    table, extras = _locs_to_table(locs, px, str(path))
    info = {"pixel_size_nm": px,
            "width_px": _first_int(documents, "Width"),
            "height_px": _first_int(documents, "Height"),
            "n_frames": _first_int(documents, "Frames"),
            "documents": documents,
            "extra_fields": extras,
            "sidecar": str(sidecar) if documents else None}
    return table, info


def _read_locs(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"localization file not found: {path}")
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise UserError(f"{path}: not an HDF5 file ({str(exc).splitlines()[0]})") from None
    with fh:
        dataset = fh.get(LOCS_DATASET)
        if not isinstance(dataset, h5py.Dataset) or dataset.dtype.names is None:
            raise UserError(f"{path}: no /{LOCS_DATASET} record dataset (not a Picasso "
                            f"localization file)")
        missing = [name for name in ("frame", "x", "y") if name not in dataset.dtype.names]
        if missing:
            raise UserError(f"{path}: /{LOCS_DATASET} lacks field(s) {', '.join(missing)}")
        return dataset[()]


def _mean_fields(locs: np.ndarray, names: tuple[str, str]) -> np.ndarray | None:
    present = [locs[n].astype(np.float64) for n in names if n in locs.dtype.names]
    return None if not present else sum(present) / len(present)


def _locs_to_table(locs: np.ndarray, px: float, source: str) -> tuple[pd.DataFrame, list[str]]:
    fields = locs.dtype.names
    columns: dict[str, np.ndarray] = {
        "frame": locs["frame"].astype(np.int64),
        # float32 pixel values widened before the shift so no precision is lost twice
        "x_nm": (locs["x"].astype(np.float64) + 0.5) * px,
        "y_nm": (locs["y"].astype(np.float64) + 0.5) * px,
    }
    if "photons" in fields:
        columns["photons"] = locs["photons"].astype(np.float64)
    sigma = _mean_fields(locs, ("sx", "sy"))
    if sigma is not None:
        columns["sigma_nm"] = sigma * px
    if "bg" in fields:
        columns["bg"] = locs["bg"].astype(np.float64)
    lp = _mean_fields(locs, ("lpx", "lpy"))
    if lp is not None:
        columns["uncertainty_nm"] = lp * px
    extras = []
    for name in fields:
        values = locs[name]
        if name in BASE_FIELDS or values.ndim != 1:
            continue
        kind = values.dtype.kind
        if kind == "f":
            values = values.astype(np.float64)
        elif kind in "iu":
            values = values.astype(np.int64)
        columns[name] = values
        extras.append(name)
    return validate_table(pd.DataFrame(columns), source=source), extras


# --------------------------------------------------------------------------- writing
def write_picasso_hdf5(path: str | Path, table: pd.DataFrame, pixel_size_nm: float,
                       width_px: int, height_px: int, n_frames: int | None = None,
                       info: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> Path:
    """Write a localization table as Picasso HDF5 plus its YAML sidecar (both atomic).

    Parameters
    ----------
    path : str or Path
        Output ``.hdf5`` file; the sidecar is ``<stem>.yaml`` next to it.
    table : pandas.DataFrame
        Localization table (nm, 0-based frames).
    pixel_size_nm : float
        Camera pixel size (nm) used to convert positions to Picasso's pixel units.
    width_px, height_px : int
        Camera image size (pixels), written as ``Width``/``Height``.
    n_frames : int, optional
        Movie length written as ``Frames`` (default: last frame + 1).
    info : dict or list of dict, optional
        A dict adds keys to the first sidecar document (it cannot replace Width,
        Height, Frames, Pixelsize, Generated by); a list of dicts is appended as
        further documents (e.g. the history of a file being converted).

    Notes
    -----
    Missing optional columns are written as 0 because Picasso expects every base
    field. Other numeric columns become extra fields (floats as float32, integers as
    int32 when they fit); non-numeric columns are skipped with a warning.
    """
    path = Path(path)
    table = validate_table(table)
    px = check_pixel_size(pixel_size_nm, str(path))
    width, height = _positive_int(width_px, "width", path), _positive_int(height_px, "height", path)
    last = n_frames_of(table)
    frames = last if n_frames is None else _positive_int(n_frames, "number of frames", path)
    if frames < last:
        raise UserError(f"{path}: {frames} frames given but the table reaches frame {last - 1}")
    if last and table["frame"].max() > np.iinfo(np.uint32).max:
        raise UserError(f"{path}: frame index too large for Picasso's uint32 frames")
    records = _table_to_locs(table, px, path)
    document = {"Generated by": f"stormfold {__version__}", "Width": width, "Height": height,
                "Frames": int(frames), "Pixelsize": _plain(px)}
    documents = [document]
    if isinstance(info, Mapping):
        document.update({str(k): _plain(v) for k, v in info.items() if k not in document})
    elif info is not None:
        documents += [{str(k): _plain(v) for k, v in doc.items()} for doc in info]
    text = yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False,
                              allow_unicode=True)
    with atomic_path(path) as tmp_h5, atomic_path(sidecar_path(path)) as tmp_yaml:
        with h5py.File(tmp_h5, "w") as fh:
            fh.create_dataset(LOCS_DATASET, data=records)
        tmp_yaml.write_text(text, encoding="utf-8")
    return path


def _positive_int(value: Any, what: str, path: Path) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UserError(f"{path}: {what} must be a positive integer, got {value!r}") from None
    if number != value or number <= 0:
        raise UserError(f"{path}: {what} must be a positive integer, got {value!r}")
    return number


def _plain(value: Any) -> Any:
    """YAML-safe version of a value (numpy scalars → Python; integral floats → int)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    return str(value)


def _extra_columns(table: pd.DataFrame, path: Path) -> list[tuple[str, np.dtype]]:
    extras, skipped = [], []
    for name in table.columns:
        if name in _MAPPED_COLUMNS:
            continue
        column = table[name]
        if name in BASE_FIELDS or not (pd.api.types.is_numeric_dtype(column)
                                       or pd.api.types.is_bool_dtype(column)):
            skipped.append(str(name))
            continue
        kind = column.dtype.kind
        if kind == "b":
            dtype = np.dtype(np.uint8)
        elif kind in "iu":
            small = len(column) == 0 or (column.min() >= np.iinfo(np.int32).min
                                         and column.max() <= np.iinfo(np.int32).max)
            dtype = np.dtype(np.int32 if small else np.int64)
        else:
            dtype = np.dtype(np.float32)
        extras.append((str(name), dtype))
    if skipped:
        warnings.warn(f"{path}: column(s) {', '.join(skipped)} not written (Picasso fields "
                      f"must be numeric and not clash with its own names)", UserWarning,
                      stacklevel=4)
    return extras


def _table_to_locs(table: pd.DataFrame, px: float, path: Path) -> np.ndarray:
    extras = _extra_columns(table, path)
    dtype = np.dtype([("frame", np.uint32)] + [(n, np.float32) for n in BASE_FIELDS[1:]]
                     + extras)
    records = np.zeros(len(table), dtype=dtype)
    records["frame"] = table["frame"].to_numpy()
    records["x"] = table["x_nm"].to_numpy() / px - 0.5
    records["y"] = table["y_nm"].to_numpy() / px - 0.5
    if "photons" in table:
        records["photons"] = table["photons"].to_numpy(dtype=np.float64, na_value=np.nan)
    if "sigma_nm" in table:
        sigma_px = table["sigma_nm"].to_numpy(dtype=np.float64, na_value=np.nan) / px
        records["sx"] = records["sy"] = sigma_px
    if "bg" in table:
        records["bg"] = table["bg"].to_numpy(dtype=np.float64, na_value=np.nan)
    if "uncertainty_nm" in table:
        lp_px = table["uncertainty_nm"].to_numpy(dtype=np.float64, na_value=np.nan) / px
        records["lpx"] = records["lpy"] = lp_px
    for name, field_dtype in extras:
        records[name] = table[name].to_numpy().astype(field_dtype)
    return records
