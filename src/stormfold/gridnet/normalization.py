"""Input normalisation of the camera-grid network, identical in training and inference.

Frames arrive in photons (:meth:`stormfold.physics.Camera.backward`). Two maps are offered
(``normalization.method`` in model.yaml):

``frame_median`` (default)
    x = (photons − m_f) / scale, with m_f the median of frame f. Background levels from 0
    to several hundred photons per pixel then all enter the network near 0, so the first
    layers see emitters on a flat zero level whatever the background; the background output
    is predicted relative to m_f. This deviates from SPEC §10's fixed affine map: the
    measurement behind the choice is in docs/gridnet.md.
``affine``
    x = (photons − offset) / scale with two fixed numbers (SPEC §10).

``scale_photons`` is fixed (stored in model.yaml) in both cases, so photon counts keep
their absolute meaning (shot noise depends on them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from stormfold.errors import UserError

METHODS = ("frame_median", "affine")


@dataclass
class InputNormalization:
    """Photons → network input.

    Attributes
    ----------
    method : {"frame_median", "affine"}
    offset_photons : float
        Subtracted before scaling (``affine`` only), photons per pixel.
    scale_photons : float
        Photons per unit of network input, > 0.
    """

    method: Literal["frame_median", "affine"] = "frame_median"
    offset_photons: float = 0.0
    scale_photons: float = 100.0

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"normalization.method must be one of {', '.join(METHODS)}, "
                            f"got {self.method!r}")
        if not (np.isfinite(self.scale_photons) and self.scale_photons > 0):
            raise UserError(f"normalization.scale_photons must be > 0, got {self.scale_photons}")
        if not np.isfinite(self.offset_photons):
            raise UserError("normalization.offset_photons must be finite")

    def frame_offsets(self, photons: torch.Tensor) -> torch.Tensor:
        """Per-frame offset (photons) of frames (n, rows, cols) → (n,)."""
        if self.method == "frame_median":
            return photons.flatten(1).median(dim=1).values
        return torch.full(photons.shape[:1], float(self.offset_photons), dtype=photons.dtype,
                          device=photons.device)

    def apply(self, photons: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Network input of frames (n, rows, cols) in photons, and the per-frame offsets (n,)."""
        photons = photons.float()
        offsets = self.frame_offsets(photons)
        return (photons - offsets[:, None, None]) / float(self.scale_photons), offsets
