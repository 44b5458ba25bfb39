"""The semi-blind SOFI model: the unrolled solver on the variance-domain operator, its units
and its model file.

The lower-level problem is min_{r ≥ 0} ½‖(H∘H)r + s − y‖² + λ‖r‖₁ (LS fidelity, SPEC §5–6)
with y the measured cumulant image Ĝ₂(lag) and s the camera-noise offset
(:func:`stormfold.sofi.theory.noise_offset`), solved by :class:`UnrolledAPG` on
:class:`SquaredBlurDownsample`, whose PSF σ is learned with ρ and the step sizes.

**Units.** Cumulants are photons² and span orders of magnitude with the brightness, so the
solver works in units of ``variance_scale``, the mean intensity cumulant of one fluorophore
in the training data (stored with the model): y/scale in, r/scale out. In these units a
reconstructed fine pixel holds about the number of fluorophores in it, and the learned
binarisation threshold τ is dimensionless (τ·scale photons²).

``model.yaml`` (``engine: sofi``): ``upsampling`` L, ``pixel_size_nm``, ``lag``,
``variance_scale`` (photons²), ``sigma_nm`` / ``sigma_fine_px`` (learned) and
``sigma_init_nm``, ``solver`` (K, projection, ε, inertia, init), ``theta`` (ρ, α_k, τ),
``threshold_photons2``, ``bounds``, ``extraction``, ``camera``, ``training``, ``command``,
``seed``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from stormfold.errors import UserError
from stormfold.modelfile import check_state_dict, load_model, model_section, save_model
from stormfold.physics.operator import SquaredBlurDownsample
from stormfold.sofi.statistics import check_order_lag
from stormfold.unrolled.solver import UnrolledAPG

ENGINE = "sofi"


def build_sofi_solver(upsampling: int, sigma_fine_px: float, learn_sigma: bool = True,
                      iterations: int = 100, projection: str = "cubic", eps: float = 0.01,
                      inertia: float = 3.0, init: str = "zero", rho: float = 0.01,
                      alpha: float = 1.0, tau: float = 0.5, checkpoint_segments: int = 1,
                      dtype: torch.dtype = torch.float32) -> UnrolledAPG:
    """:class:`UnrolledAPG` with LS fidelity on :class:`SquaredBlurDownsample` (σ in fine px).

    The background of the solver is the camera-noise offset s, passed per image to
    ``forward``; ``eps``, ``tau`` are in units of the variance scale.
    """
    operator = SquaredBlurDownsample(upsampling, sigma_fine_px, learn_sigma=learn_sigma,
                                     dtype=dtype)
    return UnrolledAPG(operator, iterations=iterations, fidelity="ls", projection=projection,
                       eps=eps, inertia=inertia, init=init, rho=rho, alpha=alpha, tau=tau,
                       background="given", background_photons=0.0,
                       checkpoint_segments=checkpoint_segments, dtype=dtype)


class SofiModel:
    """A (trained) semi-blind SOFI deconvolution model.

    Parameters
    ----------
    solver : UnrolledAPG
        On a :class:`SquaredBlurDownsample` (fixes L and σ in fine pixels).
    pixel_size_nm : float
        Camera pixel size the model is for (nm).
    lag : {0, 1}
        Cumulant lag the model was trained on.
    variance_scale : float
        Photons² per solver unit (see the module notes).
    camera : Camera, optional
        The training simulation's camera (fallback for movies without camera metadata).
    meta : dict, optional
        The model's metadata.
    """

    def __init__(self, solver: UnrolledAPG, pixel_size_nm: float, lag: int,
                 variance_scale: float, camera: Any = None, meta: dict | None = None):
        check_order_lag(2, lag)
        if not variance_scale > 0:
            raise UserError(f"variance_scale must be > 0, got {variance_scale}")
        self.solver = solver
        self.pixel_size_nm = float(pixel_size_nm)
        self.lag = int(lag)
        self.variance_scale = float(variance_scale)
        self.camera = camera
        self.meta = meta or {}

    # ------------------------------------------------------------------ properties
    @property
    def upsampling(self) -> int:
        return int(self.solver.op.factor)

    @property
    def fine_pixel_nm(self) -> float:
        return self.pixel_size_nm / self.upsampling

    @property
    def sigma_fine_px(self) -> float:
        return float(self.solver.op.sigma_fine_px.detach())

    @property
    def sigma_nm(self) -> float:
        return self.sigma_fine_px * self.fine_pixel_nm

    @property
    def tau(self) -> float:
        """Binarisation threshold τ in units of the variance scale."""
        return float(self.solver.tau.detach())

    @property
    def threshold_photons2(self) -> float:
        """τ in photons² per fine pixel."""
        return self.tau * self.variance_scale

    def training_camera(self) -> Any:
        return self.camera

    def training_pixel_size_nm(self) -> float:
        return self.pixel_size_nm

    # ------------------------------------------------------------------ inference
    def reconstruct(self, cumulant: np.ndarray, offset: np.ndarray | float = 0.0) -> np.ndarray:
        """Fine-grid intensity-cumulant image r (photons² per fine pixel).

        Parameters
        ----------
        cumulant : ndarray (rows, cols) or (B, rows, cols)
            Measured Ĝ₂(lag) in photons².
        offset : ndarray or float
            Camera-noise offset s in photons² (same shape, or a number).

        Returns
        -------
        ndarray (rows·L, cols·L) or (B, rows·L, cols·L), float32
        """
        y = np.asarray(cumulant, dtype=np.float64)
        single = y.ndim == 2
        if single:
            y = y[None]
        if y.ndim != 3:
            raise UserError(f"cumulant image must be (rows, cols), got shape {np.shape(cumulant)}")
        b = np.broadcast_to(np.asarray(offset, dtype=np.float64), y.shape)
        dev = next(iter(self.solver.parameters())).device
        dtype = self.solver.rho.dtype
        with torch.inference_mode():
            x = self.solver(torch.as_tensor(y / self.variance_scale, dtype=dtype, device=dev),
                            torch.as_tensor(b / self.variance_scale, dtype=dtype, device=dev))
        out = (x.cpu().numpy() * self.variance_scale).astype(np.float32)
        return out[0] if single else out

    def binarise(self, reconstruction: np.ndarray, threshold: float | None = None) -> np.ndarray:
        """Hard binarisation x ≥ τ (τ in units of the variance scale unless given), uint8."""
        tau = self.tau if threshold is None else float(threshold)
        x = np.asarray(reconstruction)
        return ((x >= tau * self.variance_scale) & (x > 0)).astype(np.uint8)

    def localizations(self, reconstruction: np.ndarray, threshold: float | None = None,
                      connectivity: int = 8, merge: bool = True) -> pd.DataFrame:
        """Fine pixels ≥ τ grouped into 8-connected components → localization table.

        One row per group at its intensity-weighted centroid (SPEC §1 fine-pixel centres),
        frame 0 (the whole movie), ``confidence`` = the group's total in units of the
        variance scale (≈ the number of fluorophores it holds).
        """
        from stormfold.localize.components import find_components
        from stormfold.table import make_table

        tau = self.tau if threshold is None else float(threshold)
        comp = find_components(np.asarray(reconstruction)[None], tau * self.variance_scale,
                               connectivity, merge)
        fine = self.fine_pixel_nm
        return make_table(np.zeros(len(comp), np.int64), comp.x_px * fine, comp.y_px * fine,
                          confidence=comp.total / self.variance_scale)

    def describe(self) -> dict[str, Any]:
        s = self.solver
        return {"engine": ENGINE, "upsampling": self.upsampling, "lag": self.lag,
                "sigma_nm": self.sigma_nm, "sigma_fine_px": self.sigma_fine_px,
                "variance_scale_photons2": self.variance_scale, "iterations": s.iterations,
                "rho": float(s.rho), "tau": self.tau,
                "threshold_photons2": self.threshold_photons2}


# --------------------------------------------------------------------------- files
def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def save_sofi_model(folder: str | Path, model: SofiModel, extra: dict[str, Any],
                    adopt: tuple = ()) -> Path:
    """Write ``weights.safetensors`` (θ and σ) and ``model.yaml`` (``engine: sofi``;
    ``adopt``: the training history files, listed in the manifest)."""
    from stormfold.config import to_dict

    s = model.solver
    meta: dict[str, Any] = {
        "engine": ENGINE, "upsampling": model.upsampling, "pixel_size_nm": model.pixel_size_nm,
        "lag": model.lag, "order": 2, "variance_scale": model.variance_scale,
        "sigma_fine_px": model.sigma_fine_px, "sigma_nm": model.sigma_nm,
        "solver": {"iterations": s.iterations, "fidelity": "ls", "projection": s.projection,
                   "eps": s.eps, "inertia": s.inertia, "init": s.init,
                   "alpha_units": "1/Lipschitz", "units": "variance_scale",
                   "learn_sigma": isinstance(s.op.sigma_fine_px, torch.nn.Parameter),
                   "radius_fine_px": int(s.op.radius)},
        "theta": s.theta(), "tau": model.tau, "threshold_photons2": model.threshold_photons2,
        "bounds": {k: [_finite(lo), _finite(hi)] for k, (lo, hi) in s.bounds.items()},
        "extraction": {"threshold": model.tau, "threshold_units": "variance_scale",
                       "connectivity": 8, "merge": True},
    }
    if model.camera is not None:
        meta["camera"] = to_dict(model.camera)
    meta.update(extra)
    return save_model(folder, s.state_dict(), meta, adopt)


def load_sofi_model(spec: str | Path, device: Any = "cpu") -> SofiModel:
    """Load a SOFI model (folder or ``builtin:NAME``); refuses other engines' models."""
    from stormfold.physics.camera import Camera

    tensors, meta = load_model(spec, engine=ENGINE, device="cpu")
    try:
        s = meta["solver"]
        solver = build_sofi_solver(int(meta["upsampling"]), float(meta["sigma_fine_px"]),
                                   learn_sigma=bool(s.get("learn_sigma", True)),
                                   iterations=int(s["iterations"]),
                                   projection=s.get("projection", "cubic"), eps=float(s["eps"]),
                                   inertia=float(s.get("inertia", 3.0)), init=s.get("init", "zero"))
        if "radius_fine_px" in s:
            solver.op.radius = int(s["radius_fine_px"])
        pixel_size, lag, scale = float(meta["pixel_size_nm"]), int(meta["lag"]), \
            float(meta["variance_scale"])
    except KeyError as exc:
        raise UserError(f"{spec}: model.yaml lacks {exc.args[0]!r} (not a SOFI model?)") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{spec}: bad SOFI model parameters in model.yaml ({exc})") from None
    check_state_dict(solver, tensors, str(spec))
    solver.load_state_dict(tensors)
    for name, (lo, hi) in (meta.get("bounds") or {}).items():
        solver.set_bounds(name, -math.inf if lo is None else lo, math.inf if hi is None else hi)
    solver = solver.to(device).eval()
    for p in solver.parameters():
        p.requires_grad_(False)
    camera = model_section(Camera, meta["camera"], "camera", str(spec)) \
        if isinstance(meta.get("camera"), dict) else None
    return SofiModel(solver, pixel_size, lag, scale, camera, meta)
