"""Forward operators on a fine grid of factor L (SPEC §3), in torch, DeepInverse style.

Every operator is a :class:`LinearOperator`: ``A`` (fine → camera grid), its exact adjoint
``A_adjoint``, ``norm_sq`` (a bound of ‖A‖², the Lipschitz constant of the least-squares
gradient) and ``lambda_max`` (the smallest ℓ1 weight for which x = 0 is optimal). The
unrolled solver, the SOFI deconvolution and the tests use only that interface.

- :class:`BlurDownsample` — H = S·K_σ: K_σ convolves the fine-grid image with a normalised
  Gaussian PSF (integrated over each fine pixel, zero boundary); S sums each L×L block into
  one camera pixel. Because the Gaussian is separable and S only keeps every L-th output, H
  is applied as two strided 1-D correlations with the kernel w = box_L ∗ k_σ (length
  2R + L). Hᵀ is its exact adjoint, so ⟨Hx, r⟩ = ⟨x, Hᵀr⟩ holds to float precision and both
  cost O(N·(2R+L)) per camera pixel instead of a full fine-grid convolution. Hᵀ is written
  in polyphase form (L small correlations per axis) because transposed convolutions are
  several times slower on the CPU.
- :class:`BandedBlurDownsample` — the same H as two small dense (banded) matrix products,
  H x = M_r · x · M_cᵀ and Hᵀ r = M_rᵀ · r · M_c, with M_r (m × L·m), M_c (n × L·n) the
  matrices of the strided 1-D correlation with w. On a 64×64 camera frame (256×256 fine)
  the batched matrix products run about four times faster on the CPU than the strided and
  polyphase convolutions, because BLAS is far better tuned than single-channel ``conv2d``;
  the adjoint is exact by construction. The dense products cost O(m) per fine pixel, so
  frames larger than :data:`DENSE_MAX_PX` camera pixels along an axis fall back to the
  convolutions. The matrices are built from the differentiable kernel, so σ can be
  learned; they are cached while σ is a fixed buffer.
- :class:`SquaredBlurDownsample` — H∘H, the variance-domain operator of second-order SOFI
  (SPEC §6). The SOFI cumulant of a camera pixel i is Σ_j (H_ij)²·r_j + s_i (see
  :mod:`stormfold.sofi.theory`). H_ij is the pixel-integrated PSF κ = box_L ∗ k_σ at the
  offset between camera pixel i and fine pixel j, so (H∘H) r = decimate_L(κ² ∗ r): the
  structure of H with w replaced by w² (κ² = w² ⊗ w² since the Gaussian is separable).
  Its adjoint is exact for the same reason as H's; σ stays a (learnable) parameter inside
  κ, so ∂(H∘H)/∂σ comes from autograd. The squared PSF is narrower by about √2 than the
  PSF, which is where SOFI's resolution gain comes from.
"""
from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

from stormfold.errors import UserError
from stormfold.physics.psf import gaussian_kernel_1d

#: Largest camera-frame side (pixels) for which the dense matrix products are used.
DENSE_MAX_PX = 256


