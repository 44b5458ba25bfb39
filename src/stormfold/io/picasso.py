"""Picasso HDF5 localization files and their YAML sidecars.

Format (SPEC §1): dataset ``/locs`` of records ``frame`` (uint32, 0-based), ``x``, ``y``,
``photons``, ``sx``, ``sy``, ``bg``, ``lpx``, ``lpy`` (float32), plus any extra fields
(``net_gradient``, ``likelihood``, ``iterations`` ...). ``x``, ``y``, ``sx``, ``sy``,
``lpx``, ``lpy`` are in camera pixels with the *centre* of pixel i at i, so

    x_nm = (x_px + 0.5) · pixel_size_nm

(stormfold's origin is the pixel corner, SPEC §1). The sidecar ``<stem>.yaml`` is a
multi-document YAML file; the first document has ``Width``, ``Height``, ``Frames``.

Column mapping: ``photons`` ↔ photons; mean of ``sx``, ``sy`` (px) × px ↔ ``sigma_nm``
(written as sx = sy = sigma_nm / px); ``bg`` ↔ bg; a linked table's ``detections`` ↔ ``n``
and ``last_frame`` ↔ ``len`` = last_frame − frame + 1 (Picasso's linked events,
:data:`LINKED_FIELDS`); other extra fields pass through under their own names. Localization precision, per axis (px × px = nm):

* written: ``lpx`` = ``uncertainty_x_nm`` / px and ``lpy`` = ``uncertainty_y_nm`` / px where
  the table has these per-axis columns (gridnet), else both = ``uncertainty_nm`` / px;
* read: ``uncertainty_nm`` = √((lpx² + lpy²)/2) × px, the per-axis root mean square that
  every stormfold engine writes as ``uncertainty [nm]`` (= lpx × px when lpx = lpy), and,
  when lpx ≠ lpy in some row, also ``uncertainty_x_nm`` = lpx × px and
  ``uncertainty_y_nm`` = lpy × px. A gridnet table thus round-trips all three columns.

**Nothing unmeasured is written as a value.** Picasso's minimum fields are ``frame``,
``x``, ``y``, ``lpx`` and ``lpy``; ``photons``, ``sx``, ``sy`` and ``bg`` are optional, and
Picasso Render drops, on loading, every row with a NaN or infinite value in any field and
every row with a negative ``lpx``, ``lpy``, ``photons``, ``sx`` or ``sy``
(``picasso.lib.ensure_sanity``; older versions also drop ``lpx``/``lpy`` ≤ 0). So:

* ``photons``, ``sx``/``sy`` and ``bg`` are written only when the table has the column
  (an engine that does not measure them leaves them out);
* ``lpx``/``lpy`` come from the per-axis ``uncertainty_x_nm``/``uncertainty_y_nm``, else
  from ``uncertainty_nm``, when the table has them. Without them (or for rows where they
  are NaN) they hold a *stand-in*, :data:`LP_STANDIN_PX` = 1/√12 camera
  pixel (the standard deviation of a position known only to the pixel), so that Picasso
  can open and render the file; the sidecar's first document lists them under
  ``Stand-in fields`` and :func:`read_picasso_hdf5` then does not turn them back into
  ``uncertainty_nm``;
* columns that are estimates rather than measurements (e.g. Deep-STORM's ``photons`` and
  ``uncertainty_nm``, given as ``estimated``) are listed under ``Estimated fields``, and
  read back as ``info["columns_estimated"]``.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd

from stormfold import __version__
from stormfold.config import dump_yaml_all
from stormfold.errors import UserError
from stormfold.io.atomic import atomic_path
from stormfold.io.manifest import shown_path
from stormfold.io.metadata import (check_pixel_size, load_yaml_documents, missing_pixel_size,
                                   pixel_size_from_documents, sidecar_path)
from stormfold.table import n_frames_of, validate_table

LOCS_DATASET = "locs"
#: The fields Picasso knows, in its order (frame uint32, the rest float32).
BASE_FIELDS = ("frame", "x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy")
#: Fields every Picasso localization file must have (Picasso's file-format documentation).
REQUIRED_FIELDS = ("frame", "x", "y", "lpx", "lpy")
#: lpx/lpy (camera pixels) written when the localization uncertainty is unknown.
LP_STANDIN_PX = 1.0 / math.sqrt(12.0)
#: Sidecar keys (first document) naming estimated fields and stand-in fields.
ESTIMATED_KEY = "Estimated fields"
STANDIN_KEY = "Stand-in fields"
#: The value Picasso Render and SPINNA look for in a document to take its Pixelsize, and
#: what an earlier step's such value becomes in a file stormfold writes.
LOCALIZE = "Picasso Localize"
EARLIER_LOCALIZE = "Picasso Localize (an earlier step; the pixel size is the first one's)"
#: Sidecar key counting the rows Picasso's loader leaves out (:func:`picasso_drops`).
DROPPED_KEY = "Rows Picasso drops on loading"
#: Warn when more than this share of the rows would be dropped (or any has a NaN).
PICASSO_DROP_WARN = 0.05
#: Columns of a linked table (:mod:`stormfold.postprocess.link`) → the fields Picasso's own
#: linking writes: ``n``, the localizations of the event, and ``len``, its length in frames
#: (``last_frame`` = ``frame`` + ``len`` − 1), which Picasso's kinetics (dark times, qPAINT)
#: read.
LINKED_FIELDS = {"detections": "n", "last_frame": "len"}
#: Table column → Picasso fields.
COLUMN_FIELDS = {"photons": ("photons",), "sigma_nm": ("sx", "sy"), "bg": ("bg",),
                 "uncertainty_nm": ("lpx", "lpy")}
#: Per-axis uncertainty columns (nm) → the Picasso field they are written to.
AXIS_COLUMNS = {"uncertainty_x_nm": "lpx", "uncertainty_y_nm": "lpy"}
# Table columns consumed by the base fields (everything else becomes an extra field).
_MAPPED_COLUMNS = ("frame", "x_nm", "y_nm", "photons", "sigma_nm", "bg", "uncertainty_nm",
                   *AXIS_COLUMNS)
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
        ``sigma_nm``, ``bg``, ``uncertainty_nm`` (nm, √((lpx² + lpy²)/2) × px; not from
        stand-in ``lpx``/``lpy``), ``uncertainty_x_nm`` and ``uncertainty_y_nm`` (lpx, lpy
        × px; only when they differ in some row), then extra fields unchanged (floats as
        float64, integers as int64).
    info : dict
        ``pixel_size_nm``, ``width_px``, ``height_px``, ``n_frames`` (``None`` when the
        sidecar lacks them), ``columns_estimated`` (table column → how it was estimated,
        from the sidecar's ``Estimated fields``), ``documents`` (the sidecar's YAML documents),
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
            why = (missing_pixel_size(documents, sidecar.name) if documents
                   else "no Pixelsize in a YAML sidecar")
            raise UserError(f"{path}: pixel size unknown ({why}): pass --pixel-size NM")
    first = documents[0] if documents else {}
    standin = first.get(STANDIN_KEY) if isinstance(first.get(STANDIN_KEY), Mapping) else {}
    table, extras = _locs_to_table(locs, px, str(path), skip=tuple(standin))
    info = {"pixel_size_nm": px,
            "columns_estimated": _estimated_columns(first.get(ESTIMATED_KEY)),
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
        _check_field_types(dataset.dtype, path)
        locs = dataset[()]
    _check_whole_frames(locs["frame"], path)
    return locs


def _check_field_types(dtype: np.dtype, path: Path) -> None:
    """Picasso's own fields must be real numbers, one per localization (bytes, complex or
    bool values would be misread as positions or counts)."""
    for name in BASE_FIELDS:
        if name not in dtype.names:
            continue
        field = dtype.fields[name][0]
        if field.shape or field.kind not in "iuf":
            raise UserError(f"{path}: /{LOCS_DATASET} field {name!r} must hold "
                            f"{'frame numbers' if name == 'frame' else 'real numbers'}, got "
                            f"dtype {field}")


def _check_whole_frames(frame: np.ndarray, path: Path) -> None:
    """Float frame numbers must be whole (as for CSV tables), not truncated silently."""
    if frame.dtype.kind != "f":
        return
    bad = ~np.isfinite(frame) | (frame != np.round(frame))
    if bad.any():
        row = int(np.argmax(bad))
        raise UserError(f"{path}: /{LOCS_DATASET} field 'frame' holds non-integer values "
                        f"(row {row}: {float(frame[row])!r})")


def _mean_fields(locs: np.ndarray, names: tuple[str, str]) -> np.ndarray | None:
    present = [locs[n].astype(np.float64) for n in names if n in locs.dtype.names]
    return None if not present else sum(present) / len(present)


def _estimated_columns(value: Any) -> dict[str, str]:
    """Table columns named by a sidecar's ``Estimated fields`` (field → description)."""
    if not isinstance(value, Mapping):
        return {}
    out = {}
    for column, fields in COLUMN_FIELDS.items():
        for name in fields:
            if name in value:
                out[column] = str(value[name])
                break
    return out


