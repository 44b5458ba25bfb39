"""What movie and localization files say about themselves: pixel sizes and sidecars.

The one place that reads a camera pixel size out of file metadata (TIFF resolution tags,
ImageJ and OME units, Picasso YAML sidecars) and checks a pixel size given by the user;
:mod:`stormfold.io.movie`, :mod:`stormfold.io.picasso`, :mod:`stormfold.io.tiff` and
:mod:`stormfold.io.tables` import these from here, never from each other.
"""
from __future__ import annotations

import math
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from stormfold.config import Loader, read_yaml_text
from stormfold.errors import UserError

if TYPE_CHECKING:
    import tifffile

#: Pixel sizes above this (nm) are taken as placeholder DPI values, not a calibration:
#: 72 dpi gives 352,778 nm, far beyond any microscope camera pixel in sample space.
MAX_PLAUSIBLE_PIXEL_NM = 1e5
#: Camera pixel sizes in the sample plane (nm) accepted for a movie: a 6.5 µm sCMOS pixel
#: behind a 150× objective is 43 nm, a 24 µm EMCCD pixel behind 20× is 1200 nm; values
#: outside this range are a unit mistake (µm for nm, a DPI tag, a rendered image).
CAMERA_PIXEL_RANGE_NM = (10.0, 2000.0)

# Nanometres per length unit as written by ImageJ, OME and TIFF writers. ImageJ writes
# the micro sign escaped as the six characters "\u00B5"; those are normalised first.
_UNIT_NM = {
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "nanometers": 1.0, "nanometres": 1.0,
    "µm": 1e3, "um": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3,
    "micrometre": 1e3, "micrometers": 1e3, "micrometres": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
    "å": 0.1, "angstrom": 0.1,
    "inch": 2.54e7, "in": 2.54e7,
}
# TIFF ResolutionUnit codes (4 and 5 are tifffile extensions); 1 (none) carries no length.
_RESUNIT_NM = {2: 2.54e7, 3: 1e7, 4: 1e6, 5: 1e3}


def check_pixel_size(value: Any, source: str = "pixel size") -> float:
    """Return ``value`` as a positive finite float (nm) or raise :class:`UserError`."""
    try:
        px = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: pixel size must be a number of nm, got {value!r}") from None
    if not (math.isfinite(px) and px > 0):
        raise UserError(f"{source}: pixel size must be positive, got {value!r}")
    return px


def check_camera_pixel_size(value: Any, source: str = "pixel size") -> float:
    """Return ``value`` as a camera pixel size (nm) within :data:`CAMERA_PIXEL_RANGE_NM`.

    Raises
    ------
    UserError
        Not a number, not finite, or outside 10–2000 nm (naming the value and the range).
    """
    px = check_pixel_size(value, source)
    low, high = CAMERA_PIXEL_RANGE_NM
    if not low <= px <= high:
        raise UserError(f"{source}: camera pixel size {px:g} nm is outside {low:g}–{high:g} nm "
                        f"(the pixel size in the sample plane, in nm: e.g. 100)")
    return px


def unit_to_nm(unit: str | None) -> float | None:
    """Nanometres per ``unit`` (ImageJ/OME spelling), or ``None`` for no or unknown unit."""
    if unit is None:
        return None
    text = str(unit).strip()
    text = re.sub(r"\\u00b5", "µ", text, flags=re.IGNORECASE).replace("\u03bc", "µ")
    return _UNIT_NM.get(text.lower())


def plausible_pixel_size(px: float | None, what: str) -> tuple[float | None, str | None]:
    """A camera pixel size (nm) read from a file, and a note when it is not one.

    ``(px, None)`` for a value within :data:`CAMERA_PIXEL_RANGE_NM`; ``(None, note)`` for a
    placeholder DPI or a value outside that range (``what`` names the source in the note);
    ``(None, None)`` for no value at all.
    """
    if px is None or not math.isfinite(px) or px <= 0:
        return None, None
    if px > MAX_PLAUSIBLE_PIXEL_NM:
        return None, f"{what} gives {px:.6g} nm per pixel (a placeholder DPI, not a calibration)"
    low, high = CAMERA_PIXEL_RANGE_NM
    if not low <= px <= high:
        return None, (f"{what} gives {px:.6g} nm per pixel, outside the {low:g}–{high:g} nm "
                      f"of camera pixels")
    return px, None


