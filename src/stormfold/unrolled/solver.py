"""The unrolled accelerated projected gradient (Algorithm 1 of Bonettini et al., SPEC §5).

Lower-level problem (7): min_{x ≥ 0} f(x; y) + λ‖x‖₁ on the fine grid, solved by K
iterations of projected gradient with Chambolle–Dossal inertia and a smoothed projection:

    β_k = k / (k + 1 + a)
    z_k = x_k + β_k (x_k − x_{k−1})
    x_{k+1} = P_ε( z_k − (α_k / Lip) (∇f(z_k) + λ·1) )

Each iteration is differentiable, so the K iterations form a network whose parameters
θ = (ρ, α_0 … α_{K−1}, τ) are learned (:mod:`stormfold.unrolled.train`). Units: the data y
and the background b are photons per camera pixel; x is photons per fine pixel.

Design choices (stated here once):

- **Step sizes** α_k are stored in units of 1/Lip, the Lipschitz bound of ∇f for the frame
  (LS: ‖H‖²; KL: ‖H‖²·max(y/b²), per frame), so the SPEC box 0 ≤ α_k ≤ 2/Lip is [0, 2]
  for both fidelities and a trained model transfers between frames of different brightness.
- **λ = ρ·λ_max(y)** per frame with λ_max from the operator (Koulouri et al.), clamped at 0:
  when λ_max ≤ 0, x = 0 is optimal for every λ ≥ 0.
- **KL**: needs b > 0; y is clamped at 0 (read noise can make photons slightly negative);
  the gradient is taken at P_ε(z_k) because the extrapolated point can be negative, so
  H·P_ε(z) + b ≥ b > 0 and the quotient is always defined.
- **Background** b (photons per camera pixel): ``given`` (a number stored with the model, or
  a scalar/map passed to :meth:`UnrolledAPG.forward`), ``estimate`` (per frame: the
  ``background_quantile`` quantile of the frame after a 3×3 mean filter — the filter cuts
  the shot noise so the low quantile sits close to the mean background instead of
  1–2 standard deviations below it; the same on 32-px tiles, interpolated, where a frame's
  tiles differ beyond its shot noise: :func:`estimate_background_map`), or ``learned`` (one
  scalar, part of θ).
- **Operator**: any object with ``A``, ``A_adjoint``, ``norm_sq`` and
  ``lambda_max(y, b, fidelity)`` (DeepInverse style), e.g.
  :class:`~stormfold.physics.BlurDownsample` or a variance-domain operator for SOFI. If it is
  an ``nn.Module`` it becomes a submodule, so a learnable PSF σ is part of θ.
- **Speed**: under ``torch.no_grad``/``inference_mode`` a separate loop updates buffers in
  place (a handful of element-wise passes per iteration); with gradients the iteration is
  written functionally, P_ε is a custom autograd function that saves only its input, and
  ``checkpoint_segments`` > 1 recomputes segments of iterations in the backward pass to cut
  memory.
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stormfold.errors import UserError

FIDELITIES = ("ls", "kl")
PROJECTIONS = ("cubic", "symmetric")
BACKGROUND_MODES = ("given", "estimate", "learned")
INITS = ("zero", "adjoint")
ALPHA_UNITS = ("lipschitz", "absolute")


# --------------------------------------------------------------------------- projection
def smooth_projection(t: torch.Tensor, eps: float, kind: str = "cubic") -> torch.Tensor:
    """Smoothed projection P_ε onto x ≥ 0 (element-wise, differentiable).

    Parameters
    ----------
    t : Tensor
        Values (any shape), in the units of x (photons per fine pixel).
    eps : float
        Width ε of the smoothed region, same units; ``0`` gives the exact projection max(t, 0).
    kind : {"cubic", "symmetric"}
        ``cubic`` (default): 0 for t ≤ 0, t²(2ε − t)/ε² on (0, ε), t for t ≥ ε — keeps exact
        zeros. ``symmetric``: 0 for t ≤ −ε, (t + ε)²/(4ε) on (−ε, ε), t for t ≥ ε.

    Returns
    -------
    Tensor
        P_ε(t), same shape. Its derivative is continuous (C¹) for ε > 0.
    """
    if kind not in PROJECTIONS:
        raise UserError(f"unknown projection {kind!r}: use cubic or symmetric")
    if eps < 0:
        raise UserError(f"projection width eps must be ≥ 0, got {eps}")
    if eps == 0:
        return torch.relu(t)
    return _SmoothProjection.apply(t, float(eps), kind)


def _projection_derivative(t: torch.Tensor, eps: float, kind: str) -> torch.Tensor:
    if kind == "cubic":
        c = t.clamp(0.0, eps)
        # c(4ε − 3c)/ε² on (0, ε); 1 above.
        d = c.mul(-3.0).add_(4.0 * eps).mul_(c).div_(eps * eps)
    else:
        d = t.clamp(-eps, eps).add_(eps).div_(2.0 * eps)
    return d.masked_fill_(t >= eps, 1.0)


class _SmoothProjection(torch.autograd.Function):
    """P_ε with a hand-written derivative: saves only its input (one tensor per iteration)."""

    @staticmethod
    def forward(ctx, t, eps, kind):  # noqa: D401 - autograd API
        ctx.save_for_backward(t)
        ctx.eps, ctx.kind = eps, kind
        return _project_inplace(t.clone(), eps, kind, torch.empty_like(t))

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return _projection_derivative(t, ctx.eps, ctx.kind).mul_(grad), None, None


def _project_inplace(t: torch.Tensor, eps: float, kind: str, work: torch.Tensor) -> torch.Tensor:
    """P_ε(t) written into ``t`` (inference only); ``work`` is a buffer of t's shape."""
    if eps == 0:
        return t.clamp_(min=0.0)
    if kind == "cubic":
        torch.clamp(t, 0.0, eps, out=work)                 # c
        t.sub_(eps).clamp_(min=0.0)                        # (t − ε)₊
        t.addcmul_(work, work, value=2.0 / eps)            # + 2c²/ε
        work.pow_(3)
        return t.add_(work, alpha=-1.0 / (eps * eps))      # − c³/ε²
    torch.clamp(t, -eps, eps, out=work).add_(eps)          # c + ε
    t.sub_(eps).clamp_(min=0.0)
    return t.addcmul_(work, work, value=1.0 / (4.0 * eps))