def _locs_to_table(locs: np.ndarray, px: float, source: str,
                   skip: tuple[str, ...] = ()) -> tuple[pd.DataFrame, list[str]]:
    fields = tuple(name for name in locs.dtype.names if name not in skip)
    columns: dict[str, np.ndarray] = {
        "frame": locs["frame"].astype(np.int64),
        # float32 pixel values widened before the shift so no precision is lost twice
        "x_nm": (locs["x"].astype(np.float64) + 0.5) * px,
        "y_nm": (locs["y"].astype(np.float64) + 0.5) * px,
    }
    if "photons" in fields:
        columns["photons"] = locs["photons"].astype(np.float64)
    sigma = _mean_fields(locs, tuple(n for n in ("sx", "sy") if n in fields))
    if sigma is not None:
        columns["sigma_nm"] = sigma * px
    if "bg" in fields:
        columns["bg"] = locs["bg"].astype(np.float64)
    lp = [locs[n].astype(np.float64) * px for n in ("lpx", "lpy") if n in fields]
    for name, values in zip(("lpx", "lpy"), lp):
        if np.any(values < 0):  # a precision cannot be negative: the file is damaged
            raise UserError(f"{source}: {int((values < 0).sum())} negative {name} value(s); "
                            f"localization precisions are ≥ 0")
    if lp:
        columns["uncertainty_nm"] = np.sqrt(sum(v ** 2 for v in lp) / len(lp))
    if len(lp) == 2 and np.any(lp[0] != lp[1]):
        columns.update(zip(AXIS_COLUMNS, lp))
    extras, renamed, left = [], [], []
    linked = {field: column for column, field in LINKED_FIELDS.items()
              if field in fields and column not in fields and locs[field].ndim == 1
              and locs[field].dtype.kind in "iu"}
    for name in fields:
        values = locs[name]
        if name in BASE_FIELDS:
            continue
        kind = values.dtype.kind
        if values.ndim != 1 or kind not in "fiub":
            left.append(name)  # an array or text per localization: no table column
            continue
        if kind == "f":
            values = values.astype(np.float64)
        elif kind in "iu":
            values = values.astype(np.int64)
        if name in linked:
            # Picasso's linked events: back to the linked table's own columns.
            columns[linked[name]] = values + columns["frame"] - 1 if name == "len" else values
            extras.append(linked[name])
            continue
        column = name
        if name in _MAPPED_COLUMNS or name in columns:
            # A field named like a column computed from the base fields (x_nm, ...) would
            # replace the positions; it is kept under a numbered name, as the CSV reader does.
            column = next(f"{name}_{i}" for i in range(1, len(fields) + 2)
                          if f"{name}_{i}" not in columns and f"{name}_{i}" not in fields)
            renamed.append(f"{name} as {column}")
        columns[column] = values
        extras.append(column)
    if left:
        warnings.warn(f"{source}: field(s) {', '.join(left)} left out (not one number per "
                      f"localization)", UserWarning, stacklevel=3)
    if renamed:
        warnings.warn(f"{source}: field(s) named like stormfold's own columns kept under "
                      f"another name ({', '.join(renamed)}); positions and uncertainties "
                      f"come from x, y, lpx, lpy", UserWarning, stacklevel=3)
    return validate_table(pd.DataFrame(columns), source=source), extras


