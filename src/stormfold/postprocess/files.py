"""Files of the post-processing commands: the input table with its camera geometry, the
output tables, and the YAML record of what a step did.

* **Input**: ThunderSTORM CSV or Picasso HDF5 (by extension). The camera geometry
  (pixel size, image size, movie length) comes from the Picasso sidecar, else from a
  ``simulation.yaml`` / ``run.yaml`` next to a CSV (:func:`stormfold.io.tables.geometry_near`;
  ``frame_shape`` of a ``run.yaml`` gives the image size), else from options.
* **Outputs** never replace a file the input was read with: the table, its Picasso sidecar,
  the ``simulation.yaml`` / ``run.yaml`` next to a CSV (:func:`check_outputs`).
* **Record**: a YAML document with the step, its parameters, the input, the version and
  the figures measured. Next to a CSV or image output ``X.ext`` it is ``X.yaml``; for a
  Picasso output it is appended to the sidecar ``X.yaml`` as one more document (Picasso
  keeps the history of a file that way), after the input's own documents.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd
import yaml

from stormfold import __version__
from stormfold.config import dump_yaml
from stormfold.errors import UserError
from stormfold.io.atomic import same_file, write_text
from stormfold.io.picasso import read_picasso_hdf5, sidecar_path, write_picasso_hdf5
from stormfold.io.tables import (RUN_RECORD, check_apart, check_float32, default_image_size,
                                 estimated_near, geometry_near, table_format, table_sources)
from stormfold.io.thunderstorm import read_thunderstorm_csv, write_thunderstorm_csv
from stormfold.table import n_frames_of


@dataclass
class InputTable:
    """A localization table read from a file, with what is known of its camera.

    Attributes
    ----------
    path : Path
        The file.
    table : pandas.DataFrame
        The localizations (nm, 0-based frames).
    pixel_size_nm : float or None
        Camera pixel size (nm).
    width_px, height_px : int or None
        Camera image size (pixels).
    n_frames : int or None
        Movie length (at least the table's last frame + 1).
    documents : list of dict
        The Picasso sidecar's documents of an HDF5 input (its history).
    geometry_source : str or None
        Where the geometry came from.
    columns_estimated : dict
        Columns that are estimates, not measurements (column → how), from the Picasso
        sidecar or the ``run.yaml`` next to a CSV; carried to the outputs.
    frame_base : int
        First frame number in the file (1 for ThunderSTORM CSV, 0 for Picasso HDF5).
    """

    path: Path
    table: pd.DataFrame
    pixel_size_nm: Optional[float] = None
    width_px: Optional[int] = None
    height_px: Optional[int] = None
    n_frames: Optional[int] = None
    documents: list = field(default_factory=list)
    geometry_source: Optional[str] = None
    columns_estimated: dict = field(default_factory=dict)
    frame_base: int = 0

    @property
    def fov_nm(self) -> Optional[tuple[float, float]]:
        """Camera field of view (width, height) in nm, when known."""
        if self.pixel_size_nm and self.width_px and self.height_px:
            return self.width_px * self.pixel_size_nm, self.height_px * self.pixel_size_nm
        return None

    def protected(self) -> list[Path]:
        """Files no output may replace: every file read with the table
        (:func:`stormfold.io.tables.table_sources`)."""
        return table_sources(self.path)


def read_input(path: str | Path, pixel_size_nm: Optional[float] = None) -> InputTable:
    """Read a localization table and its camera geometry (see the module docstring).

    Parameters
    ----------
    path : str or Path
        ``.csv`` (ThunderSTORM) or ``.hdf5``/``.h5`` (Picasso).
    pixel_size_nm : float, optional
        Camera pixel size (nm); overrides the files (image sizes found in another pixel
        size are then ignored).

    Raises
    ------
    UserError
        Missing file, unknown extension, unreadable table.
    """
    path = Path(path)
    fmt = table_format(path)
    if not path.is_file():
        raise UserError(f"localization file not found: {path}")
    if fmt == "picasso":
        table, info = read_picasso_hdf5(path, pixel_size_nm)
        result = InputTable(path, table, info["pixel_size_nm"], info["width_px"],
                            info["height_px"], info["n_frames"], list(info["documents"]),
                            info["sidecar"], info["columns_estimated"])
    else:
        table = read_thunderstorm_csv(path, pixel_size_nm=pixel_size_nm)
        geometry = geometry_near(path, pixel_size_nm)
        if pixel_size_nm is not None and geometry and not math.isclose(
                geometry["pixel_size_nm"], pixel_size_nm):
            # The given pixel size wins; the frame size in camera pixels that localize/run
            # recorded still holds, a simulation's field in another pixel size does not.
            kept = ("width_px", "height_px", "source") if geometry["source"].name == RUN_RECORD \
                else ()
            geometry = {k: v for k, v in geometry.items() if k in kept}
        result = InputTable(path, table, pixel_size_nm or geometry.get("pixel_size_nm"),
                            geometry.get("width_px"), geometry.get("height_px"),
                            geometry.get("n_frames"),
                            geometry_source=str(geometry["source"]) if geometry else None,
                            columns_estimated=estimated_near(path),
                            frame_base=int(table.attrs.get("frame_base", 1)))
    if result.n_frames is not None and result.n_frames < n_frames_of(result.table):
        result.n_frames = None
    return result


def check_outputs(source: InputTable, outputs: Iterable[str | Path]) -> None:
    """Refuse outputs that would replace a file the input was read with, or each other.

    Raises
    ------
    UserError
        Naming the clash.
    """
    seen: list[Path] = []
    for out in outputs:
        out = Path(out)
        check_apart([out], source.path)
        if out.exists() and out.is_dir():
            raise UserError(f"output {out} is a folder")
        if any(same_file(out, other) for other in seen):
            raise UserError(f"two outputs would be written to {out}: choose another name")
        seen.append(out)


def record_path(output: str | Path) -> Path:
    """The YAML record next to a single-file output (``X.ext`` → ``X.yaml``)."""
    return Path(output).with_suffix(".yaml")


def table_outputs(path: str | Path) -> list[Path]:
    """Files written for an output table: the table and its YAML (record or sidecar)."""
    return [Path(path), record_path(path)]


def check_table_output(path: str | Path, source: InputTable,
                       pixel_size_nm: Optional[float] = None) -> None:
    """Fail early when a table cannot be written to ``path`` (format, pixel size)."""
    if table_format(path) == "picasso" and (pixel_size_nm or source.pixel_size_nm) is None:
        raise UserError(f"{path}: writing Picasso HDF5 needs the camera pixel size (no "
                        f"Picasso sidecar, simulation.yaml or run.yaml gives it): pass "
                        f"--pixel-size NM")


def make_record(step: str, source: InputTable, parameters: Any, results: dict,
                outputs: Iterable[str | Path] = ()) -> dict:
    """The YAML record of a step (see the module docstring)."""
    return {"Generated by": f"stormfold {__version__} {step}",
            "stormfold_version": __version__,
            "step": step,
            "input": str(source.path),
            "n_input": int(len(source.table)),
            "camera_pixel_size_nm": source.pixel_size_nm,
            "geometry_source": source.geometry_source,
            "columns_estimated": {k: v for k, v in source.columns_estimated.items()},
            "parameters": parameters,
            "results": results,
            "outputs": [str(Path(p).name) for p in outputs]}


def write_record(path: str | Path, record: dict) -> Path:
    """Write a record as a YAML file (atomically)."""
    return write_text(path, dump_yaml(record))


def write_output_table(path: str | Path, table: pd.DataFrame, source: InputTable,
                       record: dict, pixel_size_nm: Optional[float] = None,
                       write_csv_record: bool = True) -> list[Path]:
    """Write a table (format by extension) with its YAML record; returns the files.

    A Picasso output takes the camera geometry of the input (or ``pixel_size_nm``) and
    carries the input's sidecar documents followed by ``record``. A CSV output gets the
    record as ``X.yaml`` unless ``write_csv_record`` is false.
    """
    path = Path(path)
    if table_format(path) == "thunderstorm":
        write_thunderstorm_csv(path, table)
        if not write_csv_record:
            return [path]
        write_record(record_path(path), record)
        return [path, record_path(path)]
    check_table_output(path, source, pixel_size_nm)
    px = pixel_size_nm or source.pixel_size_nm
    same_camera = source.pixel_size_nm is not None and math.isclose(px, source.pixel_size_nm)
    if same_camera and source.width_px and source.height_px:
        width, height = source.width_px, source.height_px
    else:
        width, height = default_image_size(table, px)
    n_frames = source.n_frames if source.n_frames and source.n_frames >= n_frames_of(table) \
        else None
    check_float32(table, source.path)
    history = [doc for doc in source.documents if isinstance(doc, dict)]
    write_picasso_hdf5(path, table, px, width, height, n_frames=n_frames,
                       info=history + [yaml.safe_load(dump_yaml(record))],
                       estimated=source.columns_estimated)
    return [path, sidecar_path(path)]
