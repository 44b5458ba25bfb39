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

**Tables from other tools.** The reader also accepts the columns other software writes
(:func:`resolve_layout`), in any letter case:

* positions in nm: ``x [nm]``, ``x_nm``, ``x (nm)``, ``xnm`` (and the same for y);
* positions in camera pixels: ``x [px]``, ``x (px)``, ``x_px``, ``x_pix``, ``xpix``,
  converted with a pixel size as x_nm = x_px · px (ThunderSTORM's pixel units: origin at
  the pixel corner; Picasso's centre-at-integer pixels come as HDF5 instead);
* frames: ``frame`` (any case) or ``frame_ix``;
* SMAP's ``phot`` and ``locprecnm`` for photons and uncertainty.

The frame base (0 or 1) is *stated* by the caller (``frame_base``) or by the layout, else
*inferred*, conservatively (:func:`infer_frame_base`):

1. ``frame_base`` given → used.
2. ThunderSTORM layout (``frame`` with ``x [nm]``/``x [px]``, spelt exactly so) → 1-based,
   its format's definition (a frame 0 is then an error, not a guess).
3. ``frame_ix`` (an index, as DECODE names it) → 0-based.
4. Otherwise: a frame 0 in the file → 0-based (certain); the largest frame equal to the
   movie length from a ``simulation.yaml``/``run.yaml`` next to the file → 1-based (certain);
   else 1-based *as a guess*, with a :class:`FrameBaseWarning` that says how to state it.

A layout with no recognisable frame/x/y columns is refused with one line naming the
columns found and the ones expected.
"""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stormfold.errors import UserError
from stormfold.io.atomic import atomic_path
from stormfold.io.metadata import check_pixel_size, geometry_near
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
#: Extra headers the reader accepts for a canonical column (SMAP: phot, locprecnm).
READ_ALIASES = {"uncertainty_xy [nm]": "uncertainty_nm", "phot": "photons",
                "locprecnm": "uncertainty_nm"}
#: Position headers by unit, as templates for the axis letter (compared in lower case, after
#: :func:`_normalise_header`).
POSITION_ALIASES = {
    "nm": ("{a} [nm]", "{a}_nm", "{a}nm"),
    "px": ("{a} [px]", "{a}_px", "{a}_pix", "{a}pix"),
}
#: Frame headers (lower case) → the base they state (None: the base must be stated or inferred).
FRAME_ALIASES = {"frame": None, "frame_ix": 0}
#: Headers of the ThunderSTORM layout, whose frames are 1-based by the format's definition.
THUNDERSTORM_POSITIONS = ("x [nm]", "x [px]")
#: Units that sanitise reversibly: "name [unit]" ↔ name_<code>.
UNIT_CODES = {"nm": "nm", "px": "px", "photon": "photon", "a.u.": "au", "deg": "deg",
              "rad": "rad", "s": "s", "ms": "ms", "um": "um", "µm": "µm", "%": "pct"}

_HEADER_TO_COLUMN = dict(CANONICAL)
_COLUMN_TO_HEADER = {column: header for header, column in CANONICAL}
_CODE_TO_UNIT = {code: unit for unit, code in UNIT_CODES.items()}
_FLOAT_COLUMNS = ("x_nm", "y_nm", "sigma_nm", "photons", "bg", "uncertainty_nm", "confidence")
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
class FrameBaseWarning(UserWarning):
    """The frame base (0 or 1) of a table was guessed, not stated or certain."""


@dataclass(frozen=True)
class Layout:
    """Which columns of a table file hold the frame and the position, and in what units.

    Attributes
    ----------
    frame, x, y : str
        Headers as they appear in the file.
    unit : {"nm", "px"}
        Unit of the position columns.
    frame_base : int or None
        Base stated by the layout (ThunderSTORM: 1, ``frame_ix``: 0), None when not stated.
    """

    frame: str
    x: str
    y: str
    unit: str
    frame_base: int | None


def _normalise_header(header: str) -> str:
    """Lower case, single spaces, ``(unit)`` and ``[unit]`` alike, a space before a bracket."""
    text = " ".join(str(header).strip().lower().split())
    text = text.replace("(", "[").replace(")", "]")
    return re.sub(r"\s*\[\s*(.*?)\s*\]", r" [\1]", text)


def _find_position(by_norm: dict[str, str], axis: str) -> tuple[str, str] | None:
    for unit, templates in POSITION_ALIASES.items():
        for template in templates:
            header = by_norm.get(template.format(a=axis))
            if header is not None:
                return header, unit
    return None


def resolve_layout(headers, source: str = "table") -> Layout:
    """Recognise the frame and x/y columns of a table file (see the module docstring).

    Parameters
    ----------
    headers : sequence of str
        Column headers as read from the file.
    source : str
        File name for error messages.

    Raises
    ------
    UserError
        No frame or x/y column recognised (one line naming the columns found and the
        ones expected), or x and y in different units.
    """
    headers = [str(h).strip() for h in headers]
    by_norm: dict[str, str] = {}
    for header in headers:
        by_norm.setdefault(_normalise_header(header), header)
    frame = next((by_norm[name] for name in FRAME_ALIASES if name in by_norm), None)
    x, y = _find_position(by_norm, "x"), _find_position(by_norm, "y")
    if frame is None or x is None or y is None:
        missing = [name for name, value in (("frame", frame), ("x", x), ("y", y)) if value is None]
        found = ", ".join(f'"{h}"' for h in headers) or "none"
        raise UserError(f"{source}: unknown table layout (no {'/'.join(missing)} column): found "
                        f"{found}; expected a frame column (\"frame\", \"Frame\" or "
                        f"\"frame_ix\") and x/y positions in nm (\"x [nm]\", \"x_nm\", "
                        f"\"x (nm)\", \"xnm\") or in pixels with a pixel size (\"x [px]\", "
                        f"\"x_pix\")")
    if x[1] != y[1]:
        raise UserError(f"{source}: x and y are in different units (\"{x[0]}\", \"{y[0]}\")")
    # Only ThunderSTORM's own spelling states the base; look-alikes are other tools' tables.
    if frame == "frame" and x[0] in THUNDERSTORM_POSITIONS:
        base = 1
    else:
        base = FRAME_ALIASES[_normalise_header(frame)]
    return Layout(frame, x[0], y[0], x[1], base)


def infer_frame_base(frames: np.ndarray, n_frames: int | None = None,
                     source: str = "table") -> int:
    """The base (0 or 1) of frame numbers whose file does not state it.

    A frame 0 means 0-based; a largest frame equal to ``n_frames`` (the movie length)
    means 1-based. Otherwise the answer is 1 as a guess (most tools that write their own
    CSV count from 1; a 0-based table with an empty first frame is the rare case), and a
    :class:`FrameBaseWarning` says so.
    """
    if not len(frames):
        return 1
    if int(np.min(frames)) == 0:
        return 0
    if n_frames is not None and int(np.max(frames)) == int(n_frames):
        return 1
    warnings.warn(f"{source}: frame base not stated; frames start at {int(np.min(frames))}, "
                  f"so they are read as 1-based (a guess). State it with `stormfold convert "
                  f"IN OUT --frame-base 0|1` (API: frame_base=0|1)", FrameBaseWarning,
                  stacklevel=3)
    return 1


def read_thunderstorm_csv(path: str | Path, pixel_size_nm: float | None = None,
                          frame_base: int | None = None) -> pd.DataFrame:
    """Read a ThunderSTORM CSV file (or another tool's CSV table) into a localization table.

    Parameters
    ----------
    path : str or Path
        CSV file with a frame column and x/y positions (aliases in the module docstring).
    pixel_size_nm : float, optional
        Camera pixel size (nm) for positions in pixels; default: the ``pixel_size_nm`` of a
        ``simulation.yaml``/``run.yaml`` next to the file. Ignored for positions in nm.
    frame_base : {0, 1}, optional
        First frame number of the file; default: stated by the layout or inferred
        (module docstring).

    Returns
    -------
    pandas.DataFrame
        Localization table: ``frame`` 0-based int64, positions and other known
        quantities float64 (nm, photons), extra columns under sanitised names.

    Raises
    ------
    UserError
        Missing or unreadable file, unknown layout, positions in pixels without a pixel
        size, non-numeric values, frame numbers below the base.
    """
    path = Path(path)
    if frame_base is not None and frame_base not in (0, 1):
        raise UserError(f"frame base must be 0 or 1, got {frame_base}")
    raw = _read_csv(path)
    raw.columns = [str(c).strip() for c in raw.columns]
    layout = resolve_layout(raw.columns, str(path))
    positions = {layout.frame: "frame", layout.x: "x_nm", layout.y: "y_nm"}
    columns: dict[str, str] = {}
    for header in raw.columns:
        name = positions.get(header) or header_to_column(header)
        used = set(columns.values()) | (set(positions.values()) if header not in positions else set())
        # Keep the header verbatim when its sanitised name is already taken (numbered if
        # that is taken too, e.g. a second x column in nm).
        for candidate in (name, header, *(f"{header}_{i}" for i in range(1, len(raw.columns) + 1))):
            if candidate not in used:
                columns[header] = candidate
                break
    table = raw.rename(columns=columns)
    for name in [c for c in _FLOAT_COLUMNS + ("frame", "id", "detections", "cluster")
                 if c in table.columns]:
        table[name] = _numeric(table[name], path, _header_of(columns, name))
    for name in _FLOAT_COLUMNS:
        if name in table.columns:
            table[name] = table[name].astype(np.float64)
    if layout.unit == "px":
        px = _pixel_size_for(path, layout, pixel_size_nm)
        table["x_nm"] = table["x_nm"] * px
        table["y_nm"] = table["y_nm"] * px
    base = frame_base if frame_base is not None else layout.frame_base
    if base is None:
        base = infer_frame_base(table["frame"].to_numpy(), geometry_near(path).get("n_frames"),
                                str(path))
    if len(table) and (table["frame"] < base).any():
        rule = "ThunderSTORM frames are 1-based" if layout.frame_base == 1 else \
            f"frame base {base}"
        raise UserError(f"{path}: frame numbers must be >= {base} ({rule}), found "
                        f"{table['frame'].min():g}")
    table["frame"] = table["frame"] - base
    if "last_frame" in table.columns:  # written by linking; same base as frame in the file
        table["last_frame"] = _numeric(table["last_frame"], path, "last_frame") - base
    table = validate_table(table, source=str(path), names={v: k for k, v in columns.items()})
    # The numbering the user reads in the file: a filter expression over frames uses it.
    table.attrs["frame_base"] = int(base)
    return table


def _pixel_size_for(path: Path, layout: Layout, pixel_size_nm: float | None) -> float:
    if pixel_size_nm is not None:
        return check_pixel_size(pixel_size_nm, str(path))
    found = geometry_near(path).get("pixel_size_nm")
    if found is None:
        raise UserError(f"{path}: columns \"{layout.x}\", \"{layout.y}\" are in pixels and the "
                        f"pixel size is unknown: pass --pixel-size NM")
    return found


_CSV_BLOCK_ROWS = 200_000


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"localization file not found: {path}")
    try:
        # In blocks of rows: the parser's working memory is then bounded by the block, not
        # the file, which halves the peak when a long run's table is read back.
        blocks = list(pd.read_csv(path, sep=",", chunksize=_CSV_BLOCK_ROWS))
        # pandas renames a repeated header ("x [nm]" twice → "x [nm].1"): the raw header
        # tells which of two columns the user meant, and neither may pass silently.
        header = pd.read_csv(path, sep=",", header=None, nrows=1, dtype=str).iloc[0]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError,
            ValueError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable CSV file ({detail})") from None
    names = [str(name).strip() for name in header if isinstance(name, str) and name.strip()]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"{path}: the header repeats the column(s) "
                        f"{', '.join(repr(n) for n in repeated)}: each column must be named once")
    if len(blocks) == 1:
        return blocks[0]
    return pd.concat(blocks, ignore_index=True)


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