# --------------------------------------------------------------------------- writing
def write_picasso_hdf5(path: str | Path, table: pd.DataFrame, pixel_size_nm: float,
                       width_px: int, height_px: int, n_frames: int | None = None,
                       info: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
                       estimated: Mapping[str, str] | None = None) -> Path:
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
    estimated : dict, optional
        Table columns that are estimates, not measurements (column → how it was
        estimated), listed in the sidecar under ``Estimated fields``.

    Notes
    -----
    Only the fields the table has are written, except ``lpx``/``lpy``, which Picasso
    requires: per axis from ``uncertainty_x_nm``/``uncertainty_y_nm``, else from
    ``uncertainty_nm``; without either they are the stand-in :data:`LP_STANDIN_PX`,
    named in the sidecar (see the module docstring). Other numeric columns become extra
    fields (floats as float32, integers as int32 when they fit); non-numeric columns are
    skipped with a warning. A warning counts the rows Picasso drops on loading
    (:func:`picasso_drops`).
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
    records, n_standin = _table_to_locs(table, px, path)
    dropped = picasso_drops(records, width, height)
    # About 1.5 % of a 64-px frame's localizations sit in the half-pixel strips Picasso
    # leaves out: recorded in the sidecar always, said when there is more or a NaN.
    if dropped.get("a NaN or infinite value") or \
            dropped.get("total", 0) > PICASSO_DROP_WARN * max(len(records), 1):
        why = ", ".join(f"{n} with {k}" for k, n in dropped.items() if k != "total")
        warnings.warn(f"{shown_path(path)}: {dropped['total']} of {len(records)} "
                      f"localizations lie where "
                      f"Picasso drops them when it loads the file ({why}); they stay in the "
                      f"file, and stormfold and the CSV keep them", UserWarning, stacklevel=2)
    document = {"Generated by": f"stormfold {__version__}", "Width": width, "Height": height,
                "Frames": int(frames), "Pixelsize": _plain(px)}
    fields_estimated = {field: str(how) for column, how in (estimated or {}).items()
                        if column in table.columns for field in COLUMN_FIELDS.get(column, ())}
    if fields_estimated:
        document[ESTIMATED_KEY] = fields_estimated
    if dropped:
        document[DROPPED_KEY] = dropped
    if n_standin:
        what = (f"{LP_STANDIN_PX:.6f} camera px (1/sqrt(12): a position known to the pixel), "
                f"not measured; {n_standin} of {len(table)} rows")
        document[STANDIN_KEY] = {"lpx": what, "lpy": what}
    # Picasso Render and SPINNA take the pixel size only from a document with a value
    # "Picasso Localize" (else 130 nm): one says so, in its own words.
    documents = [document, {"Pixel size for": LOCALIZE, "Pixelsize": _plain(px),
                            "Written by": f"stormfold {__version__}"}]
    if isinstance(info, Mapping):
        document.update({str(k): _plain(v) for k, v in info.items() if k not in document})
    elif info is not None:
        # Render takes the pixel size of the last document naming Picasso Localize, SPINNA
        # of the first: earlier steps' such documents are renamed, so both read this one.
        documents += [{str(k): EARLIER_LOCALIZE if v == LOCALIZE else _plain(v)
                       for k, v in doc.items()} for doc in info]
    text = dump_yaml_all(documents)
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