# --------------------------------------------------------------------------- TIFF tags
def tiff_pixel_size(tif: tifffile.TiffFile) -> tuple[float | None, str | None]:
    """Pixel size (nm) of an open TIFF and, when unknown, a note saying why.

    Order: OME ``PhysicalSizeX``; ImageJ ``unit`` with X/YResolution; ResolutionUnit
    inch/cm with X/YResolution. Resolution unit "none" without an ImageJ unit is unknown.
    """
    if tif.is_ome:
        px = _ome_pixel_size(tif.ome_metadata)
        if px is not None:
            return plausible_pixel_size(px, "OME PhysicalSizeX")
    page = tif.pages[0]
    xres, yres = (float(v) for v in page.resolution)
    unit = (tif.imagej_metadata or {}).get("unit")
    scale = unit_to_nm(unit)
    what = f"ImageJ unit {unit!r}"
    if scale is None:
        scale = _RESUNIT_NM.get(int(page.resolutionunit))
        what = f"ResolutionUnit {int(page.resolutionunit)}"
    if scale is None or xres <= 0 or yres <= 0:
        return None, "no length unit in the TIFF resolution tags"
    px_x, px_y = scale / xres, scale / yres
    if not math.isclose(px_x, px_y, rel_tol=1e-6):
        return None, f"non-square pixels {px_x:.6g} x {px_y:.6g} nm"
    return plausible_pixel_size(px_x, what)


