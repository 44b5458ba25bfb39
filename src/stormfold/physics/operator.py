"""The forward operator H = S·K_σ on a fine grid of factor L (SPEC §3), in torch.

K_σ convolves the fine-grid image with a normalised Gaussian PSF (integrated over each
fine pixel, zero boundary); S sums each L×L block into one camera pixel. Because the
Gaussian is separable and S only keeps every L-th output, H is applied as two strided
1-D correlations with the kernel w = box_L ∗ k_σ (length 2R + L). Hᵀ is its exact adjoint, so ⟨Hx, r⟩ = ⟨x, Hᵀr⟩ holds to float precision and both
cost O(N·(2R+L)) per camera pixel instead of a full fine-grid convolution. Hᵀ is written
in polyphase form (L small correlations per axis) because transposed convolutions are
several times slower on the CPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stormfold.errors import UserError


def gaussian_kernel_1d(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixel-integrated, normalised 1-D Gaussian on offsets −radius…radius (σ in pixels).

    Differentiable in ``sigma``.
    """
    offsets = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    scale = 1.0 / (math.sqrt(2.0) * sigma)
    k = 0.5 * (torch.erf((offsets + 0.5) * scale) - torch.erf((offsets - 0.5) * scale))
    return k / k.sum()


class BlurDownsample(nn.Module):
    """H = S·K_σ: blur on the fine grid, then sum L×L blocks onto the camera grid.

    Parameters
    ----------
    factor : int
        Upsampling factor L (fine pixels per camera pixel along each axis).
    sigma_fine_px : float
        PSF standard deviation in *fine* pixels.
    learn_sigma : bool
        Make σ a learnable ``nn.Parameter`` (semi-blind deconvolution); otherwise a buffer.
    radius : int, optional
        Kernel half-width in fine pixels; default ⌈4·σ⌉ (⌈4·1.5σ⌉ when σ is learned, so
        the support stays adequate as σ grows).

    Notes
    -----
    Tensors are (..., rows, cols): fine images (..., L·m, L·n), camera images (..., m, n).
    ``‖H‖² ≤ L²`` (equality away from the boundary), used as the Lipschitz constant of the
    least-squares gradient.
    """

    def __init__(self, factor: int, sigma_fine_px: float, learn_sigma: bool = False,
                 radius: int | None = None, dtype: torch.dtype = torch.float32):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise UserError(f"upsampling factor must be a positive integer, got {factor}")
        if not sigma_fine_px > 0:
            raise UserError(f"PSF sigma must be positive, got {sigma_fine_px} fine pixels")
        self.factor = int(factor)
        sigma = torch.tensor(float(sigma_fine_px), dtype=dtype)
        if learn_sigma:
            self.sigma_fine_px = nn.Parameter(sigma)
        else:
            self.register_buffer("sigma_fine_px", sigma)
        if radius is None:
            radius = math.ceil(4.0 * float(sigma_fine_px) * (1.5 if learn_sigma else 1.0))
        self.radius = max(1, int(radius))

    # ------------------------------------------------------------------ kernels
    def psf_kernel(self) -> torch.Tensor:
        """The 1-D fine-grid PSF k_σ (length 2R+1, sums to 1)."""
        return gaussian_kernel_1d(self.sigma_fine_px, self.radius)

    def decimation_kernel(self) -> torch.Tensor:
        """w = box_L ∗ k_σ (length 2R+L): the 1-D kernel of one camera pixel's response."""
        k = self.psf_kernel().view(1, 1, -1)
        box = torch.ones(1, 1, self.factor, dtype=k.dtype, device=k.device)
        return F.conv1d(k, box, padding=self.factor - 1).view(-1)

    # ------------------------------------------------------------------ operators
    @staticmethod
    def _as4d(t: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
        lead = t.shape[:-2]
        return t.reshape(-1, 1, t.shape[-2], t.shape[-1]), lead

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Hx: fine image(s) (..., L·m, L·n) → camera image(s) (..., m, n)."""
        L = self.factor
        if x.shape[-1] % L or x.shape[-2] % L:
            raise UserError(f"fine image shape {tuple(x.shape[-2:])} is not divisible by L={L}")
        x4, lead = self._as4d(x)
        w = self.decimation_kernel().to(x4.dtype)
        R = self.radius
        y = F.conv2d(x4, w.view(1, 1, 1, -1), stride=(1, L), padding=(0, R))
        y = F.conv2d(y, w.view(1, 1, -1, 1), stride=(L, 1), padding=(R, 0))
        return y.reshape(*lead, y.shape[-2], y.shape[-1])

    def _polyphase_kernels(self, w: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """Split w into L phase kernels so Hᵀ is L small correlations, not a transposed conv.

        From y_i = Σ_t w_t x_{Li+t−R}, the adjoint is x_{Lq+φ} = Σ_d w_{Ld+φ+R} r_{q−d}.
        Returns (L, E) weights ordered for a correlation, and the left/right padding.
        """
        L, R, T = self.factor, self.radius, w.numel()
        d_min = -((R + L - 1) // L) - 1
        d_max = (T - 1 - R) // L + 1
        d = torch.arange(d_max, d_min - 1, -1, device=w.device)  # reversed: conv → correlation
        idx = L * d[None, :] + torch.arange(L, device=w.device)[:, None] + R
        valid = (idx >= 0) & (idx < T)
        phases = torch.where(valid, w[idx.clamp(0, T - 1)], torch.zeros((), dtype=w.dtype,
                                                                       device=w.device))
        return phases, d_max, -d_min

    def A_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """Hᵀr: camera image(s) (..., m, n) → fine image(s) (..., L·m, L·n)."""
        L = self.factor
        r4, lead = self._as4d(r)
        m, n = r4.shape[-2:]
        phases, pad_lo, pad_hi = self._polyphase_kernels(self.decimation_kernel().to(r4.dtype))
        E = phases.shape[1]
        # Columns: L output channels, one per phase, then interleave them.
        t = F.conv2d(F.pad(r4, (pad_lo, pad_hi, 0, 0)), phases.view(L, 1, 1, E))
        t = t.permute(0, 2, 3, 1).reshape(-1, 1, m, n * L)
        # Rows, likewise.
        t = F.conv2d(F.pad(t, (0, 0, pad_lo, pad_hi)), phases.view(L, 1, E, 1))
        x = t.permute(0, 2, 1, 3).reshape(-1, m * L, n * L)
        return x.reshape(*lead, m * L, n * L)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """K_σ x on the fine grid (zero boundary, self-adjoint since k_σ is symmetric)."""
        x4, lead = self._as4d(x)
        k = self.psf_kernel().to(x4.dtype)
        R = self.radius
        y = F.conv2d(x4, k.view(1, 1, 1, -1), padding=(0, R))
        y = F.conv2d(y, k.view(1, 1, -1, 1), padding=(R, 0))
        return y.reshape(*lead, y.shape[-2], y.shape[-1])

    @property
    def norm_sq(self) -> float:
        """Upper bound of ‖H‖² (= L²), the Lipschitz constant of ∇½‖Hx − y‖²."""
        return float(self.factor ** 2)

    # ------------------------------------------------------------------ λ bound
    def lambda_max(self, y: torch.Tensor, background: torch.Tensor | float = 0.0,
                   fidelity: str = "ls") -> torch.Tensor:
        """Smallest λ for which x = 0 minimises f(x; y) + λ‖x‖₁ over x ≥ 0, per image.

        LS: max_j [Hᵀ(y − b)]_j; KL: max_j [Hᵀ(y/b − 1)]_j (b > 0 required).
        Returns a tensor of shape y.shape[:-2].
        """
        if fidelity == "ls":
            g = self.A_adjoint(y - background)
        elif fidelity == "kl":
            b = torch.as_tensor(background, dtype=y.dtype, device=y.device)
            if torch.any(b <= 0):
                raise UserError("Kullback–Leibler fidelity needs a strictly positive background")
            g = self.A_adjoint(y / b - 1.0)
        else:
            raise UserError(f"unknown fidelity {fidelity!r}: use ls or kl")
        return g.flatten(-2).amax(-1)