def _extra_columns(table: pd.DataFrame, path: Path) -> list[tuple[str, str, np.dtype]]:
    """(column, field, dtype) of the fields written beyond the base ones: a linked table's
    columns under Picasso's names (:data:`LINKED_FIELDS`), the other numeric columns under
    their own."""
    extras, skipped = [], []
    linked = {c: f for c, f in LINKED_FIELDS.items()
              if c in table.columns and pd.api.types.is_integer_dtype(table[c])}
    for name in table.columns:
        if name in _MAPPED_COLUMNS:
            continue
        column = table[name]
        if name in linked:
            extras.append((str(name), linked[name], np.dtype(np.int32)))
            continue
        if name in BASE_FIELDS or name in linked.values() or not (
                pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)):
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
        extras.append((str(name), str(name), dtype))
    if skipped:
        warnings.warn(f"{shown_path(path)}: column(s) {', '.join(skipped)} not written "
                      f"(Picasso fields "
                      f"must be numeric and not clash with its own names)", UserWarning,
                      stacklevel=4)
    return extras


def _table_to_locs(table: pd.DataFrame, px: float, path: Path) -> tuple[np.ndarray, int]:
    """Picasso records of a table and the number of rows whose lpx/lpy are stand-ins."""
    extras = _extra_columns(table, path)
    present = [name for name in BASE_FIELDS[1:]
               if name in ("x", "y", "lpx", "lpy")
               or any(name in fields and _has_values(table, column)
                      for column, fields in COLUMN_FIELDS.items())]
    dtype = np.dtype([("frame", np.uint32)] + [(n, np.float32) for n in present]
                     + [(field, kind) for _, field, kind in extras])
    records = np.zeros(len(table), dtype=dtype)
    records["frame"] = table["frame"].to_numpy()
    records["x"] = table["x_nm"].to_numpy() / px - 0.5
    records["y"] = table["y_nm"].to_numpy() / px - 0.5
    if "photons" in present:
        records["photons"] = _floats(table, "photons")
    if "sx" in present:
        records["sx"] = records["sy"] = _floats(table, "sigma_nm") / px
    if "bg" in present:
        records["bg"] = _floats(table, "bg")
    combined = _floats(table, "uncertainty_nm") / px if "uncertainty_nm" in table \
        else np.full(len(table), np.nan)
    standin = np.zeros(len(table), bool)
    for column, name in AXIS_COLUMNS.items():
        lp_px = _floats(table, column) / px if column in table else np.full(len(table), np.nan)
        lp_px = np.where(np.isfinite(lp_px), lp_px, combined)
        missing = ~np.isfinite(lp_px)
        lp_px[missing] = LP_STANDIN_PX
        standin |= missing
        records[name] = lp_px
    for column, field, field_dtype in extras:
        values = table[column].to_numpy()
        if field == "len":
            values = values - table["frame"].to_numpy() + 1
        records[field] = values.astype(field_dtype)
    return records, int(standin.sum())


