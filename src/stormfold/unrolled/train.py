"""Learning θ of the unrolled solver (the upper-level problem), full batch.

The unrolled engine supplies its solver, loss and decoder to the training lifecycle of
:mod:`stormfold.training`. Two entry points:

- :func:`fit` — the optimisation loop on tensors: frames y (photons), fine-grid targets
  x̄, a loss, an optimiser (SGP by default, projected Adam as alternative); used by the
  experiments and the SOFI trainer;
- :func:`train_unrolled` — what ``stormfold train unrolled`` runs: build the training data
  (simulated from a preset, or a given movie and its ground truth), build the solver, fit,
  and write the model folder with a CSV + PNG log of the loss and of θ per outer iteration,
  resumable from ``MODEL_DIR/checkpoint``.

Targets (:func:`stormfold.training.fine_targets`): each emitter of the ground truth goes to
the fine pixel that contains it. For the reconstruction loss (13) the target pixel holds the
emitter's photons (summed when several share the pixel), so x̄ is in the units of x; the
localization loss (14) uses only the support 1[x̄ > 0].
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd
import torch

from stormfold import __version__
from stormfold.config import Bounds, from_dict, to_dict
from stormfold.errors import UserError
from stormfold.training import (CHECKPOINT_DIR, TrainingData, TrainingRun, check_at_most,
                                check_lr, fine_targets, movie_data, read_config_file,
                                simulated_data, without)
from stormfold.training.guards import check_alive
from stormfold.training import calibrate_threshold as calibrate_by_jaccard
from stormfold.unrolled.fit import (LOG_CSV, LOG_PNG, RESUME_FIELDS, build_optimizer,
                                    check_fit_memory, default_learn, fit, upper_loss,
                                    write_log)
from stormfold.unrolled.model import ENGINE, MAX_ITERATIONS, MAX_UPSAMPLING
from stormfold.unrolled.solver import UnrolledAPG

__all__ = ["CHECKPOINT_DIR", "LOG_CSV", "LOG_PNG", "UnrolledTrainConfig", "build_optimizer",
           "default_learn", "fine_targets", "fit", "load_train_config", "train_unrolled",
           "upper_loss", "write_log"]


# --------------------------------------------------------------------------- configuration
def check_solver_size(upsampling: int, iterations: int) -> None:
    """The largest fine grid and unroll depth a model may have (:mod:`.model` refuses to read
    larger ones, so a longer training could never be used)."""
    check_at_most(upsampling, MAX_UPSAMPLING, "solver.upsampling",
                  "a model file allows no finer grid")
    check_at_most(iterations, MAX_ITERATIONS, "solver.iterations",
                  "a model file allows no deeper unrolling")


@dataclass
class DataConfig:
    """Training data: a simulation (preset + overrides) or a given movie with its truth.

    Attributes
    ----------
    preset : str
        Simulator preset (``stormfold simulate --preset``).
    simulation : dict
        Overrides of the simulation parameters, nested like ``simulation.yaml``.
    n_frames : int
        Number of training frames (all used in every outer iteration: full batch).
    movie, truth : str, optional
        A movie (ADU) and its ground-truth table instead of a simulation; the first
        ``n_frames`` frames are used. The camera comes from the movie's metadata, else
        ``camera``.
    pixel_size_nm : float, optional
        Pixel size of a given movie without metadata.
    camera : dict, optional
        Camera parameters (:class:`stormfold.physics.Camera` fields) for a given movie.
    nan_policy, axes, z, channel
        How a given movie is read (:func:`stormfold.io.movie.open_movie`).
    """

    preset: str = "challenge2016"
    simulation: dict = field(default_factory=dict)
    n_frames: int = 16
    movie: Optional[str] = None
    truth: Optional[str] = None
    pixel_size_nm: Optional[float] = None
    camera: Optional[dict] = None
    nan_policy: Literal["error", "zero", "median"] = "error"
    axes: Optional[str] = None
    z: Optional[int] = None
    channel: Optional[int] = None

    def validate(self) -> None:
        if self.n_frames < 1:
            raise UserError(f"data.n_frames must be ≥ 1, got {self.n_frames}")
        if (self.movie is None) != (self.truth is None):
            raise UserError("give both a movie and its ground truth (--movie and --truth)")


@dataclass
class SolverConfig:
    """The lower-level solver (see :class:`stormfold.unrolled.solver.UnrolledAPG`).

    ``background_photons`` and ``sigma_nm`` default to the simulation's values;
    ``background`` is ``given`` (the simulation's background), ``estimate`` (per frame, from
    the data) or ``learned``;
    ``alpha_units`` is ``lipschitz`` (α_k/Lip) or ``absolute`` (the paper's steps);
    ``rho_per_iteration`` learns one ρ_k per iteration (beyond the paper).
    """

    upsampling: int = 4
    iterations: int = 100
    fidelity: Literal["ls", "kl"] = "ls"
    projection: Literal["cubic", "symmetric"] = "cubic"
    eps: float = 0.1
    inertia: float = 3.0
    init: Literal["zero", "adjoint"] = "zero"
    alpha_units: Literal["lipschitz", "absolute"] = "lipschitz"
    rho_per_iteration: bool = False
    background: Literal["given", "estimate", "learned"] = "estimate"
    background_photons: Optional[float] = None
    background_quantile: float = 0.1
    background_floor: float = 0.1
    sigma_nm: Optional[float] = None
    learn_sigma: bool = False
    checkpoint_segments: int = 4

    def validate(self) -> None:
        if self.upsampling < 1:
            raise UserError(f"solver.upsampling must be ≥ 1, got {self.upsampling}")
        if self.iterations < 1:
            raise UserError(f"solver.iterations must be ≥ 1, got {self.iterations}")
        check_solver_size(self.upsampling, self.iterations)
        if self.eps < 0:
            raise UserError(f"solver.eps must be ≥ 0, got {self.eps}")
        if self.sigma_nm is not None and self.sigma_nm <= 0:
            raise UserError(f"solver.sigma_nm must be > 0, got {self.sigma_nm}")
        if self.checkpoint_segments < 1:
            raise UserError("solver.checkpoint_segments must be ≥ 1")


@dataclass
class ParamsConfig:
    """Initial θ, its box bounds and which parameters are learned.

    Attributes
    ----------
    rho, alpha : float
        Initial ρ (λ = ρ·λ_max) and α_k (units of ``solver.alpha_units``, 1/Lip by default).
    tau : float, optional
        Initial binarisation threshold τ (photons per fine pixel). Default with the
        localization loss: the value reached by as many pixels of x_K (at the initial θ) as
        the targets have emitter pixels; 0 with the reconstruction loss, where τ is not
        learned and every non-zero pixel counts (the paper's "n.a.").
    rho_bounds : (float, float)
    alpha_bounds : (float, float)
        Box of α_k in units of ``solver.alpha_units`` (1/Lip by default). Default
        [0, 4/3]: with the inertia β_k → 1 the iteration on a quadratic stays stable for
        steps below 2(1 + β)/(1 + 2β)/Lip, which tends to 4/3 (docs/unrolled.md); steps
        near the SPEC's 2/Lip made x_K collapse on dense frames (ISBI 2013: 2.5 % of the
        signal recovered at α = 1.79 against 80 % at α ≤ 1.3). ``[0, 2]`` is the SPEC's box,
        ``[0, .inf]`` with ``solver.alpha_units: absolute`` the paper's (α ≥ 0 only).
    tau_bounds : (float, float), optional
        Default (1e-3·τ_max, τ_max) with τ_max half the largest pixel of x_K at the initial θ
        (the paper's "half the maximum pixel value, to avoid null reconstructions").
    background_bounds : (float, float), optional
        For a learned background (photons).
    sigma_bounds : (float, float)
        For a learned σ, relative to the initial σ.
    learn : list of str, optional
        Parameter names to learn. Default: rho, alpha, and tau with the localization loss,
        plus background / operator.sigma_fine_px when those are learnable.
    """

    rho: float = 0.02
    alpha: float = 1.0
    tau: Optional[float] = None
    rho_bounds: Bounds = (0.0, 1.0)
    alpha_bounds: Bounds = (0.0, 4.0 / 3.0)
    tau_bounds: Optional[Bounds] = None
    background_bounds: Optional[Bounds] = None
    sigma_bounds: Bounds = (0.5, 2.0)
    learn: Optional[list[str]] = None

    def validate(self) -> None:
        for name in ("rho_bounds", "alpha_bounds", "tau_bounds", "background_bounds",
                     "sigma_bounds"):
            box = getattr(self, name)
            if box is not None and not box[0] <= box[1]:
                raise UserError(f"params.{name}: need lo ≤ hi, got {list(box)}")
        # A negative step climbs the objective; ρ > 1 is a λ above λ_max (x ≡ 0).
        for name, (lo, hi), top in (("rho_bounds", self.rho_bounds, 1.0),
                                    ("alpha_bounds", self.alpha_bounds, float("inf"))):
            if lo < 0 or hi > top:
                raise UserError(f"params.{name} {[lo, hi]} must lie within [0, {top:g}]")
        if not self.rho_bounds[0] <= self.rho <= self.rho_bounds[1]:
            raise UserError(f"params.rho={self.rho} is outside rho_bounds {list(self.rho_bounds)}")
        if not self.alpha_bounds[0] <= self.alpha <= self.alpha_bounds[1]:
            raise UserError(f"params.alpha={self.alpha} is outside alpha_bounds "
                            f"{list(self.alpha_bounds)}")


@dataclass
class LossConfig:
    """Upper-level loss: ``reconstruction`` (13) or ``localization`` (14–16).

    ``tolerance_px`` > 0 selects the tolerant variant of (14) (see
    :func:`stormfold.unrolled.losses.localization_loss`); 0 is the paper's loss, which on
    dense frames drives τ above every pixel (an empty reconstruction costs less than
    detections one fine pixel off), hence the default 1.
    """

    kind: Literal["reconstruction", "localization"] = "localization"
    huber_delta: float = 0.1
    binarise_eps: float = 0.5
    binarise_relative: bool = True
    tolerance_px: int = 1

    def validate(self) -> None:
        if self.huber_delta <= 0 or self.binarise_eps <= 0:
            raise UserError("loss.huber_delta and loss.binarise_eps must be > 0")
        if self.tolerance_px < 0:
            raise UserError("loss.tolerance_px must be ≥ 0")


@dataclass
class OptimConfig:
    """Upper-level optimiser (SGP by default; see :class:`stormfold.unrolled.sgp.SGP`).

    ``max_backtracks``: SGP stops when this many Armijo trials (steps down to 0.4^n of the
    projected step) do not decrease the loss; once the loss has stalled, more trials only
    cost full evaluations (we saw 12 per iteration at a loss constant to 5 digits).
    """

    optimizer: Literal["sgp", "adam"] = "sgp"
    outer_iterations: int = 50
    memory: int = 1
    per_block: bool = True
    step_min: float = 1e-5
    step_max: float = 1e3
    gamma: float = 1e-4
    beta: float = 0.4
    abb_memory: int = 3
    abb_tau: float = 0.5
    first_move: float = 0.02
    max_backtracks: int = 10
    tol: float = 1e-7
    adam_lr: float = 0.02
    checkpoint_every: int = 5

    def validate(self) -> None:
        if self.outer_iterations < 1:
            raise UserError(f"optim.outer_iterations must be ≥ 1, got {self.outer_iterations}")
        if self.checkpoint_every < 1:
            raise UserError("optim.checkpoint_every must be ≥ 1")
        if self.max_backtracks < 1:
            raise UserError("optim.max_backtracks must be ≥ 1")
        check_lr(self.adam_lr, "optim.adam_lr")


@dataclass
class ExtractionConfig:
    """How the engine turns x_K into localizations (stored in model.yaml).

    Attributes
    ----------
    calibrate : bool
        After training, choose the extraction threshold that maximises the Jaccard index at
        ``tolerance_nm`` on the training frames (as Deep-STORM's calibration does; see
        :func:`calibrate_threshold`); otherwise the threshold is the learned τ (SPEC §5).
    tolerance_nm : float
        Matching tolerance of the calibration.
    factors : list of float
        Candidate thresholds, as multiples of τ.
    connectivity : int
        8 or 4: pixels joined into one localization (``components``).
    method : {"components", "peaks"}
        ``components`` (SPEC §5): connected groups of pixels ≥ the threshold, at their
        centroid. ``peaks`` (beyond the paper): 3×3 local maxima of x_K whose 3×3 sum is ≥
        the threshold, at the window's centroid (see :mod:`stormfold.unrolled.engine`).
    """

    calibrate: bool = True
    tolerance_nm: float = 100.0
    factors: list[float] = field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5, 1.0, 2.0])
    connectivity: int = 8
    method: Literal["components", "peaks"] = "peaks"

    def validate(self) -> None:
        if self.connectivity not in (4, 8):
            raise UserError(f"extraction.connectivity must be 4 or 8, got {self.connectivity}")
        if self.tolerance_nm <= 0 or not self.factors or min(self.factors) <= 0:
            raise UserError("extraction: tolerance_nm and factors must be > 0")
        if self.method == "peaks" and not self.calibrate:
            # τ is a per-pixel binarisation level; the peaks' threshold is a 3×3 sum
            raise UserError("extraction.method peaks needs extraction.calibrate: true (its "
                            "threshold is a 3×3 sum of x_K, not the learned per-pixel τ); "
                            "or use extraction.method components")


@dataclass
class UnrolledTrainConfig:
    """Everything ``stormfold train unrolled`` needs (``--config`` YAML / ``--set`` keys)."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    params: ParamsConfig = field(default_factory=ParamsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    extraction: ExtractionConfig = field(default_factory=ExtractionConfig)

    def validate(self) -> None:
        if self.seed < 0:
            raise UserError(f"seed must be ≥ 0, got {self.seed}")


# --------------------------------------------------------------------------- data
def build_training_data(data: DataConfig, seed: int) -> TrainingData:
    """Simulate the training frames, or read the given movie and truth (first n frames)."""
    from stormfold.physics.camera import Camera

    if data.movie is None:
        from stormfold.simulate import build_config

        return simulated_data(build_config(preset=data.preset, overrides=dict(data.simulation),
                                           n_frames=data.n_frames, seed=seed))
    camera = None if data.camera is None else from_dict(Camera, data.camera, where="data.camera")
    return movie_data(data.movie, data.truth, n_frames=data.n_frames,
                      pixel_size_nm=data.pixel_size_nm, camera=camera,
                      movie_options={"nan_policy": data.nan_policy, "axes": data.axes,
                                     "z": data.z, "channel": data.channel})


def build_solver_for(config: UnrolledTrainConfig, td: TrainingData, target_photons: np.ndarray,
                     dtype: torch.dtype = torch.float32) -> UnrolledAPG:
    """The solver of ``config`` for these data, with θ initialised and bounds set."""
    from stormfold.unrolled.model import build_solver

    s, p = config.solver, config.params
    sigma_nm = s.sigma_nm if s.sigma_nm is not None else td.sigma_nm
    if sigma_nm is None:
        raise UserError("the PSF width is unknown: set solver.sigma_nm "
                        "(e.g. --set solver.sigma_nm=110)")
    bg = s.background_photons if s.background_photons is not None else td.background_photons
    if s.background in ("given", "learned") and bg is None:
        raise UserError("the background is unknown: set solver.background_photons or use "
                        "solver.background=estimate")
    bg = float(bg or 0.0)
    if s.fidelity == "kl" and s.background in ("given", "learned") and bg <= 0:
        raise UserError("the Kullback–Leibler fidelity needs a background > 0: set "
                        "solver.background_photons or use solver.background=estimate")
    tau0 = p.tau if p.tau is not None else 0.0
    fine_px = td.pixel_size_nm / s.upsampling
    solver = build_solver(s.upsampling, sigma_nm / fine_px, learn_sigma=s.learn_sigma, dtype=dtype,
                          iterations=s.iterations, fidelity=s.fidelity, projection=s.projection,
                          eps=s.eps, inertia=s.inertia, init=s.init, rho=p.rho, alpha=p.alpha,
                          alpha_units=s.alpha_units, rho_per_iteration=s.rho_per_iteration,
                          tau=tau0, background=s.background, background_photons=bg,
                          background_quantile=s.background_quantile,
                          background_floor=s.background_floor,
                          checkpoint_segments=s.checkpoint_segments)
    solver.set_bounds("rho", *p.rho_bounds)
    solver.set_bounds("alpha", *p.alpha_bounds)
    if p.background_bounds is not None:
        solver.set_bounds("background", *p.background_bounds)
    if s.learn_sigma:
        sig = sigma_nm / fine_px
        solver.set_bounds("operator.sigma_fine_px", p.sigma_bounds[0] * sig,
                          p.sigma_bounds[1] * sig)
    if config.loss.kind == "localization":
        tau_auto, tau_max = initial_threshold(solver, torch.from_numpy(td.photons),
                                              target_photons)
        solver.set_bounds("tau", *(p.tau_bounds if p.tau_bounds is not None
                                   else (1e-3 * tau_max, tau_max)))
        if p.tau is None:
            with torch.no_grad():
                solver.tau.fill_(tau_auto)
        solver.project_parameters_()
    else:
        with torch.no_grad():
            for name, param, lo, hi in solver.bounded_parameters():
                if name != "tau":
                    param.clamp_(lo, hi)
    return solver


def _positive_values(solver: UnrolledAPG, y: torch.Tensor, batch: int = 16) -> torch.Tensor:
    values = []
    with torch.no_grad():
        for a in range(0, len(y), batch):
            x = solver(y[a:a + batch])
            values.append(x[x > 0].float().cpu())
    return torch.cat(values) if values else torch.zeros(0)


def initial_threshold(solver: UnrolledAPG, y: torch.Tensor, target: np.ndarray,
                      batch: int = 16) -> tuple[float, float]:
    """Initial τ and its upper bound from x_K at the current (initial) θ.

    τ₀: the value reached by as many pixels of x_K as the targets have emitter pixels.
    τ_max: half the largest pixel of x_K — the paper's bound "half the maximum pixel value,
    to avoid null reconstructions": above it the binarisation would be empty.
    """
    n_true = int((np.asarray(target) > 0).sum())
    v = _positive_values(solver, y, batch)
    if v.numel() == 0 or n_true == 0:
        return 1.0, 1.0
    tau_max = 0.5 * float(v.max())
    return min(float(torch.topk(v, min(n_true, v.numel())).values[-1]), tau_max), tau_max


def matching_threshold(solver: UnrolledAPG, y: torch.Tensor, target: np.ndarray,
                       batch: int = 16) -> float:
    """The value reached by as many pixels of x_K as the targets have emitter pixels."""
    n_true = int((np.asarray(target) > 0).sum())
    v = _positive_values(solver, y, batch)
    if v.numel() == 0 or n_true == 0:
        return 1.0
    return float(torch.topk(v, min(n_true, v.numel())).values[-1])


def calibrate_threshold(solver: UnrolledAPG, y: torch.Tensor, truth: pd.DataFrame,
                        pixel_size_nm: float, extraction: ExtractionConfig,
                        batch: int = 16) -> dict[str, Any]:
    """The extraction threshold with the best Jaccard at ``tolerance_nm`` on these frames.

    The unrolled decoder for :func:`stormfold.training.calibrate_threshold`: x_K is computed
    once; each candidate only re-extracts. Candidates: ``factors``·τ for ``components``
    (pixel values); for ``peaks`` (and for ``components`` when τ = 0, i.e. not learned) the
    0, 5, …, 90 % quantiles of the candidates' values on these frames (3×3 sums, or pixel
    values). Also records ``intensity_p05``, the 5 % quantile of the localizations'
    intensities at the chosen threshold (the engine's dim-movie warning).
    """
    from stormfold.localize.peaks import find_peaks
    from stormfold.unrolled.engine import INTENSITY_COLUMN, extract

    with torch.no_grad():
        x = torch.cat([solver(y[a:a + batch]).cpu() for a in range(0, len(y), batch)])
    tau = float(solver.tau.detach())
    fine_nm = pixel_size_nm / solver.op.factor
    quantiles = np.linspace(0.0, 0.9, 19)
    factors: dict[float, float] = {}
    if extraction.method == "peaks":
        values = find_peaks(x, 0.0).mass.double().numpy()
    elif tau > 0:
        factors = {f * tau: f for f in extraction.factors}
        values = None
    else:
        values = x[x > 0].double().numpy()
    candidates = list(factors) if values is None else (
        sorted(set(np.quantile(values, quantiles).tolist())) if values.size else [tau])
    xn = x.numpy()

    def decode(threshold: float) -> pd.DataFrame:
        return extract(xn, threshold, 0, fine_nm, extraction.method, extraction.connectivity)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cal = calibrate_by_jaccard(decode, truth, candidates, extraction.tolerance_nm, len(xn),
                                   "training frames")
    # The lowest quantile keeps every peak or pixel > 0: nothing lies below it to try, so
    # only a best candidate at the top end is worth the warning.
    if values is None or cal.threshold >= max(candidates):
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    kept = decode(cal.threshold)[INTENSITY_COLUMN].to_numpy()
    rows = [{"threshold": t, "jaccard": j, **({"factor_of_tau": factors[t]} if t in factors
                                              else {})} for t, j in cal.curve]
    return {"threshold": cal.threshold, "calibrated": True, "jaccard": cal.jaccard,
            "tolerance_nm": extraction.tolerance_nm, "method": extraction.method,
            "intensity_p05": float(np.quantile(kept, 0.05)) if kept.size else None,
            "candidates": rows}


# --------------------------------------------------------------------------- CLI entry
def load_train_config(config_file: str | Path | None = None,
                      overrides: dict[str, Any] | None = None) -> UnrolledTrainConfig:
    """Training configuration from a YAML file and overrides (nested mapping)."""
    from stormfold.config import merge

    data = read_config_file(config_file, UnrolledTrainConfig, "data", DataConfig.preset)
    return from_dict(UnrolledTrainConfig, merge(data, overrides or {}))


def train_unrolled(config: UnrolledTrainConfig, out_dir: str | Path, resume: bool = False,
                   device: Any = "cpu", progress: bool = True,
                   command: list[str] | None = None) -> dict[str, Any]:
    """Train θ as configured and write the model folder.

    Writes ``MODEL_DIR/weights.safetensors``, ``model.yaml``, ``training_log.csv``,
    ``training_log.png`` and ``checkpoint/`` (every ``optim.checkpoint_every`` outer
    iterations; ``resume=True`` continues from it, with the same configuration except
    ``optim.outer_iterations``).

    Returns
    -------
    dict
        The written ``model.yaml`` content.
    """
    from stormfold.modelfile import read_model_meta
    from stormfold.unrolled.model import save_unrolled_model

    cfg_dict = to_dict(config)
    run = TrainingRun(out_dir, resume, without(cfg_dict, "optim.outer_iterations"),
                      "optim.outer_iterations", command, engine=ENGINE)
    wall_start = time.perf_counter()
    torch.manual_seed(config.seed)
    td = build_training_data(config.data, config.seed)
    geometry = td.geometry.upsampled(config.solver.upsampling)
    value = "photons" if "photons" in td.truth.columns else "binary"
    target_np = fine_targets(td.truth, td.n_frames, geometry.fine_shape, geometry.fine_pixel_nm,
                             value)
    if config.loss.kind == "reconstruction" and value != "photons":
        raise UserError("the reconstruction loss needs photons in the ground truth")
    check_fit_memory(td.photons.shape, config.solver.upsampling, config.solver.iterations,
                     config.solver.checkpoint_segments, "train unrolled")
    solver = build_solver_for(config, td, target_np).to(device)
    y = torch.from_numpy(td.photons).to(device)
    target = torch.from_numpy(target_np).to(device)
    learn = config.params.learn or default_learn(solver, config.loss.kind)
    for name in learn:
        if name not in dict(solver.named_parameters()):
            raise UserError(f"params.learn: unknown parameter {name!r} "
                            f"(learnable: {', '.join(n for n, _ in solver.named_parameters())})")
    optimizer = build_optimizer(solver, learn, config.optim)
    restored = run.restore(solver, optimizer, fields=RESUME_FIELDS)
    history = restored[1].get("history", []) if restored else []
    start = int(restored[1].get("iteration", 0)) if restored else 0
    run.out_dir.mkdir(parents=True, exist_ok=True)
    done = list(history)

    def on_iteration(it: int, record: dict, opt) -> None:
        done.append(record)
        if it % config.optim.checkpoint_every == 0 or it == config.optim.outer_iterations \
                or getattr(opt, "converged", False):
            run.save(solver, opt, state={"iteration": it, "history": done})
            write_log(done, run.out_dir)

    t0 = time.perf_counter()
    history, optimizer = fit(solver, y, target, config.loss, config.optim, learn=learn,
                             optimizer=optimizer, start_iteration=start, history=history,
                             on_iteration=on_iteration, progress=progress)
    write_log(history, run.out_dir)
    final = history[-1]["loss"] if history else None
    extra = {
        "camera": to_dict(td.camera),
        "training": {"data": td.description, "n_frames": td.n_frames,
                     "pixel_size_nm": td.pixel_size_nm, "config": cfg_dict, "learned": learn,
                     "loss": config.loss.kind, "optimizer": config.optim.optimizer,
                     "outer_iterations_done": int(history[-1]["iteration"]) if history else 0,
                     "final_loss": final, "initial_loss": history[0]["loss"] if history else None,
                     "evaluations": int(history[-1]["evaluations"]) if history else 0,
                     "seconds": round(time.perf_counter() - t0, 2), "target_value": value},
        "command": command or [], "seed": config.seed, "stormfold_version": __version__,
    }
    extra["extraction"] = {"threshold": float(solver.tau.detach()), "calibrated": False,
                           "connectivity": config.extraction.connectivity, "merge": True,
                           "method": config.extraction.method}
    if config.extraction.calibrate:
        cal = calibrate_threshold(solver, y, td.truth, td.pixel_size_nm, config.extraction)
        extra["extraction"].update(cal)
        check_alive(cal["jaccard"], f"mean α {float(solver.alpha.detach().mean()):.3g}, "
                    f"ρ {float(solver.rho.detach().mean()):.3g}", run.out_dir / CHECKPOINT_DIR,
                    "train on more frames (--frames), with --loss reconstruction, or with a "
                    "smaller optim.step_max")
    # Data simulation, fit and calibration of this call (a resumed run: this part only).
    extra["training"]["wall_seconds"] = round(time.perf_counter() - wall_start, 1)
    save_unrolled_model(run.out_dir, solver, td.pixel_size_nm, extra, (LOG_CSV, LOG_PNG))
    return read_model_meta(run.out_dir)


def train_from_cli(out: str | Path, preset: str | None = None,
                   config_file: str | Path | None = None,
                   overrides: list[str] | dict | None = None, seed: int | None = None,
                   device: Any = None, progress: bool = True, resume: bool | None = None,
                   command: list[str] | None = None) -> dict[str, Any]:
    """Build the configuration (preset → ``config_file`` → ``overrides`` → ``seed``) and train.

    The trainer of the engine registry (``stormfold run`` with ``engine.train``).
    ``resume=None`` continues an unfinished checkpoint in ``out`` when there is one and
    starts afresh otherwise.
    """
    from stormfold.config import merge, parse_overrides

    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    flags: dict[str, Any] = {}
    if preset is not None:
        flags["data"] = {"preset": preset}
    if seed is not None:
        flags["seed"] = seed
    config = load_train_config(config_file, merge(extra, flags))
    if resume is None:
        resume = TrainingRun.unfinished(out)
    return train_unrolled(config, out, resume=resume, device=device or "cpu", progress=progress,
                          command=command)
