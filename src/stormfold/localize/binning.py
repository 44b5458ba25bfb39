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
from stormfold.localize.domain import (SIGMA_BOUND_SHARE_ABOVE, SIGMA_MIN_EMITTERS,
                                       SigmaBoundCheck, emit)
from stormfold.localize.engine import Engine, EngineOutput
from stormfold.physics.camera import Camera

#: Largest bin factor accepted (beyond it a frame of a few hundred pixels has nothing left).
MAX_BIN = 8


def check_bin(value: Any) -> int:
    """``value`` as a bin factor 1–:data:`MAX_BIN`, else :class:`UserError` (``"auto"`` is
    handled by :func:`with_binning`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value) or int(value) != value or not 1 <= value <= MAX_BIN:
        raise UserError(f"bin must be auto or a whole number of pixels from 1 to {MAX_BIN}, "
                        f"got {value!r}")
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

    def decide(self, run) -> dict[str, Any]:
        """The wrapped engine's choice on the movie's first batch (see
        :meth:`AutoBinEngine.decide`), made on the binned frames; none when it has none."""
        inner = getattr(self.inner, "decide", None)
        return {} if inner is None else inner(lambda _: run(self))

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
    """``engine`` itself for ``bin_factor`` 1, a :class:`BinnedEngine` for 2 or more, an
    :class:`AutoBinEngine` for ``"auto"``; None (not given) is ``"auto"`` where
    :func:`supports_auto_bin` holds, else 1."""
    if bin_factor is None or bin_factor == "auto":
        if supports_auto_bin(engine):
            return AutoBinEngine(engine)
        if bin_factor is None:
            return engine
        raise UserError(f"bin=auto needs an engine that fits each emitter's PSF width "
                        f"(gridnet without sigma_nm), not {engine.name!r}: give bin=B")
    if check_bin(bin_factor) == 1:
        return engine
    if not isinstance(engine, Engine):
        raise UserError(f"bin applies to localization engines, not to {engine.name!r} models")
    return BinnedEngine(engine, bin_factor)


#: Largest bin factor :class:`AutoBinEngine` tries.
AUTO_BIN_MAX = 4


def supports_auto_bin(engine: Any) -> bool:
    """Whether ``engine`` fits each emitter's PSF σ within a range and counts those at its
    bounds (gridnet without a given σ): :class:`AutoBinEngine` needs that count."""
    return isinstance(engine, Engine) and isinstance(getattr(engine, "domain_check", None),
                                                     SigmaBoundCheck) \
        and getattr(engine, "sigma_nm", None) is None


class AutoBinEngine(Engine):
    """An engine that bins the movie's pixels when its PSF is wider than the model's range.

    On the first batch of each movie (after :meth:`start_movie`; :meth:`decide` for the
    frames chosen by the caller, :func:`stormfold.localize.runner.decision_ranges` in
    ``localize`` and ``run``) the wrapped engine localizes the batch as it is, silently; when at least
    :data:`~stormfold.localize.domain.SIGMA_MIN_EMITTERS` emitters were refined and
    :data:`~stormfold.localize.domain.SIGMA_BOUND_SHARE_ABOVE` of them or more have their
    fitted σ at the range's upper bound (the rule of the σ warning,
    :class:`~stormfold.localize.domain.SigmaBoundCheck`), the batch is localized again
    binned 2 × 2, then 3 × 3 ... up to :data:`AUTO_BIN_MAX`, until it no longer is. The
    movie is then localized at that bin (one warning says so; ``--set bin=1`` keeps the
    pixels). The per-movie checks start again for the real pass, so what they say is the
    chosen engine's. A first batch with fewer refined emitters is localized as it is.

    Parameters
    ----------
    inner : Engine
        An engine for which :func:`supports_auto_bin` holds.
    """

    def __init__(self, inner: Engine):
        self.inner = inner
        self.name = inner.name
        self.upsampling = inner.upsampling
        self.temporal_context = inner.temporal_context
        self.chosen: int | None = None
        self.probed = 0  # emitters refined on the decision sample
        self.message: str | None = None
        self._camera: Camera | None = None
        self._warn = None

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _engine(self, b: int) -> Engine:
        engine = self.inner if b == 1 else BinnedEngine(self.inner, b)
        self.inner.domain_check.bin_factor = b
        if self._camera is not None:
            engine.set_camera(self._camera)
        return engine

    def decide(self, run) -> dict[str, Any]:
        """Choose the bin: ``run(engine)`` localizes the decision frames with a candidate
        engine (its result is not kept). The per-movie checks are then reset, so the real
        pass starts from zero. Returns the option that pins the choice."""
        check = self.inner.domain_check
        b, seen = 1, None
        while True:
            self.inner.start_movie(lambda line: None)  # the probes say nothing
            run(self._engine(b))
            wide = check.counts[0] >= SIGMA_MIN_EMITTERS and \
                check.shares()[1] >= SIGMA_BOUND_SHARE_ABOVE
            if seen is None:
                seen = check.shares()[1], int(check.counts[0])
                self.probed = seen[1]
            if not wide or b == AUTO_BIN_MAX:
                break
            b += 1
        self.chosen, self.current = b, self._engine(b)
        self.inner.start_movie(self._warn)
        if b > 1:
            self.message = (f"the movie's PSF is wider than the model's range: {seen[0]:.0%} "
                            f"of the first {seen[1]} refined emitters had their fitted sigma "
                            f"at its upper bound {check.hi:g} px, so the pixels are binned "
                            f"{b} × {b} (--set bin=1 keeps them)")
            emit(self.message, self._warn)
        return {"bin": b}

    def process(self, photons: np.ndarray, first_frame: int, pixel_size_nm: float) -> EngineOutput:
        if self.chosen is None:
            self.decide(lambda e: e.process(photons, first_frame, pixel_size_nm))
        return self.current.process(photons, first_frame, pixel_size_nm)

    def process_with_context(self, photons, before, after, first_frame, pixel_size_nm):
        if self.chosen is None:
            self.decide(lambda e: e.process_with_context(photons, before, after, first_frame,
                                                         pixel_size_nm))
        return self.current.process_with_context(photons, before, after, first_frame,
                                                 pixel_size_nm)

    def set_camera(self, camera: Camera) -> None:
        self._camera = camera
        if self.chosen is not None:
            self.current.set_camera(camera)
        else:
            self.inner.set_camera(camera)

    def training_camera(self) -> Camera | None:
        return self.inner.training_camera()

    def training_pixel_size_nm(self) -> float | None:
        return self.inner.training_pixel_size_nm()

    def check_pixel_size(self, pixel_size_nm: float) -> None:
        self.inner.check_pixel_size(pixel_size_nm)

    def estimated_columns(self) -> dict[str, str]:
        return self.inner.estimated_columns()

    def start_movie(self, warn=None) -> None:
        self.chosen, self.message, self._warn, self.probed = None, None, warn, 0
        self.inner.domain_check.bin_factor = 1
        self.inner.start_movie(warn)

    def movie_warnings(self) -> list[str]:
        return ([self.message] if self.message else []) + self.inner.movie_warnings()

    def describe(self) -> dict[str, Any]:
        if self.chosen is None or self.chosen == 1:
            kept = "auto: 1 (kept)" if self.probed >= SIGMA_MIN_EMITTERS else \
                f"auto: 1 (undecided: {self.probed} refined emitters in the frames it " \
                f"decides on, fewer than {SIGMA_MIN_EMITTERS})"
            return {**self.inner.describe(), "bin": kept if self.chosen else "auto"}
        return {**self.current.describe(), "bin": self.chosen, "bin_chosen": "auto"}
