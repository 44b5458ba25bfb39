"""The one input normalisation of Deep-STORM, identical in training and inference.

The original code min–max scales each training *patch* but each whole test *frame*, a
mismatch that changes the input statistics between training and use (SPEC §4). Here the
network input is

    x = (photons − offset_photons) / scale_photons,     then pixel replication ×L,

where photons come from the camera model (:meth:`stormfold.physics.Camera.backward`, the
same conversion the localization runner applies to every movie) and the two constants are
fixed once from the training frames and stored in ``model.yaml``. ``offset_photons`` is 0
(zero photons is a physical zero) and ``scale_photons`` is the mean over training frames of
each frame's maximum, so a typical frame spans about [0, 1] as with the original min–max.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stormfold.errors import UserError

METHOD = "photons_fixed_scale"


@dataclass
class Normalization:
    """Fixed affine normalisation of photon images.

    Attributes
    ----------
    offset_photons : float
        Subtracted from every pixel (photons).
    scale_photons : float
        Divisor after the offset (photons), > 0.
    method : str
        Name recorded in model.yaml (``photons_fixed_scale``).
    """

    offset_photons: float = 0.0
    scale_photons: float = 1.0
    method: str = METHOD

    def validate(self) -> None:
        if self.method != METHOD:
            raise UserError(f"normalization.method {self.method!r} is not supported (use {METHOD})")
        if not (np.isfinite(self.scale_photons) and self.scale_photons > 0):
            raise UserError(f"normalization.scale_photons must be > 0, got {self.scale_photons}")
        if not np.isfinite(self.offset_photons):
            raise UserError("normalization.offset_photons must be finite")

    def apply(self, photons: torch.Tensor) -> torch.Tensor:
        """Normalised float32 tensor of photon images (any shape)."""
        return (photons.float() - float(self.offset_photons)) / float(self.scale_photons)


def fit_normalization(photons: np.ndarray) -> Normalization:
    """The normalisation of a set of training frames (n_frames, rows, cols) in photons."""
    photons = np.asarray(photons)
    if photons.ndim != 3 or photons.shape[0] == 0:
        raise UserError(f"training frames must be (n_frames, rows, cols), got shape "
                        f"{photons.shape}")
    scale = float(photons.reshape(len(photons), -1).max(axis=1).astype(np.float64).mean())
    if not scale > 0:
        raise UserError("the training frames have no signal (every frame's maximum is "
                        "≤ 0 photons): check the camera baseline")
    return Normalization(offset_photons=0.0, scale_photons=scale)


def upsample(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Pixel replication ×``factor`` along the last two axes."""
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
