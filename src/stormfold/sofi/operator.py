"""The variance-domain forward operator H∘H of second-order SOFI (SPEC §6).

The SOFI cumulant of a camera pixel i is Σ_j (H_ij)²·r_j + s_i (see
:mod:`stormfold.sofi.theory`): the fluorophores' intensity cumulants r on the fine grid,
seen through the *element-wise square* of the imaging matrix H = S·K_σ (SPEC §3). H_ij is
the fraction of fine pixel j's light that falls in camera pixel i, i.e. the pixel-integrated
PSF κ = box_L ∗ k_σ evaluated at the offset between them, so

    (H∘H) r = decimate_L(κ² ∗ r),

a convolution with the squared pixel-integrated PSF followed by keeping every L-th sample —
exactly the structure of H with the kernel w = box_L ∗ k_σ replaced by w². The Gaussian is
separable, so κ² = (w ⊗ w)² = w² ⊗ w² and the operator is two strided 1-D correlations with
w² (or the equivalent banded matrix products). Its adjoint is exact for the same reason as
H's. σ stays a (learnable) parameter inside κ, so ∂(H∘H)/∂σ comes from autograd.

The squared PSF is narrower by about √2 than the PSF (exactly √2 for a Gaussian without
pixel integration), which is where SOFI's resolution gain comes from.
"""
from __future__ import annotations

import torch

from stormfold.unrolled.operator import BandedBlurDownsample


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
