"""The loss of the camera-grid network (SPEC §10; Speiser et al., Nat. Methods 2021).

Per frame, with M true emitters u_m = (x_m, y_m, N_m/photon_unit) in px and photon units
and the network's per-pixel outputs (p_k, μ_k, σ_k, b_k):

- count: the number of detections Σ_k Bernoulli(p_k) is approximated by a Gaussian of mean
  E = Σp and variance V = Σp(1−p); L_count = ½(M − E)²/V + ½ log(2πV) is the negative log
  of that Gaussian at M;
- localization: the emitters are modelled as draws from the mixture with weights
  w_k = p_k/Σp and components 𝒩(μ_k, diag(σx_k², σy_k², σN_k²)):
  L_loc = −Σ_m log Σ_k w_k 𝒩(u_m; μ_k, Σ_k);
- background: L_bg = mean_k ((b_k − b_true,k)/bg_unit)².

L = L_count + L_loc + λ_bg·L_bg per frame; the batch loss is the mean over frames. The
derivation is in docs/gridnet.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stormfold.gridnet.outputs import PHOTON_UNIT, GridOutputs

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class LossTerms:
    """Loss terms per frame (each (n,)) and the batch loss (scalar, mean over frames)."""

    count: torch.Tensor
    loc: torch.Tensor
    bg: torch.Tensor
    total: torch.Tensor


def pixel_centres(rows: int, cols: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of camera pixels in px (corner origin): (rows,) and (cols,)."""
    return (torch.arange(rows, device=device, dtype=torch.float32) + 0.5,
            torch.arange(cols, device=device, dtype=torch.float32) + 0.5)


def _gaussian_log_density(emitters: torch.Tensor, mu_x, mu_y, mu_n, sx, sy, sn,
                          photon_unit: float) -> torch.Tensor:
    zx = (emitters[:, :, 0:1] - mu_x) / sx
    zy = (emitters[:, :, 1:2] - mu_y) / sy
    zn = (emitters[:, :, 2:3] / photon_unit - mu_n) / sn
    return -0.5 * (zx * zx + zy * zy + zn * zn) - torch.log(sx * sy * sn) - 1.5 * _LOG_2PI


def component_log_density(out: GridOutputs, emitters: torch.Tensor,
                          photon_unit: float = PHOTON_UNIT) -> torch.Tensor:
    """log 𝒩(u_m; μ_k, Σ_k) for every emitter m and pixel k: (n, M, rows·cols).

    ``emitters`` is (n, M, 3): x_px, y_px, photons.
    """
    n, rows, cols = out.p.shape
    yc, xc = pixel_centres(rows, cols, out.p.device)
    return _gaussian_log_density(
        emitters, (xc[None, None, :] + out.dx).flatten(1)[:, None, :],
        (yc[None, :, None] + out.dy).flatten(1)[:, None, :],
        (out.photons / photon_unit).flatten(1)[:, None, :], out.sigma_x.flatten(1)[:, None, :],
        out.sigma_y.flatten(1)[:, None, :], (out.sigma_photons / photon_unit).flatten(1)[:, None, :],
        photon_unit)


