"""Streaming localization of a movie with any engine (``stormfold localize``).

The movie is read in batches of frames; each batch is converted from ADU to photons by
the camera model (the one place where that happens for every engine), handed to the
engine, and its localizations are appended to the output CSV at once. The super-resolved
and widefield images are running sums. Memory therefore depends on the batch size and
the frame size, not on the movie length.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stormfold import __version__
from stormfold.config import dump_yaml, from_dict, load_yaml, to_dict
from stormfold.errors import UserError
from stormfold.io.atomic import same_file, write_text
from stormfold.io.movie import Movie, open_movie
from stormfold.localize.engine import Engine
from stormfold.physics.camera import Camera

OUTPUTS = {"locs": "localizations.csv", "superres": "superres.tif",
           "widefield": "widefield.tif", "run": "run.yaml"}
PIXEL_SIZE_TOLERANCE = 0.10  # relative mismatch between movie and model pixel size refused


@dataclass
class CameraOverrides:
    """Camera parameters given on the command line (None = not given)."""

    camera_file: Path | None = None
    baseline_adu: float | None = None
    e_per_adu: float | None = None
    em_gain: float | None = None
    qe: float | None = None

    def fields(self) -> dict[str, float]:
        return {k: v for k, v in (("baseline_adu", self.baseline_adu), ("e_per_adu", self.e_per_adu),
                                  ("em_gain", self.em_gain), ("qe", self.qe)) if v is not None}


def camera_from_file(path: str | Path) -> Camera:
    """A camera from YAML: a mapping of :class:`Camera` fields, or any stormfold YAML
    (``simulation.yaml``, ``model.yaml``, ``run.yaml``) with a ``camera`` section."""
    data = load_yaml(path)
    if isinstance(data, dict) and isinstance(data.get("camera"), dict):
        data = data["camera"]
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected camera parameters (baseline_adu, e_per_adu, ...)")
    return from_dict(Camera, data, where="camera")


def resolve_camera(overrides: CameraOverrides | None, movie: Movie | None,
                   engine: Engine | None) -> tuple[Camera, str]:
    """The camera to convert ADU to photons, and where it came from.

    Order: ``--camera FILE``; else the camera stored in a stormfold-written movie; else the
    camera of the model's training simulation; else an ideal camera (baseline 0, 1 e⁻/ADU).
    Individual options (``--baseline`` ...) then override single fields.
    """
    overrides = overrides or CameraOverrides()
    if overrides.camera_file is not None:
        camera, source = camera_from_file(overrides.camera_file), f"file {overrides.camera_file}"
    elif movie is not None and isinstance(movie.metadata.get("info"), dict) \
            and isinstance(movie.metadata["info"].get("camera"), dict):
        camera = from_dict(Camera, movie.metadata["info"]["camera"], where="movie camera")
        source = "movie metadata"
    elif engine is not None and engine.training_camera() is not None:
        camera, source = engine.training_camera(), "model training simulation"
    else:
        camera, source = Camera(), "default (baseline 0 ADU, 1 e-/ADU, no gain)"
    fields = overrides.fields()
    if fields:
        camera = from_dict(Camera, {**to_dict(camera), **fields}, where="camera")
        source += " + command-line " + ", ".join(fields)
    return camera, source


def resolve_pixel_size(movie: Movie, engine: Engine | None) -> float:
    """The movie's pixel size (nm), checked against the model's training pixel size."""
    px = movie.require_pixel_size()
    trained = engine.training_pixel_size_nm() if engine is not None else None
    if trained is not None and abs(px - trained) > PIXEL_SIZE_TOLERANCE * trained:
        raise UserError(f"pixel size {px:g} nm of {movie.path} differs from the model's "
                        f"{trained:g} nm by more than {PIXEL_SIZE_TOLERANCE:.0%}: use a model "
                        f"trained for this pixel size (or correct --pixel-size)")
    return px


def render_histogram(locs: pd.DataFrame, shape: tuple[int, int], pixel_size_nm: float) -> np.ndarray:
    """2-D histogram of localizations on a grid of ``shape`` with square pixels (nm)."""
    rows, cols = shape
    if len(locs) == 0:
        return np.zeros(shape, np.float32)
    h, _, _ = np.histogram2d(locs["y_nm"].to_numpy(), locs["x_nm"].to_numpy(), bins=(rows, cols),
                             range=((0, rows * pixel_size_nm), (0, cols * pixel_size_nm)))
    return h.astype(np.float32)


@dataclass
class BatchResult:
    """Localizations and image sums of a run of consecutive frames."""

    first_frame: int
    n_frames: int
    locs: pd.DataFrame
    superres: np.ndarray  # (rows·L, cols·L) float64 sum
    widefield: np.ndarray  # (rows, cols) float64 sum of raw ADU frames
    read_s: float = 0.0
    engine_s: float = 0.0


def iter_localize(movie: Movie, engine: Engine, camera: Camera, pixel_size_nm: float, start: int,
                  stop: int, batch_frames: int):
    """Yield a :class:`BatchResult` per batch of frames in [start, stop).

    The one loop shared by ``stormfold localize``, the pipeline and its Dask workers:
    read → ADU to photons (camera model) → engine → image sums.
    """
    rows, cols = movie.shape
    L = engine.upsampling
    engine.set_camera(camera)  # engines whose likelihood needs the noise model use it
    for first, frames in movie.iter_batches(batch_frames, start=start, stop=stop):
        t1 = time.perf_counter()
        widefield = frames.sum(axis=0, dtype=np.float64)
        photons = camera.backward(frames)
        t2 = time.perf_counter()
        out = engine.process(photons, first, pixel_size_nm)
        t3 = time.perf_counter()
        superres = out.superres if out.superres is not None else \
            render_histogram(out.locs, (rows * L, cols * L), pixel_size_nm / L)
        yield BatchResult(first, len(frames), out.locs, superres.astype(np.float64), widefield,
                          t2 - t1, t3 - t2)


def localize_range(movie: Movie, engine: Engine, camera: Camera, pixel_size_nm: float, start: int,
                   stop: int, batch_frames: int) -> BatchResult:
    """Localize frames [start, stop) and return one summed :class:`BatchResult` (a chunk)."""
    parts = list(iter_localize(movie, engine, camera, pixel_size_nm, start, stop, batch_frames))
    from stormfold.table import empty_table

    locs = pd.concat([p.locs for p in parts], ignore_index=True) if parts else empty_table()
    return BatchResult(start, stop - start, locs, sum(p.superres for p in parts),
                       sum(p.widefield for p in parts), sum(p.read_s for p in parts),
                       sum(p.engine_s for p in parts))


@dataclass
class LocalizeResult:
    """What :func:`localize_movie` produced (the table only when kept in memory)."""

    run: dict[str, Any]
    superres: np.ndarray
    widefield: np.ndarray
    locs: pd.DataFrame | None = None
    outputs: dict[str, Path] = field(default_factory=dict)


def localize_movie(movie: str | Path | Movie, engine: Engine, out_dir: str | Path | None = None,
                   pixel_size_nm: float | None = None, camera: Camera | CameraOverrides | None = None,
                   batch_frames: int = 16, start: int = 0, stop: int | None = None,
                   progress: bool = True, keep_table: bool | None = None,
                   command: list[str] | None = None) -> LocalizeResult:
    """Localize every frame of ``movie`` with ``engine``, streaming batches of frames.

    Parameters
    ----------
    movie : path or Movie
        TIFF stack, folder of TIFFs or Picasso ``.raw``.
    engine : Engine
        From :func:`stormfold.localize.registry.load_engine`.
    out_dir : path, optional
        Write ``localizations.csv`` (ThunderSTORM, 1-based frames), ``superres.tif``
        (fine pixel size in its tags), ``widefield.tif`` (sum of raw frames, ADU) and
        ``run.yaml``. Without it nothing is written and the table is returned.
    pixel_size_nm : float, optional
        Camera pixel size (nm) when the movie's metadata has none (or overriding it).
    camera : Camera or CameraOverrides, optional
        ADU → photon conversion; see :func:`resolve_camera` for the defaults.
    batch_frames : int
        Frames per batch (memory ∝ batch_frames × frame size).
    start, stop : int
        Frame range (0-based, stop exclusive).
    keep_table : bool, optional
        Also return the table in memory (default: only when ``out_dir`` is None).
    """
    from tqdm import tqdm

    from stormfold.io.thunderstorm import ThunderstormCsvWriter
    from stormfold.io.tiff import write_tiff

    if batch_frames < 1:
        raise UserError(f"--batch-frames must be ≥ 1, got {batch_frames}")
    own_movie = not isinstance(movie, Movie)
    mv = open_movie(movie, pixel_size_nm=pixel_size_nm) if own_movie else movie
    try:
        px = resolve_pixel_size(mv, engine)
        if isinstance(camera, Camera):
            cam, cam_source = camera, "given"
        else:
            cam, cam_source = resolve_camera(camera, mv, engine)
        stop = mv.n_frames if stop is None else min(stop, mv.n_frames)
        if not 0 <= start < stop:
            raise UserError(f"frame range {start}:{stop} is empty for a movie of {mv.n_frames} frames")
        rows, cols = mv.shape
        L = engine.upsampling
        paths: dict[str, Path] = {}
        if out_dir is not None:
            out_dir = Path(out_dir)
            if out_dir.exists() and not out_dir.is_dir():
                raise UserError(f"--out {out_dir} exists and is not a folder")
            paths = {k: out_dir / v for k, v in OUTPUTS.items()}
            if any(same_file(p, mv.path) for p in paths.values()):
                raise UserError(f"an output in {out_dir} would overwrite the input movie")
            out_dir.mkdir(parents=True, exist_ok=True)
        keep = keep_table if keep_table is not None else out_dir is None
        writer = ThunderstormCsvWriter(paths["locs"]) if paths else None
        superres = np.zeros((rows * L, cols * L), np.float64)
        widefield = np.zeros((rows, cols), np.float64)
        kept: list[pd.DataFrame] = []
        n_locs = 0
        t_read = t_engine = 0.0
        t0 = time.perf_counter()
        bar = tqdm(total=stop - start, unit="frame", desc=f"localize ({engine.name})",
                   disable=not progress, leave=False)
        try:
            for batch in iter_localize(mv, engine, cam, px, start, stop, batch_frames):
                t_read += batch.read_s
                t_engine += batch.engine_s
                superres += batch.superres
                widefield += batch.widefield
                if writer is not None:
                    writer.append(batch.locs)
                if keep:
                    kept.append(batch.locs)
                n_locs += len(batch.locs)
                bar.update(batch.n_frames)
                bar.set_postfix(locs=n_locs)
        except BaseException:
            if writer is not None:
                writer.abort()
                writer.partial_path.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
        seconds = time.perf_counter() - t0
        n = stop - start
        run = {
            "stormfold_version": __version__,
            "command": command if command is not None else None,
            "movie": str(mv.path), "frames": [start, stop], "n_frames": n,
            "frame_shape": [rows, cols],
            "pixel_size_nm": px, "superres_pixel_size_nm": px / L,
            "camera": to_dict(cam), "camera_source": cam_source,
            "engine": engine.describe(), "batch_frames": batch_frames,
            "n_localizations": n_locs,
            "timing": {"seconds": round(seconds, 3), "frames_per_s": round(n / seconds, 3),
                       "read_and_convert_s": round(t_read, 3), "engine_s": round(t_engine, 3)},
        }
        superres32 = superres.astype(np.float32)
        widefield32 = widefield.astype(np.float32)
        if paths:
            writer.close()
            write_tiff(paths["superres"], superres32, pixel_size_nm=px / L,
                       metadata={"kind": "superres", "engine": engine.name, "upsampling": L})
            write_tiff(paths["widefield"], widefield32, pixel_size_nm=px,
                       metadata={"kind": "widefield sum of raw frames (ADU)"})
            run["outputs"] = {k: p.name for k, p in paths.items()}
            write_text(paths["run"], dump_yaml(run))
        locs = None
        if keep:
            from stormfold.table import empty_table

            locs = pd.concat(kept, ignore_index=True) if kept else empty_table()
        return LocalizeResult(run=run, superres=superres32, widefield=widefield32, locs=locs,
                              outputs=paths)
    finally:
        if own_movie:
            mv.close()


def command_line() -> list[str]:
    """The command as typed (for provenance in run.yaml)."""
    return ["stormfold", *sys.argv[1:]]