def ome_pixels(xml: str | None) -> dict | None:
    """Attributes of the first OME ``Pixels`` element (the first image), or None."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            return dict(element.attrib)
    return None


def _ome_pixel_size(xml: str | None) -> float | None:
    pixels = ome_pixels(xml)
    if pixels is None or "PhysicalSizeX" not in pixels:
        return None
    scale = unit_to_nm(pixels.get("PhysicalSizeXUnit", "µm"))
    try:
        value = float(pixels["PhysicalSizeX"])
    except ValueError:
        return None
    return None if scale is None else value * scale


# --------------------------------------------------------------------------- Picasso YAML sidecars
# Keys holding the camera pixel size (nm) in Picasso's documents, in order of preference.
_PIXEL_KEYS = ("Pixelsize", "Camera.Pixelsize")


class _LenientLoader(Loader):
    """stormfold's YAML loader that turns unknown tags (e.g. ``!!python/object`` from numpy
    values in files written by Picasso) into ``None`` instead of failing; never runs code."""


_LenientLoader.add_multi_constructor("", lambda loader, suffix, node: None)


def sidecar_path(path: str | Path) -> Path:
    """The YAML sidecar of a Picasso file: same folder, same stem, ``.yaml``."""
    return Path(path).with_suffix(".yaml")


def load_yaml_documents(path: str | Path) -> list[dict]:
    """All mapping documents of a multi-document YAML file (other documents skipped).

    Raises
    ------
    UserError
        When the file cannot be read or parsed.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            documents = list(yaml.load_all(fh, Loader=_LenientLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: cannot read YAML ({detail})") from None
    return [doc for doc in documents if isinstance(doc, dict)]


def _pixel_candidates(documents: Sequence[Mapping]) -> list[float]:
    found = []
    for doc in documents:
        camera = doc.get("Camera")
        nested = camera.get("Pixelsize") if isinstance(camera, Mapping) else None
        for value in [doc.get(key) for key in _PIXEL_KEYS] + [nested]:
            try:
                px = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(px) and px > 0:
                found.append(px)
                break  # one value per document: Pixelsize before Camera.Pixelsize
    return found


def missing_pixel_size(documents: Sequence[Mapping], sidecar_name: str) -> str:
    """Why Picasso YAML documents give no pixel size: none is there, or the one there is
    not a size (``Pixelsize: 0``, ``abc``), which the user must fix rather than add."""
    for doc in documents:
        camera = doc.get("Camera")
        nested = camera.get("Pixelsize") if isinstance(camera, Mapping) else None
        for key, value in [(key, doc.get(key)) for key in _PIXEL_KEYS] + [("Camera.Pixelsize",
                                                                          nested)]:
            if value is not None:
                return (f"{key} {value!r} in {sidecar_name} is invalid: a pixel size is a "
                        f"number of nm > 0")
    return f"no Pixelsize in {sidecar_name}"


def pixel_size_from_documents(documents: Sequence[Mapping],
                              source: str | Path = "") -> float | None:
    """Camera pixel size (nm) from Picasso YAML documents, or ``None``.

    The first document that has ``Pixelsize`` (or ``Camera.Pixelsize``) wins: it
    describes the acquisition (or the movie simulated), while later documents are
    processing steps whose ``Pixelsize`` may be a GUI default (Picasso Localize's 130 nm
    next to a 160 nm simulation in Picasso's own test data). Disagreeing documents
    raise a warning naming both values.
    """
    found = _pixel_candidates(documents)
    if not found:
        return None
    if any(not math.isclose(v, found[0]) for v in found[1:]):
        others = ", ".join(f"{v:g}" for v in found[1:])
        # Picasso Render reads it from a document with a value "Picasso Localize".
        render = [d.get("Pixelsize") for d in documents if isinstance(d, Mapping)
                  and "Picasso Localize" in [str(v) for v in d.values()]]
        picasso = f"; Picasso Render would use {render[-1]} nm" if render else ""
        warnings.warn(f"{source}: YAML documents give different pixel sizes ({found[0]:g} "
                      f"and {others} nm); using {found[0]:g} nm from the first one "
                      f"(pass --pixel-size to choose){picasso}", UserWarning, stacklevel=3)
    return found[0]


# --------------------------------------------------------------------------- next to a table
#: Files next to a localization CSV that may describe its camera geometry, in order
#: (written by ``stormfold simulate``, ``localize`` and ``run``).
GEOMETRY_FILES = ("simulation.yaml", "run.yaml")
#: The record of ``stormfold localize`` / ``run`` next to the tables they write.
RUN_RECORD = "run.yaml"
_GEOMETRY_KEYS = ("pixel_size_nm", "n_rows", "n_cols", "frame_shape", "shape", "frames",
                  "n_frames")


def load_yaml_mapping(path: str | Path, strict: bool = False) -> Mapping | None:
    """The YAML mapping in ``path``; None when absent or not a mapping. A file that cannot be
    read raises :class:`UserError` when ``strict``, else counts as absent."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        document = read_yaml_text(path)
    except UserError:
        if strict:
            raise
        return None
    return document if isinstance(document, Mapping) else None


def _recorded(document: Mapping, keys: tuple[str, ...]) -> dict:
    """The non-null ``keys`` of the ``movie`` section, then of the top level: the movie as it
    was read (``run.yaml`` of ``stormfold run``) or described (``simulation.yaml``, ``run.yaml``
    of ``localize``) — never the user's settings in ``config`` (``null`` there means "from the
    movie") nor the pixel size a model was trained for."""
    found: dict = {}
    for section in (document.get("movie"), document):
        if not isinstance(section, Mapping):
            continue
        for key in keys:
            if key not in found and section.get(key) is not None:
                found[key] = section[key]
    return found


def _frame_range(value: Any) -> tuple[int, int] | None:
    if isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value) \
            and 0 <= value[0] < value[1]:
        return int(value[0]), int(value[1])
    return None


def frames_near(path: str | Path) -> tuple[int, int, Path] | None:
    """The frames ``[first, stop)`` (0-based) a table covers, as the ``run.yaml`` next to it
    records them (``stormfold localize --frames``, ``run`` with ``frames``), and that file;
    None when no run.yaml records them."""
    record = Path(path).parent / RUN_RECORD
    document = load_yaml_mapping(record)
    if document is None:
        return None
    frames = _frame_range(_recorded(document, ("frames",)).get("frames"))
    return None if frames is None else (*frames, record)


def geometry_near(path: str | Path, pixel_size_nm: float | None = None) -> dict:
    """Camera geometry from a ``simulation.yaml`` / ``run.yaml`` next to ``path``.

    These keys are read, first from the document's ``movie`` section (the movie as it was
    read, in the ``run.yaml`` of ``stormfold run``, whose ``config`` section holds the user's
    settings), then from its top level (``simulation.yaml``, the ``run.yaml`` of ``localize``);
    a ``null`` counts as absent: ``pixel_size_nm`` (camera pixel size, nm); ``n_rows`` and
    ``n_cols``, or ``frame_shape`` (``[rows, cols]``), or ``shape`` (``[rows, cols]`` or
    ``[frames, rows, cols]``) — image size in pixels; ``frames`` (``[first, stop)``: the
    movie is at least ``stop`` frames long) or else ``n_frames`` — movie length.

    Parameters
    ----------
    path : str or Path
        The table.
    pixel_size_nm : float, optional
        A pixel size given by the user: it wins over the files, and a file whose own pixel
        size is unreadable is then passed over instead of refused.

    Returns
    -------
    dict
        Any of ``pixel_size_nm``, ``height_px``, ``width_px``, ``n_frames`` and
        ``source`` (the YAML file) found in the first of :data:`GEOMETRY_FILES` that
        holds a pixel size; empty when none does.
    """
    folder = Path(path).parent
    for name in GEOMETRY_FILES:
        candidate = folder / name
        document = load_yaml_mapping(candidate, strict=pixel_size_nm is None)
        if document is None:
            continue
        found = _recorded(document, _GEOMETRY_KEYS)
        if "pixel_size_nm" not in found:
            continue
        try:
            return _geometry(found, candidate)
        except UserError:
            if pixel_size_nm is None:
                raise
    return {}


def recorded_geometry(path: str | Path) -> dict:
    """The geometry one record (``simulation.yaml``, ``run.yaml``) states, as
    :func:`geometry_near` reads it, plus ``movie_frames``: the movie's whole length when the
    record states it (a simulation's ``n_frames``, the ``movie`` section of ``stormfold
    run``'s), where ``n_frames`` may only be the end of the frames localized. Empty when the
    file is absent, unreadable or holds no pixel size."""
    path = Path(path)
    document = load_yaml_mapping(path)
    if document is None:
        return {}
    found = _recorded(document, _GEOMETRY_KEYS)
    if "pixel_size_nm" not in found:
        return {}
    try:
        geometry = _geometry(found, path)
    except UserError:
        return {}
    movie = document.get("movie")
    length = movie.get("n_frames") if isinstance(movie, Mapping) else (
        None if "frames" in document else document.get("n_frames"))
    if isinstance(length, int) and not isinstance(length, bool) and length > 0:
        geometry["movie_frames"] = length
    return geometry


def _geometry(found: dict, source: Path) -> dict:
    geometry: dict[str, Any] = {"pixel_size_nm": check_pixel_size(found["pixel_size_nm"],
                                                                   str(source)),
                                "source": source}
    rows, cols = found.get("n_rows"), found.get("n_cols")
    shape = found.get("frame_shape", found.get("shape"))
    if (rows is None or cols is None) and isinstance(shape, list) and len(shape) in (2, 3):
        rows, cols = shape[-2], shape[-1]
    frames = _frame_range(found.get("frames"))
    n_frames = frames[1] if frames is not None else found.get("n_frames")
    sizes = (("height_px", rows), ("width_px", cols), ("n_frames", n_frames))
    for key, value in sizes:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            geometry[key] = value
    return geometry