# --------------------------------------------------------------------------- background
def estimate_background(y: torch.Tensor, quantile: float = 0.1, smooth: int = 3) -> torch.Tensor:
    """Per-frame background (photons per pixel): a low quantile of the mean-filtered frame.

    Parameters
    ----------
    y : Tensor, shape (B, rows, cols)
        Frames in photons.
    quantile : float
        Quantile in (0, 1) of the filtered pixel values.
    smooth : int
        Side of the mean filter (odd; 1 = none). Edges are replicated.

    Returns
    -------
    Tensor, shape (B,)
    """
    if not 0.0 < quantile < 1.0:
        raise UserError(f"background quantile must be in (0, 1), got {quantile}")
    f = y.reshape(-1, 1, y.shape[-2], y.shape[-1])
    if smooth > 1:
        p = smooth // 2
        f = F.avg_pool2d(F.pad(f, (p, p, p, p), mode="replicate"), smooth, stride=1)
    return torch.quantile(f.reshape(f.shape[0], -1), quantile, dim=1)


#: Tiles (camera pixels) on which :func:`estimate_background_map` takes the quantile.
BACKGROUND_TILE_PX = 32
#: A frame whose tile levels spread by more than this many standard deviations of the
#: shot noise of its level (√(b + 1), photons) gets a background map, else one number.
BACKGROUND_SPREAD_SD = 3.0