def window_indices(emitters: torch.Tensor, rows: int, cols: int,
                   window_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat pixel indices (n, M, w²) of the (2·window_px + 1)² pixels around each emitter's
    pixel, clamped into the frame, and whether each is inside the frame."""
    offsets = torch.arange(-window_px, window_px + 1, device=emitters.device)
    r0 = torch.floor(emitters[:, :, 1]).long().clamp(0, rows - 1)
    c0 = torch.floor(emitters[:, :, 0]).long().clamp(0, cols - 1)
    rr = (r0[:, :, None, None] + offsets[:, None]).expand(-1, -1, -1, offsets.numel())
    cc = (c0[:, :, None, None] + offsets[None, :]).expand(-1, -1, offsets.numel(), -1)
    inside = (rr >= 0) & (rr < rows) & (cc >= 0) & (cc < cols)
    flat = rr.clamp(0, rows - 1) * cols + cc.clamp(0, cols - 1)
    return flat.flatten(2), inside.flatten(2)


def windowed_log_terms(out: GridOutputs, emitters: torch.Tensor, window_px: int,
                       photon_unit: float = PHOTON_UNIT) -> tuple[torch.Tensor, torch.Tensor]:
    """log p_k and log 𝒩(u_m; μ_k, Σ_k) for the pixels k near each emitter: (n, M, w²) each
    (−inf for window pixels outside the frame)."""
    n, rows, cols = out.p.shape
    flat, inside = window_indices(emitters, rows, cols, window_px)
    m = emitters.shape[1]

    def take(field: torch.Tensor) -> torch.Tensor:
        return torch.gather(field.flatten(1), 1, flat.reshape(n, -1)).reshape(n, m, -1)

    yc = torch.div(flat, cols, rounding_mode="floor").to(out.p.dtype) + 0.5
    xc = (flat % cols).to(out.p.dtype) + 0.5
    log_n = _gaussian_log_density(emitters, xc + take(out.dx), yc + take(out.dy),
                                  take(out.photons) / photon_unit, take(out.sigma_x),
                                  take(out.sigma_y), take(out.sigma_photons) / photon_unit,
                                  photon_unit)
    log_p = torch.where(inside, torch.log(take(out.p)), torch.full_like(log_n, -math.inf))
    return log_p, log_n


def gridnet_loss(out: GridOutputs, emitters: torch.Tensor, mask: torch.Tensor,
                 bg_true: torch.Tensor | None = None, bg_unit: float = 100.0,
                 bg_weight: float = 1.0, photon_unit: float = PHOTON_UNIT,
                 window_px: int | None = None) -> LossTerms:
    """Count + mixture-likelihood + background loss of a batch of frames.

    Parameters
    ----------
    out : GridOutputs
        Outputs of n frames (each field (n, rows, cols)).
    emitters : (n, M, 3) float
        True emitters of each frame (x_px, y_px, photons), padded to M rows.
    mask : (n, M) bool
        Which rows of ``emitters`` are real.
    bg_true : (n, rows, cols), optional
        True background (photons per pixel); without it the background term is 0.
    bg_unit : float
        Photons per unit of the background error (the input normalisation scale).
    bg_weight : float
        λ_bg.
    photon_unit : float
        Photons per unit of the photon dimension of the mixture (SPEC: 1/1000 scaling).
    window_px : int, optional
        Sum the mixture only over the (2·window_px + 1)² pixels around each emitter's pixel
        (the weights w_k keep their full normalisation Σ_j p_j). A component further away
        has |μ_k − u_m| > window_px − 1.5 px in x or y and a negligible density once the
        σ's are below about (window_px − 1.5)/4 px; None sums over every pixel.
    """
    p = out.p.flatten(1)
    expected = p.sum(1)
    variance = (p * (1.0 - p)).sum(1)
    m = mask.sum(1).to(p.dtype)
    count = 0.5 * (m - expected) ** 2 / variance + 0.5 * torch.log(2.0 * math.pi * variance)
    if emitters.shape[1] > 0:
        if window_px is None:
            log_terms = torch.log(p)[:, None, :] + component_log_density(out, emitters, photon_unit)
        else:
            log_p, log_n = windowed_log_terms(out, emitters, window_px, photon_unit)
            log_terms = log_p + log_n
        log_mix = torch.logsumexp(log_terms, dim=2) - torch.log(expected)[:, None]
        loc = -(log_mix * mask.to(log_mix.dtype)).sum(1)
    else:
        loc = torch.zeros_like(count)
    if bg_true is not None:
        bg = ((out.bg - bg_true) / bg_unit).pow(2).flatten(1).mean(1)
    else:
        bg = torch.zeros_like(count)
    total = (count + loc + bg_weight * bg).mean()
    return LossTerms(count=count, loc=loc, bg=bg, total=total)
