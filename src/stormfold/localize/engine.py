"""The engine interface: what every localization method gives the streaming runner.

An engine turns a batch of frames, already converted to photons by the camera model,
into localizations (nm, absolute 0-based frames) and, optionally, the sum of its
super-resolved images for that batch. Engines know nothing of files: the runner
(:mod:`stormfold.localize.runner`) reads the movie, converts ADU to photons, calls
:meth:`Engine.process` batch by batch and writes the outputs.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from stormfold.physics.camera import Camera


@dataclass
class EngineOutput:
    """Result of one batch.

    Attributes
    ----------
    locs : DataFrame
        Localization table (SPEC §1): absolute 0-based ``frame``, ``x_nm``, ``y_nm`` and
        whatever the engine measures (``confidence``, ``photons``, ``sigma_nm``, ``bg``,
        ``uncertainty_nm``).
    superres : ndarray or None
        Sum over the batch of the super-resolved images, (rows·L, cols·L) float32 with
        L = :attr:`Engine.upsampling`; None when the engine has no image output (the runner
        then renders a histogram of the localizations).
    """

    locs: pd.DataFrame
    superres: np.ndarray | None = None


class Engine(abc.ABC):
    """Base class of localization engines (Deep-STORM, unrolled, SOFI, classic MLE).

    Attributes
    ----------
    name : str
        Engine name as written in ``model.yaml`` (``deepstorm``, ``unrolled``, ...).
    upsampling : int
        Fine-grid factor L of the super-resolved image.
    temporal_context : int
        Frames on each side of a frame that the engine looks at (0: frames are independent);
        the runner then calls :meth:`process_with_context`.
    """

    name: str = "engine"
    upsampling: int = 1
    temporal_context: int = 0

    @abc.abstractmethod
    def process(self, photons: np.ndarray, first_frame: int, pixel_size_nm: float) -> EngineOutput:
        """Localize emitters in a batch of frames.

        Parameters
        ----------
        photons : (n_frames, rows, cols) float32
            Frames in photons per pixel (camera baseline removed, gain divided out).
        first_frame : int
            0-based index of ``photons[0]`` in the movie; output frames are absolute.
        pixel_size_nm : float
            Camera pixel size in nm.
        """

    def process_with_context(self, photons: np.ndarray, before: np.ndarray | None,
                             after: np.ndarray | None, first_frame: int,
                             pixel_size_nm: float) -> EngineOutput:
        """:meth:`process` for engines with :attr:`temporal_context` > 0: ``before`` and
        ``after`` hold up to that many frames (photons) preceding and following the batch in
        the movie, None at its edges. The default ignores them."""
        return self.process(photons, first_frame, pixel_size_nm)

    def set_camera(self, camera: Camera) -> None:
        """Told by the runner which camera converted the frames to photons, before the first
        batch. Engines whose likelihood depends on the noise model (the classical MLE: QE,
        EM excess noise, read noise) override this; the default ignores it."""

    def training_camera(self) -> Camera | None:
        """Camera of the simulation the model was trained on (used when nothing else is known)."""
        return None

    def training_pixel_size_nm(self) -> float | None:
        """Pixel size (nm) the model was trained for; None when the engine works at any size."""
        return None

    def check_pixel_size(self, pixel_size_nm: float) -> None:
        """Refuse (:class:`~stormfold.errors.UserError`) a movie pixel size the engine cannot
        work at, before any work (e.g. a PSF σ in pixels outside a model's training range).
        The default accepts every size."""

    def estimated_columns(self) -> dict[str, str]:
        """Columns of the table that are estimates rather than measurements, each with how
        it is estimated (recorded as ``columns_estimated`` in run.yaml and the Picasso
        sidecar). Default: none."""
        return {}

    #: Attributes that may hold a per-movie check (:mod:`stormfold.localize.domain`: an
    #: object with ``reset(warn)`` and ``message``): the training domain or σ bound, the
    #: localization density, and the spots' shape, width and brightness
    #: (:mod:`stormfold.localize.spots`).
    movie_checks: tuple[str, ...] = ("domain_check", "density_check", "spot_check")

    def _checks(self) -> list:
        return [c for c in (getattr(self, n, None) for n in self.movie_checks) if c is not None]

    def start_movie(self, warn=None) -> None:
        """A new movie (or run) starts: the engine's per-movie checks (its ``domain_check``
        and ``density_check``, :mod:`stormfold.localize.domain`) count from zero and give
        their one-line warnings through ``warn`` (a callable taking the line; None:
        :func:`warnings.warn`)."""
        for check in self._checks():
            check.reset(warn)

    def movie_warnings(self) -> list[str]:
        """The warnings the per-movie checks gave since :meth:`start_movie` (recorded as
        ``engine_warnings`` in run.yaml)."""
        return [c.message for c in self._checks() if getattr(c, "message", None)]

    def describe(self) -> dict[str, Any]:
        """Parameters to record in ``run.yaml``."""
        return {"engine": self.name, "upsampling": self.upsampling}
