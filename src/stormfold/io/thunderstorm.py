"""ThunderSTORM CSV localization tables (SPEC §1).

File format: quoted header, comma separated, one row per localization, 1-based ``id``
and ``frame``, positions in nm with the origin at the top-left corner of the image::

    "id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]","offset [photon]",
    "bkgstd [photon]","uncertainty [nm]"  (+ "confidence [a.u.]", "detections", "cluster", ...)

Column names in memory: ``frame`` (0-based; so is ``last_frame``, the last frame of a
linked molecule, 1-based in the file like ``frame``), ``x_nm``, ``y_nm``, ``sigma_nm``,
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

import os
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
    if "last_frame" in table.columns:  # written by linking; 1-based in the file like frame
        table["last_frame"] = _numeric(table["last_frame"], path, "last_frame") - 1
    return validate_table(table, source=str(path))


_CSV_BLOCK_ROWS = 200_000


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"localization file not found: {path}")
    try:
        # In blocks of rows: the parser's working memory is then bounded by the block, not
        # the file, which halves the peak when a long run's table is read back.
        blocks = list(pd.read_csv(path, sep=",", chunksize=_CSV_BLOCK_ROWS))
        if len(blocks) == 1:
            return blocks[0]
        return pd.concat(blocks, ignore_index=True)
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
def _file_rows(table: pd.DataFrame, first_id: int) -> pd.DataFrame:
    """Table → file rows: 1-based frames, ids from ``first_id`` when absent, canonical order."""
    out = validate_table(table)
    out["frame"] = out["frame"] + 1
    if "last_frame" in out.columns:
        out["last_frame"] = out["last_frame"] + 1
    if "id" not in out.columns:
        out["id"] = np.arange(first_id, first_id + len(out), dtype=np.int64)
    canonical = [column for _, column in CANONICAL if column in out.columns]
    return out[canonical + [c for c in out.columns if c not in canonical]]


def _header_line(columns) -> str:
    headers = [column_to_header(str(c)) for c in columns]
    if len(set(headers)) != len(headers):
        raise ValueError(f"columns {list(columns)} give duplicate ThunderSTORM headers {headers}")
    return ",".join('"' + h.replace('"', '""') + '"' for h in headers) + "\n"


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
    out = _file_rows(table, 1)
    header = _header_line(out.columns)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(header)
            out.to_csv(fh, header=False, index=False, lineterminator="\n")
    return path


class ThunderstormCsvWriter:
    """Append localization tables chunk by chunk to one ThunderSTORM CSV.

    Rows go to ``partial_path`` (default: a hidden temporary name next to ``path``) as
    they come, flushed after each chunk, so a crash loses at most the chunk in flight;
    :meth:`close` renames the file onto ``path``. The columns are fixed by the first
    chunk (or by ``columns``); later chunks are reindexed to them. Ids run 1..N across
    chunks when the tables have none.

    Parameters
    ----------
    path : str or Path
        Final file.
    columns : list of str, optional
        Table columns to write, in table naming (``frame``, ``x_nm``, ...).
    partial_path : str or Path, optional
        Where rows accumulate until :meth:`close`. When it exists and ``resume`` is true,
        rows are appended after the ones already there.
    resume : bool
        Continue an existing ``partial_path`` instead of starting a new file.
    """

    def __init__(self, path: str | Path, columns: list[str] | None = None,
                 partial_path: str | Path | None = None, resume: bool = False):
        self.path = Path(path)
        self.partial_path = Path(partial_path) if partial_path is not None else \
            self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.columns = list(columns) if columns is not None else None
        self.n_rows = 0
        self._fh = None
        if resume and self.partial_path.is_file():
            existing = read_thunderstorm_csv(self.partial_path)
            self.n_rows = len(existing)
            self.columns = self.columns or list(_file_rows(existing, 1).columns)
            self._fh = open(self.partial_path, "a", encoding="utf-8", newline="")

    def append(self, table: pd.DataFrame) -> None:
        """Write the rows of ``table`` (0-based frames, nm) and flush them to disk."""
        out = _file_rows(table, self.n_rows + 1)
        if self.columns is None:
            self.columns = list(out.columns)
        else:
            out = out.reindex(columns=[c for c in self.columns])
        if self._fh is None:
            self.partial_path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.partial_path, "w", encoding="utf-8", newline="")
            self._fh.write(_header_line(self.columns))
        out.to_csv(self._fh, header=False, index=False, lineterminator="\n")
        self._fh.flush()
        self.n_rows += len(out)

    def close(self) -> Path:
        """Finish the file and rename it onto :attr:`path` (an empty table when nothing came)."""
        if self._fh is None:
            self.append(pd.DataFrame({c: [] for c in (self.columns or ["frame", "x_nm", "y_nm"])}))
        self._fh.close()
        self._fh = None
        os.replace(self.partial_path, self.path)
        return self.path

    def abort(self) -> None:
        """Close without publishing; the partial file stays for a later resume."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "ThunderstormCsvWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