def estimate_background_map(y: torch.Tensor, quantile: float = 0.1, smooth: int = 3,
                            tile_px: int = BACKGROUND_TILE_PX) -> torch.Tensor:
    """Per-frame background (photons per pixel) that follows a gradient across the frame.

    :func:`estimate_background` on tiles of about ``tile_px`` (the frame shared evenly),
    interpolated linearly between tile centres and extrapolated beyond the outer ones (by at
    most half the tiles' spread, never below 0), then the same on the residual (a low
    quantile of a tile holding a gradient lies below its centre's level), where the tile
    levels of a frame spread by more than :data:`BACKGROUND_SPREAD_SD` × √(b + 1) photons; elsewhere the frame's single
    level, as before. One level per frame found false emitters all over the brighter side of
    an illumination gradient (review 17: 0→20 photons/px across 64 px, 5 localizations per
    emitter, Jaccard 0.19).

    Returns
    -------
    Tensor, shape (B, rows, cols) or (B, 1, 1)
        (B, 1, 1) when no frame of the batch needs a map.
    """
    level = estimate_background(y, quantile, smooth)
    rows, cols = y.shape[-2], y.shape[-1]
    # Tiles of about tile_px, shared evenly: a 1–4 px remainder tile read its quantile off a
    # few pixels and switched the map on in uniform frames (review 19).
    tr, tc = max(1, round(rows / tile_px)), max(1, round(cols / tile_px))
    th, tw = -(-rows // tr), -(-cols // tc)
    if tr * tc == 1:
        return level.view(-1, 1, 1)
    f = y.reshape(-1, 1, rows, cols).to(torch.float32)
    if smooth > 1:
        p = smooth // 2
        f = F.avg_pool2d(F.pad(f, (p, p, p, p), mode="replicate"), smooth, stride=1)
    wr = _interpolation(rows, th).to(f)
    wc = _interpolation(cols, tw).to(f)

    def tile_quantiles(values: torch.Tensor) -> torch.Tensor:
        padded = torch.full((values.shape[0], tr * th, tc * tw), float("nan"),
                            dtype=values.dtype, device=values.device)
        padded[:, :rows, :cols] = values
        tiles = padded.reshape(-1, tr, th, tc, tw).permute(0, 1, 3, 2, 4)
        return torch.nanquantile(tiles.reshape(-1, tr, tc, th * tw), quantile, dim=-1)

    tile_level = tile_quantiles(f[:, 0])
    low, high = tile_level.flatten(1).amin(1), tile_level.flatten(1).amax(1)
    uneven = high - low > BACKGROUND_SPREAD_SD * torch.sqrt(level.clamp(min=0) + 1)
    if not bool(uneven.any()):
        return level.view(-1, 1, 1)
    smooth_map = wr @ tile_level @ wc.T
    # A low quantile of a tile that holds a gradient sits below its centre's level; on the
    # residual the gradient is gone and the quantile gives the tile's offset.
    smooth_map = smooth_map + wr @ tile_quantiles(f[:, 0] - smooth_map) @ wc.T
    # Extrapolated to the edges by at most the tiles' spread, never below 0.
    margin = (high - low).view(-1, 1, 1)
    smooth_map = torch.maximum(torch.minimum(smooth_map, high.view(-1, 1, 1) + margin),
                               (low.view(-1, 1, 1) - margin).clamp(min=0))
    flat = level.view(-1, 1, 1).to(smooth_map).expand_as(smooth_map)
    return torch.where(uneven.view(-1, 1, 1), smooth_map, flat).to(y.dtype)


def _broadcast(a: torch.Size, b: torch.Size) -> tuple | None:
    """The shape ``a`` and ``b`` broadcast to, or None when they do not."""
    try:
        return tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        return None


def _interpolation(n: int, tile_px: int) -> torch.Tensor:
    """(n, n_tiles) weights interpolating tile-centre values linearly onto n pixels, and
    extrapolating linearly beyond the outer centres (a gradient goes on to the edge)."""
    from stormfold.localize.background import interpolation_matrix

    return torch.from_numpy(interpolation_matrix(n, tile_px, extrapolate=True))


# --------------------------------------------------------------------------- the module
class UnrolledAPG(nn.Module):
    """K unrolled iterations of the accelerated projected gradient with learned θ.

    Parameters
    ----------
    operator : object
        Forward operator with ``A`` (fine → camera), ``A_adjoint``, ``norm_sq`` (bound of
        ‖H‖²) and ``lambda_max(y, b, fidelity)``; e.g.
        :class:`stormfold.physics.operator.BandedBlurDownsample`.
    iterations : int
        Number of unrolled iterations K.
    fidelity : {"ls", "kl"}
        Least squares ½‖Hx + b − y‖² or Kullback–Leibler Σ[(Hx+b) − y + y·log(y/(Hx+b))].
    projection : {"cubic", "symmetric"}
        Smoothed projection P_ε (see :func:`smooth_projection`).
    eps : float
        Width ε of P_ε in photons per fine pixel (0: exact projection).
    inertia : float
        Chambolle–Dossal parameter a > 2 of β_k = k/(k + 1 + a).
    init : {"zero", "adjoint"}
        x_{−1} = x_0 = 0, or Hᵀ(y − b)₊/‖H‖².
    rho, alpha, tau : float
        Initial θ: λ = ρ·λ_max(y); every α_k (units of ``alpha_units``); binarisation
        threshold τ (photons per fine pixel, used by the localization loss and the extraction).
    alpha_units : {"lipschitz", "absolute"}
        ``lipschitz`` (default): the step of iteration k is α_k/Lip with Lip the frame's
        Lipschitz bound, so one θ suits frames of any brightness. ``absolute``: the step is
        α_k itself, as in the paper (for LS, where Lip = ‖H‖² is fixed, the two differ by
        the constant factor ‖H‖²; for KL, Lip depends on the frame).
    rho_per_iteration : bool
        Extension (not in the paper): learn one ρ_k per iteration (a thresholding schedule,
        λ_k = ρ_k·λ_max) instead of one ρ. ``rho`` is then a (K,) tensor.
    background : {"given", "estimate", "learned"}
        How b is obtained when :meth:`forward` gets none (see the module notes).
    background_photons : float
        b for ``given`` and the initial value for ``learned``.
    background_quantile : float
        Quantile for ``estimate``.
    background_floor : float
        Smallest b allowed for KL (photons), so Lip stays finite.
    bounds : dict, optional
        Box bounds {name: (lo, hi)} overriding the defaults ρ ∈ [0, 1], α_k ∈ [0, 2],
        τ ∈ [0, ∞), b ∈ [floor, ∞), σ ∈ [σ/2, 2σ].
    checkpoint_segments : int
        With gradients, recompute the iterations in this many segments during the backward
        pass (1 = store everything).

    Notes
    -----
    The learnable parameters are plain named tensors: ``rho`` (scalar, or (K,) with
    ``rho_per_iteration``), ``alpha`` (K,),
    ``tau`` (scalar), ``background`` (scalar, ``learned`` only) and the operator's
    ``sigma_fine_px`` when it is learnable; :meth:`bounded_parameters` lists them with their
    boxes and :meth:`project_parameters_` clamps them into the boxes.
    """

    def __init__(self, operator: Any, iterations: int = 100, fidelity: str = "ls",
                 projection: str = "cubic", eps: float = 0.1, inertia: float = 3.0,
                 init: str = "zero", rho: float = 0.1, alpha: float = 1.0, tau: float = 0.0,
                 alpha_units: str = "lipschitz", rho_per_iteration: bool = False,
                 background: str = "given", background_photons: float = 0.0,
                 background_quantile: float = 0.1, background_floor: float = 0.1,
                 bounds: dict[str, tuple[float, float]] | None = None,
                 checkpoint_segments: int = 1, dtype: torch.dtype = torch.float32):
        super().__init__()
        if int(iterations) != iterations or iterations < 1:
            raise UserError(f"iterations must be a positive integer, got {iterations}")
        if fidelity not in FIDELITIES:
            raise UserError(f"unknown fidelity {fidelity!r}: use ls or kl")
        if projection not in PROJECTIONS:
            raise UserError(f"unknown projection {projection!r}: use cubic or symmetric")
        if init not in INITS:
            raise UserError(f"unknown init {init!r}: use zero or adjoint")
        if alpha_units not in ALPHA_UNITS:
            raise UserError(f"unknown alpha_units {alpha_units!r}: use lipschitz or absolute")
        if background not in BACKGROUND_MODES:
            raise UserError(f"unknown background mode {background!r}: "
                            f"use given, estimate or learned")
        if not eps >= 0:
            raise UserError(f"eps must be ≥ 0, got {eps}")
        if not inertia > 2:
            raise UserError(f"inertia a must be > 2 (Chambolle–Dossal), got {inertia}")
        if background_photons < 0 or background_floor <= 0:
            raise UserError("background_photons must be ≥ 0 and background_floor > 0")
        if fidelity == "kl" and background in ("given", "learned") and background_photons <= 0:
            raise UserError("the Kullback–Leibler fidelity needs a strictly positive background "
                            "(set background_photons > 0 or use background=estimate)")
        if isinstance(operator, nn.Module):
            self.operator = operator
        else:
            self._operator = operator
        self.iterations = int(iterations)
        self.fidelity = fidelity
        self.projection = projection
        self.eps = float(eps)
        self.inertia = float(inertia)
        self.init = init
        self.background_mode = background
        self.background_photons = float(background_photons)
        self.background_quantile = float(background_quantile)
        self.background_floor = float(background_floor)
        self.checkpoint_segments = max(1, int(checkpoint_segments))
        self.alpha_units = alpha_units
        self.rho_per_iteration = bool(rho_per_iteration)
        rho_shape = (self.iterations,) if self.rho_per_iteration else ()
        self.rho = nn.Parameter(torch.full(rho_shape, float(rho), dtype=dtype))
        self.alpha = nn.Parameter(torch.full((self.iterations,), float(alpha), dtype=dtype))
        self.tau = nn.Parameter(torch.tensor(float(tau), dtype=dtype))
        if background == "learned":
            self.background = nn.Parameter(torch.tensor(float(background_photons), dtype=dtype))
        self.bounds: dict[str, tuple[float, float]] = {
            "rho": (0.0, 1.0), "alpha": (0.0, 2.0), "tau": (0.0, math.inf),
            "background": (background_floor if fidelity == "kl" else 0.0, math.inf)}
        sigma = getattr(self.op, "sigma_fine_px", None)
        if isinstance(sigma, nn.Parameter):
            s = float(sigma.detach())
            self.bounds["operator.sigma_fine_px"] = (0.5 * s, 2.0 * s)
        for name, box in (bounds or {}).items():
            self.set_bounds(name, *box)

    # ------------------------------------------------------------------ parameters
    @property
    def op(self) -> Any:
        """The forward operator."""
        return self.operator if "operator" in self._modules else self._operator

    def set_bounds(self, name: str, lo: float, hi: float) -> None:
        """Set the box [lo, hi] of parameter ``name`` (``rho``, ``alpha``, ``tau``, ...)."""
        if not lo <= hi:
            raise UserError(f"bounds of {name}: need lo ≤ hi, got [{lo}, {hi}]")
        self.bounds[name] = (float(lo), float(hi))

    def bounded_parameters(self, names: list[str] | None = None
                           ) -> Iterator[tuple[str, nn.Parameter, float, float]]:
        """Yield (name, parameter, lo, hi) for the learnable parameters (optionally selected)."""
        params = dict(self.named_parameters())
        for name in names if names is not None else params:
            if name not in params:
                raise UserError(f"unknown parameter {name!r} (learnable: {', '.join(params)})")
            lo, hi = self.bounds.get(name, (-math.inf, math.inf))
            yield name, params[name], lo, hi

    @torch.no_grad()
    def project_parameters_(self) -> None:
        """Clamp every learnable parameter into its box."""
        for _, p, lo, hi in self.bounded_parameters():
            p.clamp_(lo, hi)

    def theta(self) -> dict[str, Any]:
        """Current θ as plain Python numbers (for logs and model.yaml)."""
        out: dict[str, Any] = {}
        for name, p in self.named_parameters():
            v = p.detach().cpu()
            out[name] = v.item() if v.ndim == 0 else v.tolist()
        return out

    # ------------------------------------------------------------------ model pieces
    def get_background(self, y: torch.Tensor, background: Any = None) -> torch.Tensor:
        """b as a tensor broadcastable to y (B, rows, cols), in photons per camera pixel."""
        if isinstance(background, str):
            if background != "estimate":
                raise UserError(f"background must be a number, a tensor or 'estimate', "
                                f"got {background!r}")
            mode = background
            background = None
        else:
            mode = self.background_mode
        if background is None:
            if mode == "estimate":
                b = estimate_background_map(y.detach(), self.background_quantile)
            elif mode == "learned":
                b = self.background
            else:
                b = torch.tensor(self.background_photons)
        else:
            b = torch.as_tensor(background)
            if b.ndim == 1:
                if b.numel() != y.shape[0]:
                    raise UserError(f"per-frame background has {b.numel()} values for "
                                    f"{y.shape[0]} frames")
                b = b.view(-1, 1, 1)
            elif b.ndim >= 2 and _broadcast(b.shape, y.shape) != tuple(y.shape):
                raise UserError(f"background of shape {tuple(b.shape)} does not fit frames of "
                                f"shape {tuple(y.shape)}: give a number, one value per frame, "
                                "a (rows, cols) map or one per frame")
        b = b.to(dtype=y.dtype, device=y.device)
        if self.fidelity == "kl":
            if background is not None and bool(torch.any(b <= 0)):
                raise UserError("the Kullback–Leibler fidelity needs a strictly positive "
                                "background")
            b = b.clamp(min=self.background_floor)
        return b

    def lipschitz(self, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Lipschitz bound of ∇f per frame, shape (B, 1, 1) (LS: ‖H‖²; KL: ‖H‖²·max y/b²)."""
        norm_sq = float(self.op.norm_sq)
        if self.fidelity == "ls":
            return torch.full((y.shape[0], 1, 1), norm_sq, dtype=y.dtype, device=y.device)
        ratio = (y / (b * b)).flatten(-2).amax(-1).view(-1, 1, 1)
        # A frame with y ≈ 0 has x = 0 as solution; keep the step finite there.
        return norm_sq * ratio.clamp(min=1e-6)

    def regularisation(self, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """λ = ρ·max(λ_max(y), 0) per frame: shape (B, 1, 1), or (K, B, 1, 1) per iteration."""
        lam_max = self.op.lambda_max(y, b, self.fidelity).reshape(-1, 1, 1).clamp(min=0.0)
        if self.rho_per_iteration:
            return self.rho.view(-1, 1, 1, 1) * lam_max.unsqueeze(0)
        return self.rho * lam_max

    def step_scale(self, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Factor turning α_k into a step, shape (B, 1, 1): 1/Lip, or 1 for absolute steps."""
        if self.alpha_units == "absolute":
            return torch.ones((y.shape[0], 1, 1), dtype=y.dtype, device=y.device)
        return 1.0 / self.lipschitz(y, b)

    def gradient(self, z: torch.Tensor, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """∇f at z (KL: at the projected point P_ε(z))."""
        if self.fidelity == "ls":
            return self.op.A_adjoint(self.op.A(z) + b - y)
        p = smooth_projection(z, self.eps, self.projection)
        return self.op.A_adjoint(1.0 - y / (self.op.A(p) + b))

    def objective(self, x: torch.Tensor, y: torch.Tensor, b: torch.Tensor,
                  lam: torch.Tensor) -> torch.Tensor:
        """Lower-level energy f(x; y) + λ·1ᵀx per frame, shape (B,)."""
        hx = self.op.A(x) + b
        if self.fidelity == "ls":
            f = 0.5 * ((hx - y) ** 2).flatten(-2).sum(-1)
        else:
            ylog = torch.where(y > 0, y * torch.log(y.clamp(min=1e-30) / hx), torch.zeros_like(y))
            f = (hx - y + ylog).flatten(-2).sum(-1)
        if lam.ndim == 4:  # per-iteration λ_k: the energy of the last iteration
            lam = lam[-1]
        return f + lam.reshape(-1) * x.flatten(-2).sum(-1)

    def prepare(self, y: torch.Tensor, background: Any = None):
        """(y, b, λ, step scale) for a batch of frames (y clamped at 0 for KL)."""
        if y.ndim == 2:
            y = y.unsqueeze(0)
        if y.ndim != 3:
            raise UserError(f"frames must be (rows, cols) or (frames, rows, cols), got shape "
                            f"{tuple(y.shape)}")
        y = y.to(dtype=self.rho.dtype, device=self.rho.device)
        if self.fidelity == "kl":
            y = y.clamp(min=0.0)
        b = self.get_background(y, background)
        return y, b, self.regularisation(y, b), self.step_scale(y, b)

    def initial_point(self, y: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x_0 (= x_{−1}): zeros, or Hᵀ(y − b)₊/‖H‖² (fine grid, photons)."""
        if self.init == "zero":
            # The adjoint gives the fine-grid shape for any operator.
            return torch.zeros_like(self.op.A_adjoint(y.detach()))
        return self.op.A_adjoint(torch.relu(y - b)) / float(self.op.norm_sq)

    # ------------------------------------------------------------------ iterations
    def _iterate(self, x: torch.Tensor, x_prev: torch.Tensor, k0: int, k1: int, y, b, lam,
                 inv_lip) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.inertia
        for k in range(k0, k1):
            beta = k / (k + 1.0 + a)
            z = torch.lerp(x_prev, x, 1.0 + beta) if k > 0 else x  # x + β(x − x_prev)
            step = self.alpha[k] * inv_lip
            lam_k = lam[k] if lam.ndim == 4 else lam
            t = torch.addcmul(z - step * lam_k, step, self.gradient(z, y, b), value=-1.0)
            x_prev, x = x, smooth_projection(t, self.eps, self.projection)
        return x, x_prev

    @torch.no_grad()
    def _iterate_inplace(self, x: torch.Tensor, y, b, lam, inv_lip) -> torch.Tensor:
        """The same iterations with four preallocated fine-grid buffers (no autograd)."""
        a = self.inertia
        x = x.clone()
        x_prev = x.clone()
        z = torch.empty_like(x)
        work = torch.empty_like(x)
        steps = self.alpha.detach().view(-1, 1, 1, 1) * inv_lip.unsqueeze(0)  # (K, B, 1, 1)
        yb = y - b if self.fidelity == "ls" else None
        for k in range(self.iterations):
            beta = k / (k + 1.0 + a)
            torch.sub(x, x_prev, out=z)
            z.mul_(beta).add_(x)
            # x_prev is free from here on: it serves as scratch space.
            if self.fidelity == "ls":
                g = self.op.A_adjoint(self.op.A(z).sub_(yb))
            else:
                p = _project_inplace(work.copy_(z), self.eps, self.projection, x_prev)
                g = self.op.A_adjoint(torch.div(y, self.op.A(p).add_(b)).neg_().add_(1.0))
            g.add_(lam[k] if lam.ndim == 4 else lam)
            z.addcmul_(g, steps[k], value=-1.0)
            _project_inplace(z, self.eps, self.projection, work)
            x_prev, x, z = x, z, x_prev
        return x

    def forward(self, y: torch.Tensor, background: Any = None) -> torch.Tensor:
        """x_K for a batch of frames.

        Parameters
        ----------
        y : Tensor, shape (B, rows, cols) or (rows, cols)
            Frames in photons per camera pixel.
        background : float, Tensor or "estimate", optional
            b in photons: scalar, per frame (B,), or a map (rows, cols)/(B, rows, cols);
            ``"estimate"`` estimates it from each frame. Default: the background mode.

        Returns
        -------
        Tensor, shape (B, rows·L, cols·L)
            The reconstruction x_K, photons per fine pixel.
        """
        y, b, lam, inv_lip = self.prepare(y, background)
        x = self.initial_point(y, b)
        needs_grad = torch.is_grad_enabled() and (
            y.requires_grad or any(p.requires_grad for p in self.parameters()))
        if not needs_grad:
            return self._iterate_inplace(x, y, b, lam, inv_lip)
        x_prev = x
        bounds = torch.linspace(0, self.iterations, self.checkpoint_segments + 1).round().long()
        for k0, k1 in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            if k1 <= k0:
                continue
            if self.checkpoint_segments > 1:
                x, x_prev = checkpoint(self._iterate, x, x_prev, k0, k1, y, b, lam, inv_lip,
                                       use_reentrant=False)
            else:
                x, x_prev = self._iterate(x, x_prev, k0, k1, y, b, lam, inv_lip)
        return x

    def extra_repr(self) -> str:
        return (f"iterations={self.iterations}, fidelity={self.fidelity}, projection="
                f"{self.projection}, eps={self.eps}, inertia={self.inertia}, init={self.init}, "
                f"background={self.background_mode}")
