"""Pixel binning: an engine that sees the movie in b × b super-pixels.

A PSF wider than a model was trained for (σ above gridnet's 2 px, e.g. 65 nm camera pixels)
or a pixel size smaller than a Deep-STORM model's becomes one it knows once b × b pixels are
summed: σ in pixels and the pixel size scale by 1/b and b. Summing photons keeps the
statistics exact (a sum of Poisson counts is Poisson; read-noise variances add, see
:meth:`stormfold.physics.camera.Camera.binned`), and positions stay in nm on the movie's own
frame because binned pixel (R, C) covers exactly camera pixels [R·b, R·b + b) × [C·b, C·b + b).
Rows and columns beyond the last whole super-pixel (``rows mod b`` at the bottom,
``cols mod b`` at the right) are left out.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from stormfold.errors import UserError
from stormfold.localize.engine import Engine, EngineOutput
from stormfold.physics.camera import Camera

#: Largest bin factor accepted (beyond it a frame of a few hundred pixels has nothing left).
MAX_BIN = 8


def check_bin(value: Any) -> int:
    """``value`` as a bin factor 1–:data:`MAX_BIN`, else :class:`UserError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or int(value) != value or not 1 <= value <= MAX_BIN:
        raise UserError(f"bin must be a whole number of pixels from 1 to {MAX_BIN}, got {value!r}")
    return int(value)


def bin_frames(frames: np.ndarray, b: int) -> np.ndarray:
    """Sum b × b blocks of pixels.

    Parameters
    ----------
    frames : (n, rows, cols) array
        Frames (photons per camera pixel).
    b : int
        Bin factor.

    Returns
    -------
    (n, rows // b, cols // b) float32
        Photons per super-pixel; the last ``rows mod b`` rows and ``cols mod b`` columns are
        left out.
    """
    n, rows, cols = frames.shape
    r, c = rows // b, cols // b
    if r == 0 or c == 0:
        raise UserError(f"a {rows} × {cols} frame has no whole {b} × {b} super-pixel: "
                        f"use a smaller bin")
    blocks = np.asarray(frames[:, :r * b, :c * b], dtype=np.float32).reshape(n, r, b, c, b)
    return blocks.sum(axis=(2, 4), dtype=np.float32)


class BinnedEngine(Engine):
    """An engine run on b × b binned frames (:func:`bin_frames`).

    Localizations come back in nm on the movie's frame. The engine's own super-resolved
    image (Deep-STORM, unrolled) is on the binned grid, so it is dropped and the runner
    renders the localizations instead. Everything else (threshold, model, warnings) is the
    wrapped engine's.

    Parameters
    ----------
    inner : Engine
        The engine that localizes the binned frames.
    bin_factor : int
        b (2–:data:`MAX_BIN`).
    """

    def __init__(self, inner: Engine, bin_factor: int):
        self.inner = inner
        self.bin_factor = check_bin(bin_factor)
        check = getattr(inner, "domain_check", None)
        if hasattr(check, "bin_factor"):  # its advice to bin must count this binning in
            check.bin_factor = self.bin_factor
        self.name = inner.name
        self.upsampling = inner.upsampling
        self.temporal_context = inner.temporal_context

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes not found on the wrapper: the model, threshold, device...
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _bin(self, photons: np.ndarray | None) -> np.ndarray | None:
        return None if photons is None else bin_frames(photons, self.bin_factor)

    def _per_camera_pixel(self, out: EngineOutput) -> EngineOutput:
        # The background is per super-pixel; the table's is per camera pixel (review 16).
        locs = out.locs
        if "bg" in locs.columns:
            locs = locs.assign(bg=locs["bg"] / float(self.bin_factor ** 2))
        return EngineOutput(locs, None)

    def _binned_error(self, exc: UserError) -> UserError:
        # The inner engine speaks of the binned frame (review 16): say so.
        return UserError(f"{exc} (in frames binned {self.bin_factor} × {self.bin_factor})")

    def process(self, photons: np.ndarray, first_frame: int, pixel_size_nm: float) -> EngineOutput:
        try:
            return self._per_camera_pixel(self.inner.process(
                self._bin(photons), first_frame, pixel_size_nm * self.bin_factor))
        except UserError as exc:
            raise self._binned_error(exc) from None

    def process_with_context(self, photons, before, after, first_frame, pixel_size_nm):
        try:
            return self._per_camera_pixel(self.inner.process_with_context(
                self._bin(photons), self._bin(before), self._bin(after), first_frame,
                pixel_size_nm * self.bin_factor))
        except UserError as exc:
            raise self._binned_error(exc) from None

    def set_camera(self, camera: Camera) -> None:
        self.inner.set_camera(camera.binned(self.bin_factor))

    def training_camera(self) -> Camera | None:
        return self.inner.training_camera()  # converts the movie's own pixels, before binning

    def training_pixel_size_nm(self) -> float | None:
        trained = self.inner.training_pixel_size_nm()
        return None if trained is None else trained / self.bin_factor

    def check_pixel_size(self, pixel_size_nm: float) -> None:
        try:
            self.inner.check_pixel_size(pixel_size_nm * self.bin_factor)
        except UserError as exc:
            raise self._binned_error(exc) from None

    def estimated_columns(self) -> dict[str, str]:
        return self.inner.estimated_columns()

    def start_movie(self, warn=None) -> None:
        self.inner.start_movie(warn)

    def movie_warnings(self) -> list[str]:
        return self.inner.movie_warnings()

    def describe(self) -> dict[str, Any]:
        return {**self.inner.describe(), "bin": self.bin_factor,
                "superres": "histogram of the localizations (the engine saw binned frames)"}


def with_binning(engine: Any, bin_factor: Any) -> Any:
    """``engine`` itself for ``bin_factor`` 1 (or None), else a :class:`BinnedEngine`."""
    if bin_factor is None or check_bin(bin_factor) == 1:
        return engine
    if not isinstance(engine, Engine):
        raise UserError(f"bin applies to localization engines, not to {engine.name!r} models")
    return BinnedEngine(engine, bin_factor)
