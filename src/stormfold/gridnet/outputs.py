"""Raw network channels → per-pixel quantities in physical units (SPEC §10).

For camera pixel k (row r_k, column c_k):

- p_k = sigmoid(clamp(z_k, −8, 8));
- Δx_k, Δy_k = tanh(·) ∈ (−1, 1) px, so μ_k = (c_k + 0.5 + Δx_k, r_k + 0.5 + Δy_k) px;
- N_k = photon_unit · softplus(·) photons;
- σx_k, σy_k = softplus(·) + ε px; σN_k = photon_unit · (softplus(·) + ε) photons;
- b_k = offset_f + scale · (·) photons per pixel, with the frame's normalisation offset.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOGIT_CLAMP = 8.0
#: Photons per unit of the photon channels (the loss measures photons in this unit).
PHOTON_UNIT = 1000.0
#: Floor of the predicted standard deviations (px, and photon units).
SIGMA_EPS = 1e-3


@dataclass
class GridOutputs:
    """Per-pixel outputs of a batch of frames, each (n, rows, cols), float32.

    Attributes
    ----------
    p : detection probability.
    dx, dy : sub-pixel offset from the pixel centre, px.
    photons, sigma_photons : photons of an emitter at the pixel and its standard deviation.
    sigma_x, sigma_y : standard deviation of the position, px.
    bg : background, photons per pixel.
    """

    p: torch.Tensor
    dx: torch.Tensor
    dy: torch.Tensor
    photons: torch.Tensor
    sigma_x: torch.Tensor
    sigma_y: torch.Tensor
    sigma_photons: torch.Tensor
    bg: torch.Tensor

    def crop(self, rows: int, cols: int) -> "GridOutputs":
        """The top-left (rows, cols) part (drops the engine's padding)."""
        return GridOutputs(*(getattr(self, f)[:, :rows, :cols] for f in self.__dataclass_fields__))


def activate(raw: torch.Tensor, bg_offset: torch.Tensor, bg_scale: float) -> GridOutputs:
    """Physical outputs from raw channels (n, 8, rows, cols).

    Parameters
    ----------
    raw : (n, 8, rows, cols)
        Network output (channel order :data:`stormfold.gridnet.network.OUTPUTS`).
    bg_offset : (n,)
        Per-frame normalisation offset, photons.
    bg_scale : float
        Photons per unit of network input (the normalisation scale).
    """
    raw = raw.float()
    return GridOutputs(
        p=torch.sigmoid(raw[:, 0].clamp(-LOGIT_CLAMP, LOGIT_CLAMP)),
        dx=torch.tanh(raw[:, 1]),
        dy=torch.tanh(raw[:, 2]),
        photons=PHOTON_UNIT * F.softplus(raw[:, 3]),
        sigma_x=F.softplus(raw[:, 4]) + SIGMA_EPS,
        sigma_y=F.softplus(raw[:, 5]) + SIGMA_EPS,
        sigma_photons=PHOTON_UNIT * (F.softplus(raw[:, 6]) + SIGMA_EPS),
        bg=bg_offset[:, None, None] + bg_scale * raw[:, 7],
    )
