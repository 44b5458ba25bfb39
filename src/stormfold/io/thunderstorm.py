"""ThunderSTORM CSV localization tables (SPEC §1).

File format: quoted header, comma separated, one row per localization, 1-based ``id``
and ``frame``, positions in nm with the origin at the top-left corner of the image::

    "id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","offset [photon]",
    "bkgstd [photon]","uncertainty [nm]"  (+ "confidence [a.u.]", "detections", "cluster", ...)

Column names in memory: ``frame`` (0-based), ``x_nm``, ``y_nm``, ``sigma_nm``,
``photons`` (intensity), ``bg`` (offset), ``uncertainty_nm`` (also read from
``uncertainty_xy [nm]``), ``confidence``, ``id``, ``detections``, ``cluster``.

Other columns are kept under a sanitised name that maps back to the header:
``"name [unit]"`` ↔ ``name_unit`` for an identifier ``name`` and a unit in
:data:`UNIT_CODES` (``"bkgstd [photon]"`` ↔ ``bkgstd_photon``, ``"z [nm]"`` ↔ ``z_nm``,
``"foo [a.u.]"`` ↔ ``foo_au``); any other header is kept verbatim. A read → write →
read round trip therefore gives the same table.

Floats are written with Python's shortest round-trip representation, so float64 values
read back bit for bit.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from stormfold.errors import UserError
from stormfold.io.atomic import atomic_path
from stormfold.table import validate_table

#: (file header, table column) pairs in the canonical file order.
CANONICAL = (
    ("id", "id"),
    ("frame", "frame"),
    ("x [nm]", "x_nm"),
    ("y [nm]", "y_nm"),
    ("sigma [nm]", "sigma_nm"),
    ("intensity [photon]", "photons"),
    ("offset [photon]", "bg"),
    ("bkgstd [photon]", "bkgstd_photon"),
    ("uncertainty [nm]", "uncertainty_nm"),
    ("confidence [a.u.]", "confidence"),
    ("detections", "detections"),
    ("cluster", "cluster"),
)
#: Extra headers the reader accepts for a canonical column.
READ_ALIASES = {"uncertainty_xy [nm]": "uncertainty_nm"}
#: Units that sanitise reversibly: "name [unit]" ↔ name_<code>.
UNIT_CODES = {"nm": "nm", "px": "px", "photon": "photon", "a.u.": "au", "deg": "deg",
              "rad": "rad", "s": "s", "ms": "ms", "um": "um", "µm": "µm", "%": "pct"}

_HEADER_TO_COLUMN = dict(CANONICAL)
_COLUMN_TO_HEADER = {column: header for header, column in CANONICAL}
_CODE_TO_UNIT = {code: unit for unit, code in UNIT_CODES.items()}
_FLOAT_COLUMNS = ("x_nm", "y_nm", "sigma_nm", "photons", "bg", "uncertainty_nm", "confidence")
_REQUIRED_HEADERS = ("frame", "x [nm]", "y [nm]")
_BRACKETED = re.compile(r"(\w+) \[(.+)\]")
_SANITISED = re.compile(r"(\w+)_(" + "|".join(re.escape(c) for c in _CODE_TO_UNIT) + r")")


def header_to_column(header: str) -> str:
    """Table column name for a ThunderSTORM header (see the module docstring)."""
    if header in _HEADER_TO_COLUMN:
        return _HEADER_TO_COLUMN[header]
    if header in READ_ALIASES:
        return READ_ALIASES[header]
    match = _BRACKETED.fullmatch(header)
    if match and match.group(2) in UNIT_CODES:
        return f"{match.group(1)}_{UNIT_CODES[match.group(2)]}"
    return header


def column_to_header(column: str) -> str:
    """ThunderSTORM header for a table column (inverse of :func:`header_to_column`)."""
    if column in _COLUMN_TO_HEADER:
        return _COLUMN_TO_HEADER[column]
    match = _SANITISED.fullmatch(column)
    if match:
        return f"{match.group(1)} [{_CODE_TO_UNIT[match.group(2)]}]"
    return column


# --------------------------------------------------------------------------- reading
def read_thunderstorm_csv(path: str | Path) -> pd.DataFrame:
    """Read a ThunderSTORM CSV file into a localization table.

    Parameters
    ----------
    path : str or Path
        CSV file with at least ``frame``, ``x [nm]``, ``y [nm]`` columns.

    Returns
    -------
    pandas.DataFrame
        Localization table: ``frame`` 0-based int64, positions and other known
        quantities float64 (nm, photons), extra columns under sanitised names.

    Raises
    ------
    UserError
        Missing or unreadable file, a missing frame/x/y column, positions in units
        other than nm, non-numeric values, frame numbers below 1.
    """
    path = Path(path)
    raw = _read_csv(path)
    raw.columns = [str(c).strip() for c in raw.columns]
    for header in _REQUIRED_HEADERS:
        if header not in raw.columns:
            raise UserError(_missing_message(path, header, raw.columns))
    columns: dict[str, str] = {}
    for header in raw.columns:
        name = header_to_column(header)
        # Keep the header verbatim when its sanitised name is already taken.
        columns[header] = header if name in columns.values() else name
    table = raw.rename(columns=columns)
    for name in [c for c in _FLOAT_COLUMNS + ("frame", "id", "detections", "cluster")
                 if c in table.columns]:
        table[name] = _numeric(table[name], path, _header_of(columns, name))
    for name in _FLOAT_COLUMNS:
        if name in table.columns:
            table[name] = table[name].astype(np.float64)
    if len(table) and (table["frame"] < 1).any():
        raise UserError(f"{path}: frame numbers must be >= 1 (ThunderSTORM frames are "
                        f"1-based), found {table['frame'].min():g}")
    table["frame"] = table["frame"] - 1
    return validate_table(table, source=str(path))


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"localization file not found: {path}")
    try:
        return pd.read_csv(path, sep=",")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable CSV file ({detail})") from None


def _missing_message(path: Path, header: str, present) -> str:
    axis = header.split(" ")[0]
    other_units = [c for c in present if c.startswith(f"{axis} [")]
    if header != "frame" and other_units:
        return (f"{path}: column \"{other_units[0]}\" is not in nm; export the table from "
                f"ThunderSTORM with nm units (column \"{header}\")")
    return (f"{path}: missing column \"{header}\" (a ThunderSTORM CSV needs "
            f"\"frame\", \"x [nm]\", \"y [nm]\")")


def _header_of(columns: dict[str, str], name: str) -> str:
    return next((h for h, c in columns.items() if c == name), name)


def _numeric(series: pd.Series, path: Path, header: str) -> pd.Series:
    try:
        return pd.to_numeric(series, errors="raise")
    except (ValueError, TypeError):
        raise UserError(f"{path}: column \"{header}\" holds non-numeric values") from None


# --------------------------------------------------------------------------- writing
def write_thunderstorm_csv(path: str | Path, table: pd.DataFrame) -> Path:
    """Write a localization table as ThunderSTORM CSV (atomically).

    Parameters
    ----------
    path : str or Path
        Output file.
    table : pandas.DataFrame
        Localization table (nm, 0-based frames). Only the columns it has are
        written: canonical columns first in ThunderSTORM's order, then the others in
        table order. ``id`` is 1..N when the table has none; frames are written 1-based.
    """
    path = Path(path)
    table = validate_table(table)
    out = table.copy()
    out["frame"] = out["frame"] + 1
    if "id" not in out.columns:
        out["id"] = np.arange(1, len(out) + 1, dtype=np.int64)
    canonical = [column for _, column in CANONICAL if column in out.columns]
    order = canonical + [c for c in out.columns if c not in canonical]
    out = out[order]
    headers = [column_to_header(str(c)) for c in order]
    if len(set(headers)) != len(headers):
        raise ValueError(f"columns {order} give duplicate ThunderSTORM headers {headers}")
    header_line = ",".join('"' + h.replace('"', '""') + '"' for h in headers)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(header_line + "\n")
            out.to_csv(fh, header=False, index=False, lineterminator="\n")
    return path