class LinearOperator(nn.Module, metaclass=abc.ABCMeta):
    """Base of the forward operators: ``A``, ``A_adjoint``, ``norm_sq``, ``lambda_max``.

    Tensors are (..., rows, cols). Subclasses implement :meth:`A`, :meth:`A_adjoint` and
    :attr:`norm_sq`; :meth:`lambda_max` and ``forward`` (= ``A``) come from here. Being an
    ``nn.Module``, an operator with a learnable parameter (the PSF σ) becomes part of the
    parameters θ of the solver that holds it.
    """

    @abc.abstractmethod
    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - operator notation
        """The forward map."""

    @abc.abstractmethod
    def A_adjoint(self, r: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """The exact adjoint of :meth:`A`."""

    @property
    @abc.abstractmethod
    def norm_sq(self) -> float:
        """Upper bound of ‖A‖₂², the Lipschitz constant of ∇½‖Ax − y‖²."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.A(x)

    def lambda_max(self, y: torch.Tensor, background: torch.Tensor | float = 0.0,
                   fidelity: str = "ls") -> torch.Tensor:
        """Smallest λ for which x = 0 minimises f(x; y) + λ‖x‖₁ over x ≥ 0, per image.

        LS: max_j [Aᵀ(y − b)]_j; KL: max_j [Aᵀ(y/b − 1)]_j (b > 0 required).
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


class BlurDownsample(LinearOperator):
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
        return gaussian_kernel_1d(self.sigma_fine_px, self.radius, integrated=True)

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


class BandedBlurDownsample(BlurDownsample):
    """:class:`~stormfold.physics.BlurDownsample` with ``A``/``A_adjoint`` as matrix products.

    Parameters are those of :class:`~stormfold.physics.BlurDownsample` (``factor`` L,
    ``sigma_fine_px`` in fine pixels, ``learn_sigma``, ``radius``, ``dtype``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cache: dict[tuple, torch.Tensor] = {}

    def band_matrix(self, n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The (n, L·n) matrix M with (M v)_i = Σ_t w_t v_{L·i + t − R} (zero outside)."""
        learn = self.sigma_fine_px.requires_grad and torch.is_grad_enabled()
        key = (n, dtype, device, float(self.sigma_fine_px.detach()))
        if not learn and key in self._cache:
            return self._cache[key]
        L, R = self.factor, self.radius
        w = self.decimation_kernel().to(dtype=dtype, device=device)
        T = w.numel()
        i = torch.arange(n, device=device)[:, None]
        j = torch.arange(n * L, device=device)[None, :]
        t = j - L * i + R
        valid = (t >= 0) & (t < T)
        m = torch.where(valid, w[t.clamp(0, T - 1)], torch.zeros((), dtype=dtype, device=device))
        if not learn:
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = m.detach()
        return m

    def _dense(self, m: int, n: int) -> bool:
        return max(m, n) <= DENSE_MAX_PX

    def A(self, x: torch.Tensor) -> torch.Tensor:
        """Hx: fine image(s) (..., L·m, L·n) → camera image(s) (..., m, n)."""
        L = self.factor
        m, n = x.shape[-2] // L, x.shape[-1] // L
        if x.shape[-2] % L or x.shape[-1] % L or not self._dense(m, n):
            return super().A(x)
        mr = self.band_matrix(m, x.dtype, x.device)
        mc = mr if n == m else self.band_matrix(n, x.dtype, x.device)
        return torch.matmul(torch.matmul(mr, x), mc.transpose(0, 1))

    def A_adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """Hᵀr: camera image(s) (..., m, n) → fine image(s) (..., L·m, L·n)."""
        m, n = r.shape[-2], r.shape[-1]
        if not self._dense(m, n):
            return super().A_adjoint(r)
        mr = self.band_matrix(m, r.dtype, r.device)
        mc = mr if n == m else self.band_matrix(n, r.dtype, r.device)
        return torch.matmul(torch.matmul(mr.transpose(0, 1), r), mc)


class SquaredBlurDownsample(BandedBlurDownsample):
    """H∘H = decimate_L(κ² ∗ ·): the element-wise square of H = S·K_σ.

    Parameters
    ----------
    factor : int
        Fine-grid factor L.
    sigma_fine_px : float
        PSF standard deviation σ (of the *intensity* PSF, not of its square) in fine pixels.
    learn_sigma : bool
        Make σ an ``nn.Parameter`` (semi-blind deconvolution).
    radius : int, optional
        Half-width of the fine-grid PSF support (default ⌈4σ⌉, ⌈6σ⌉ when learned).
    dtype : torch.dtype

    Notes
    -----
    ``A`` maps fine images (..., L·m, L·n) of intensity cumulants (photons² per fine pixel)
    to camera images (..., m, n) of cumulants (photons² per camera pixel); ``A_adjoint`` is
    its exact transpose; ``norm_sq`` bounds ‖H∘H‖² (the Lipschitz constant of the
    least-squares gradient); ``lambda_max`` is inherited (computed with ``A_adjoint``).
    """

    def decimation_kernel(self) -> torch.Tensor:
        """w² with w = box_L ∗ k_σ: the 1-D kernel of H∘H (length 2R+L)."""
        w = super().decimation_kernel()
        return w * w

    def intensity_kernel(self) -> torch.Tensor:
        """w = box_L ∗ k_σ, the 1-D kernel of H itself."""
        return super().decimation_kernel()

    @property
    def norm_sq(self) -> float:
        """Upper bound of ‖H∘H‖₂² (tight away from the image boundary).

        One axis is the strided correlation M with kernel v = w². MMᵀ is a convolution on
        the camera grid with the non-negative kernel a_d = Σ_t v_t·v_{t+L·d}, so
        ‖M‖² = ‖MMᵀ‖ ≤ Σ_d a_d = Σ_t v_t·c_{t mod L}, c_φ = Σ_{t ≡ φ (mod L)} v_t.
        The 2-D operator is M ⊗ M, whose norm is the product.
        """
        v = self.decimation_kernel().detach().double()
        L = self.factor
        phase = torch.arange(v.numel()) % L
        c = torch.zeros(L, dtype=v.dtype).index_add_(0, phase, v)
        return float((v * c[phase]).sum()) ** 2
