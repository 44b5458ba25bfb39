"""Model files of the unrolled method: θ in ``weights.safetensors``, the solver in ``model.yaml``.

``model.yaml`` (besides what :func:`stormfold.modelfile.save_model` adds) holds:

- ``engine: unrolled``, ``upsampling`` L, ``pixel_size_nm`` (camera pixel the model is for),
  ``sigma_nm`` and ``sigma_fine_px`` (the PSF; learned when ``learn_sigma``);
- ``solver``: iterations K, fidelity, projection and ε, inertia a, init, background handling
  (mode, photons, quantile, floor), ``alpha_units`` (``1/Lipschitz`` or ``absolute``),
  ``rho_per_iteration``;
- ``theta``: the learned values (ρ, τ, α_k, ...) in readable form, and ``bounds``;
- ``extraction``: threshold (= τ, or calibrated), connectivity, merge, method; when
  calibrated also its Jaccard curve and ``intensity_p05`` (5 % quantile of the
  localizations' x_K sums on the training frames; the engine's dim-movie warning);
- ``camera`` (the training simulation's camera), ``training`` (data, loss, optimiser, final
  loss, time), ``command``, ``seed``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from stormfold.errors import UserError
from stormfold.modelfile import check_size, check_state_dict, load_model, save_model
from stormfold.physics.operator import BandedBlurDownsample
from stormfold.unrolled.solver import UnrolledAPG

ENGINE = "unrolled"


def build_solver(upsampling: int, sigma_fine_px: float, learn_sigma: bool = False,
                 dtype: torch.dtype = torch.float32, **solver_kwargs: Any) -> UnrolledAPG:
    """An :class:`UnrolledAPG` on :class:`BandedBlurDownsample` (H = S·K_σ, factor L)."""
    operator = BandedBlurDownsample(upsampling, sigma_fine_px, learn_sigma=learn_sigma, dtype=dtype)
    return UnrolledAPG(operator, dtype=dtype, **solver_kwargs)


def solver_meta(solver: UnrolledAPG) -> dict[str, Any]:
    """The ``solver`` section of model.yaml (everything needed to rebuild the module)."""
    return {"iterations": solver.iterations, "fidelity": solver.fidelity,
            "projection": solver.projection, "eps": solver.eps, "inertia": solver.inertia,
            "init": solver.init,
            "alpha_units": "absolute" if solver.alpha_units == "absolute" else "1/Lipschitz",
            "rho_per_iteration": solver.rho_per_iteration,
            "background": {"mode": solver.background_mode,
                           "photons": solver.background_photons,
                           "quantile": solver.background_quantile,
                           "floor": solver.background_floor},
            "learn_sigma": isinstance(getattr(solver.op, "sigma_fine_px", None),
                                      torch.nn.Parameter)}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def save_unrolled_model(folder: str | Path, solver: UnrolledAPG, pixel_size_nm: float,
                        extra: dict[str, Any], adopt: tuple = ()) -> Path:
    """Write ``weights.safetensors`` (θ and the PSF σ) and ``model.yaml`` (``adopt``: the
    training history files, listed in the manifest)."""
    L = solver.op.factor
    sigma_fine = float(solver.op.sigma_fine_px.detach())
    meta: dict[str, Any] = {
        "engine": ENGINE, "upsampling": L, "pixel_size_nm": float(pixel_size_nm),
        "sigma_fine_px": sigma_fine, "sigma_nm": sigma_fine * pixel_size_nm / L,
        "solver": solver_meta(solver), "theta": solver.theta(),
        "bounds": {k: [_finite(lo), _finite(hi)] for k, (lo, hi) in solver.bounds.items()},
        "extraction": {"threshold": float(solver.tau.detach()), "connectivity": 8, "merge": True},
    }
    meta.update(extra)
    return save_model(folder, solver.state_dict(), meta, adopt)


#: Bounds on a model.yaml's sizes (beyond them the operators would not fit in memory).
MAX_UPSAMPLING = 16
MAX_ITERATIONS = 10_000
MAX_SIGMA_PX_PER_FACTOR = 10.0


def _require(meta: dict, key: str, source: str) -> Any:
    if key not in meta:
        raise UserError(f"{source}: model.yaml has no {key!r} (not an unrolled model?)")
    return meta[key]


def _alpha_units(text: str) -> str:
    units = {"1/lipschitz": "lipschitz", "lipschitz": "lipschitz", "absolute": "absolute"}
    key = str(text).lower()
    if key not in units:
        raise UserError(f"unknown alpha_units {text!r} in model.yaml: use 1/Lipschitz or absolute")
    return units[key]


def solver_from_meta(meta: dict[str, Any], source: str = "model") -> UnrolledAPG:
    """Rebuild the (untrained) solver described by a model.yaml mapping."""
    s = _require(meta, "solver", source)
    if not isinstance(s, dict):
        raise UserError(f"{source}: 'solver' in model.yaml must be a mapping")
    bg = s.get("background", {}) or {}
    factor = check_size(_require(meta, "upsampling", source), "upsampling", MAX_UPSAMPLING, source)
    check_size(s.get("iterations", 1), "solver.iterations", MAX_ITERATIONS, source)
    sigma = _require(meta, "sigma_fine_px", source)
    largest = MAX_SIGMA_PX_PER_FACTOR * factor
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) \
            or not 0 < sigma <= largest:
        raise UserError(f"{source}: sigma_fine_px must be in (0, {largest:g}] (at most "
                        f"{MAX_SIGMA_PX_PER_FACTOR:g} camera pixels), got {sigma!r}")
    try:
        solver = build_solver(int(_require(meta, "upsampling", source)),
                              float(_require(meta, "sigma_fine_px", source)),
                              learn_sigma=bool(s.get("learn_sigma", False)),
                              iterations=int(s["iterations"]), fidelity=s["fidelity"],
                              projection=s.get("projection", "cubic"), eps=float(s["eps"]),
                              inertia=float(s.get("inertia", 3.0)), init=s.get("init", "zero"),
                              alpha_units=_alpha_units(s.get("alpha_units", "1/Lipschitz")),
                              rho_per_iteration=bool(s.get("rho_per_iteration", False)),
                              background=bg.get("mode", "estimate"),
                              background_photons=float(bg.get("photons", 0.0)),
                              background_quantile=float(bg.get("quantile", 0.1)),
                              background_floor=float(bg.get("floor", 0.1)))
    except KeyError as exc:
        raise UserError(f"{source}: model.yaml solver section lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{source}: bad solver parameters in model.yaml ({exc})") from None
    for name, (lo, hi) in (meta.get("bounds") or {}).items():
        solver.set_bounds(name, -math.inf if lo is None else lo, math.inf if hi is None else hi)
    return solver


def load_unrolled_model(spec: str | Path, device: torch.device | str = "cpu"
                        ) -> tuple[UnrolledAPG, dict[str, Any]]:
    """Load a trained solver (folder or ``builtin:NAME``); refuses other engines' models."""
    tensors, meta = load_model(spec, engine=ENGINE, device="cpu")
    solver = solver_from_meta(meta, str(spec))
    check_state_dict(solver, tensors, str(spec))
    solver.load_state_dict(tensors)
    # Training keeps every parameter in its box; weights outside it were edited or damaged
    # (review 21: ρ = −1 and negative steps loaded silently).
    for name, p, lo, hi in solver.bounded_parameters():
        if bool((p < lo).any() or (p > hi).any()):
            raise UserError(f"{spec}: weight {name} lies outside its box [{lo:g}, {hi:g}] "
                            f"(min {float(p.min()):g}, max {float(p.max()):g}): not a model "
                            f"stormfold trained")
    return solver.to(device).eval(), meta