def picasso_drops(records: np.ndarray, width_px: int, height_px: int) -> dict[str, int]:
    """How many rows of ``records`` Picasso's loader (``lib.ensure_sanity``) drops, by
    reason (only reasons that occur): a NaN or infinite field, ``x`` or ``y`` ≤ 0
    (Picasso's pixel centres: within half a pixel of the left or top edge, or outside it),
    ``x`` ≥ Width, ``y`` ≥ Height, ``lpx``/``lpy`` ≤ 0; ``"total"`` counts each row once."""
    reasons = {}
    nonfinite = np.zeros(len(records), bool)
    for name in records.dtype.names:
        if records.dtype[name].kind == "f":
            nonfinite |= ~np.isfinite(records[name])
    reasons["a NaN or infinite value"] = nonfinite
    with np.errstate(invalid="ignore"):
        reasons["x or y ≤ 0 (within half a pixel of the left or top edge)"] = \
            (records["x"] <= 0) | (records["y"] <= 0)
        reasons[f"x ≥ Width ({width_px}) or y ≥ Height ({height_px})"] = \
            (records["x"] >= width_px) | (records["y"] >= height_px)
        reasons["lpx or lpy ≤ 0"] = (records["lpx"] <= 0) | (records["lpy"] <= 0)
    counts = {k: int(m.sum()) for k, m in reasons.items() if m.any()}
    if counts:
        counts["total"] = int(np.logical_or.reduce(list(reasons.values())).sum())
    return counts


def _has_values(table: pd.DataFrame, column: str) -> bool:
    """The table has ``column`` with at least one number (an all-NaN column is left out)."""
    return column in table.columns and bool(np.isfinite(_floats(table, column)).any())


def _floats(table: pd.DataFrame, column: str) -> np.ndarray:
    return pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=np.float64,
                                                                   na_value=np.nan)
