"""Upper-level losses of the unrolled method (SPEC §5, paper eqs. 13–16).

- (13) reconstruction: Σ_m ½‖x_K(θ; y_m) − x̄_m‖², with x̄ the fine-grid ground truth in
  photons per fine pixel (the photons of the emitters inside each fine pixel);
- (14) localization: Σ_m Σ_i h_δ(B_τ(x_K(θ; y_m))_i − 1[x̄_{m,i} > 0]), comparing a smoothed
  binarisation of the reconstruction with the support of the ground truth;
- (15) Huber h_δ(t) = t²/(2δ) for |t| ≤ δ, |t| − δ/2 otherwise;
- (16) smoothed binarisation s = clip((t − τ + ε_b)/(2ε_b), 0, 1), B_τ(t) = s²(3 − 2s),
  differentiable in t and in τ, so τ is learned with the other parameters.

The binarisation half-width ε_b is either absolute (photons) or relative to τ
(ε_b = c·τ, the paper's suggestion for learning τ); see :func:`binarise`.

Extension (not in the paper): ``tolerance_px`` = r > 0 in :func:`localization_loss` does
not penalise detections within r fine pixels of a true pixel. With exact-pixel matching
(r = 0) and fine pixels much smaller than the localization precision — high density and
few photons, as in the ISBI 2013 data — every off-by-one detection costs a false positive
*and* leaves a false negative, so the loss is smallest with no detection at all and
training drives τ above every pixel; r = 1 removes that degeneracy.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from stormfold.errors import UserError

LOSSES = ("reconstruction", "localization")
REDUCTIONS = ("sum", "mean")


def huber(t: torch.Tensor, delta: float) -> torch.Tensor:
    """Huber function (15), element-wise: t²/(2δ) for |t| ≤ δ, |t| − δ/2 otherwise."""
    if not delta > 0:
        raise UserError(f"Huber delta must be > 0, got {delta}")
    a = t.abs()
    return torch.where(a <= delta, t * t / (2.0 * delta), a - 0.5 * delta)


def binarise(t: torch.Tensor, tau: torch.Tensor | float, eps_b: float,
             relative: bool = True) -> torch.Tensor:
    """Smoothed binarisation (16): B_τ(t) = s²(3 − 2s), s = clip((t − τ + ε_b)/(2ε_b), 0, 1).

    Parameters
    ----------
    t : Tensor
        Reconstruction values (photons per fine pixel).
    tau : Tensor or float
        Threshold τ (same units); B_τ(τ) = 1/2.
    eps_b : float
        Half-width of the smooth transition: in photons, or as a fraction of τ when
        ``relative`` (ε_b = eps_b·τ).
    relative : bool
        Interpret ``eps_b`` relative to τ.

    Returns
    -------
    Tensor
        Values in [0, 1]: 0 below τ − ε_b, 1 above τ + ε_b, smooth (C¹) in between.
    """
    if not eps_b > 0:
        raise UserError(f"binarisation width must be > 0, got {eps_b}")
    tau = torch.as_tensor(tau, dtype=t.dtype, device=t.device)
    width = eps_b * tau.abs() if relative else torch.as_tensor(eps_b, dtype=t.dtype,
                                                               device=t.device)
    width = width.clamp(min=1e-12)
    s = ((t - tau + width) / (2.0 * width)).clamp(0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _reduce(per_frame: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return per_frame.sum()
    if reduction == "mean":
        return per_frame.mean()
    raise UserError(f"unknown reduction {reduction!r}: use sum or mean")


def reconstruction_loss(x: torch.Tensor, target: torch.Tensor,
                        reduction: str = "sum") -> torch.Tensor:
    """Loss (13): Σ_m ½‖x_m − x̄_m‖² (``mean``: divided by the number of frames).

    ``x`` and ``target`` are (B, H, W) fine-grid images in photons per fine pixel.
    """
    per_frame = 0.5 * ((x - target) ** 2).flatten(-2).sum(-1)
    return _reduce(per_frame, reduction)


def localization_loss(x: torch.Tensor, target: torch.Tensor, tau: torch.Tensor | float,
                      delta: float = 0.1, eps_b: float = 0.5, relative: bool = True,
                      tolerance_px: int = 0, reduction: str = "sum") -> torch.Tensor:
    """Loss (14): Σ_m Σ_i h_δ(B_τ(x_m)_i − 1[x̄_{m,i} > 0]), optionally with a tolerance.

    Parameters
    ----------
    x, target : Tensor, shape (B, H, W)
        Reconstruction and fine-grid ground truth (photons or a 0/1 mask; only the support
        x̄ > 0 is used).
    tau, delta, eps_b, relative
        Threshold τ, Huber δ and binarisation width (see :func:`binarise`).
    tolerance_px : int
        0 (default) is the paper's loss (14). r > 0 counts a true pixel as found when a
        binarised detection lies within the (2r+1)² square around it, and a detection as
        false only when no true pixel lies in its square:
        Σ h_δ(1 − max_{N_r(i)} B)·1[i true] + Σ h_δ(B_j)·1[no true pixel in N_r(j)].
        For r = 0 this is exactly (14) (h_δ is even).
    reduction : {"sum", "mean"}
        ``mean`` divides by the number of frames.
    """
    support = (target > 0).to(x.dtype)
    b = binarise(x, tau, eps_b, relative)
    r = int(tolerance_px)
    if r < 0:
        raise UserError(f"tolerance_px must be ≥ 0, got {tolerance_px}")
    if r == 0:
        per_pixel = huber(b - support, delta)
    else:
        k = 2 * r + 1
        def pool(t: torch.Tensor) -> torch.Tensor:  # max over the (2r+1)² square
            return F.max_pool2d(t.unsqueeze(1), k, stride=1, padding=r).squeeze(1)

        per_pixel = (huber(1.0 - pool(b), delta) * support
                     + huber(b, delta) * (1.0 - pool(support)))
    return _reduce(per_pixel.flatten(-2).sum(-1), reduction)
