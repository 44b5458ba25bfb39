"""Training the semi-blind SOFI model (``stormfold train sofi``).

Two stages, both full batch and deterministic, with the Scaled Gradient Projection
optimiser of :mod:`stormfold.unrolled.sgp` (box bounds per parameter block):

1. **σ, ρ, α_k** by the reconstruction loss (13), Σ_m ½‖r_K(θ; y_m) − r̄_m‖²/M, where r̄ is
   the fine-grid image of the fluorophores' intensity cumulants (:mod:`stormfold.sofi.data`)
   and the unrolled solver runs on the variance-domain operator H∘H whose PSF σ starts from
   a guess (``solver.sigma_init_nm``) — the semi-blind part;
2. optionally **τ** by the localization loss (14) with the smoothed binarisation (16) of the
   stage-1 reconstructions (which do not depend on τ, so they are computed once).

The run writes ``MODEL_DIR/weights.safetensors`` + ``model.yaml`` (``engine: sofi``),
``training_log.csv``/``.png`` and a resumable ``checkpoint/`` (stage 1).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from stormfold import __version__
from stormfold.config import Bounds, from_dict, to_dict
from stormfold.errors import UserError
from stormfold.sofi.data import SofiDataConfig, SofiDataset, build_dataset
from stormfold.sofi.model import ENGINE, SofiModel, build_sofi_solver, save_sofi_model
from stormfold.training import CHECKPOINT_DIR, TrainingRun, read_config_file, without
from stormfold.training.guards import diverged
from stormfold.unrolled.fit import (LOG_CSV, LOG_PNG, RESUME_FIELDS, build_optimizer,
                                    check_fit_memory, fit, write_log)
from stormfold.unrolled.losses import localization_loss
from stormfold.unrolled.train import LossConfig, OptimConfig, check_solver_size

__all__ = ["CHECKPOINT_DIR", "SofiTrainConfig", "load_sofi_train_config", "train_sofi"]


#: Largest initial PSF σ: 10 µm in nm, and 10 camera pixels (a PSF is 1–2 pixels wide;
#: the blur kernels grow with σ, so a wild guess would exhaust the memory).
MAX_SIGMA_INIT_NM = 10_000.0
MAX_SIGMA_INIT_PX = 10.0
#: Smallest initial PSF σ, in camera pixels: below about 0.3 px the pixel-integrated
#: Gaussian puts nearly all its light in one pixel (a delta), the cumulant carries no PSF
#: shape, and σ collapses to 0 in training (a model that finds nothing).
MIN_SIGMA_INIT_PX = 0.3
#: A learned σ below this many camera pixels has collapsed (the training diverged).
COLLAPSED_SIGMA_PX = 0.1


@dataclass
class SofiSolverConfig:
    """The unrolled solver on the variance-domain operator.

    Attributes
    ----------
    upsampling : int
        Fine-grid factor L.
    iterations : int
        Unrolled iterations K.
    projection, eps, inertia, init
        As for :class:`stormfold.unrolled.UnrolledAPG` (ε in units of the variance scale).
    sigma_init_nm : float, optional
        Initial PSF σ guess (nm). Default: the simulation's σ.
    learn_sigma : bool
        Learn σ (semi-blind); otherwise σ stays at its initial value.
    checkpoint_segments : int
        Recompute segments of iterations in the backward pass to save memory (1 = none).
    """

    upsampling: int = 4
    iterations: int = 100
    projection: str = "cubic"
    eps: float = 0.01
    inertia: float = 3.0
    init: str = "zero"
    sigma_init_nm: Optional[float] = None
    learn_sigma: bool = True
    checkpoint_segments: int = 1

    def validate(self) -> None:
        if self.upsampling < 1 or self.iterations < 1 or self.checkpoint_segments < 1:
            raise UserError("solver.upsampling, solver.iterations and "
                            "solver.checkpoint_segments must be ≥ 1")
        check_solver_size(self.upsampling, self.iterations)
        if self.sigma_init_nm is not None and not 0 < self.sigma_init_nm <= MAX_SIGMA_INIT_NM:
            raise UserError(f"solver.sigma_init_nm (--sigma-init) must be a PSF σ in (0, "
                            f"{MAX_SIGMA_INIT_NM:g}] nm, got {self.sigma_init_nm}")
        if self.eps < 0:
            raise UserError(f"solver.eps must be ≥ 0, got {self.eps}")


@dataclass
class SofiParamsConfig:
    """Initial ρ, α_k and their bounds; the σ box relative to the initial σ."""

    rho: float = 0.01
    alpha: float = 1.0
    rho_bounds: Bounds = (0.0, 1.0)
    alpha_bounds: Bounds = (0.0, 2.0)
    sigma_bounds: Bounds = (0.5, 2.0)

    def validate(self) -> None:
        for name in ("rho_bounds", "alpha_bounds", "sigma_bounds"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise UserError(f"params.{name}: need lo ≤ hi, got [{lo}, {hi}]")
        if not self.rho_bounds[0] <= self.rho <= self.rho_bounds[1]:
            raise UserError(f"params.rho={self.rho} is outside {list(self.rho_bounds)}")
        if not self.alpha_bounds[0] <= self.alpha <= self.alpha_bounds[1]:
            raise UserError(f"params.alpha={self.alpha} is outside {list(self.alpha_bounds)}")
        if not 0 < self.sigma_bounds[0] <= 1 <= self.sigma_bounds[1]:
            raise UserError("params.sigma_bounds must contain 1 (relative to the initial σ)")


@dataclass
class SofiTauConfig:
    """Stage 2: the binarisation threshold τ (units of the variance scale) by loss (14).

    Attributes
    ----------
    learn : bool
        Run stage 2.
    init, bounds : float, (float, float)
        Initial τ and its box.
    also_learn : list of str
        Parameters re-learned together with τ by loss (14) (``rho``, ``alpha``); σ keeps its
        stage-1 value. Empty: τ alone, on the fixed stage-1 reconstructions (fast).
    huber_delta, binarise_eps : float
        δ of the Huber function (15) and the relative half-width ε_b/τ of (16).
    outer_iterations : int
        SGP iterations of stage 2.
    """

    learn: bool = True
    init: float = 0.5
    bounds: Bounds = (1e-3, 10.0)
    also_learn: list[str] = field(default_factory=list)
    huber_delta: float = 0.1
    binarise_eps: float = 0.5
    outer_iterations: int = 30

    def validate(self) -> None:
        lo, hi = self.bounds
        if not 0 <= lo <= self.init <= hi:
            raise UserError(f"tau.init={self.init} must lie in tau.bounds {list(self.bounds)}")
        if self.huber_delta <= 0 or self.binarise_eps <= 0 or self.outer_iterations < 1:
            raise UserError("tau.huber_delta, tau.binarise_eps, tau.outer_iterations must be > 0")
        unknown = sorted(set(self.also_learn) - {"rho", "alpha"})
        if unknown:
            raise UserError(f"tau.also_learn: unknown parameter {unknown[0]!r} (use rho, alpha)")


def _default_optim() -> OptimConfig:
    # Monotone Armijo (memory 1): the non-monotone variant lets σ wander away from the best
    # point late in the run, and the run keeps its last iterate.
    return OptimConfig(outer_iterations=30, memory=1)


@dataclass
class SofiTrainConfig:
    """Everything ``stormfold train sofi`` needs (``--config`` YAML / ``--set`` keys)."""

    seed: int = 0
    data: SofiDataConfig = field(default_factory=SofiDataConfig)
    solver: SofiSolverConfig = field(default_factory=SofiSolverConfig)
    params: SofiParamsConfig = field(default_factory=SofiParamsConfig)
    optim: OptimConfig = field(default_factory=_default_optim)
    tau: SofiTauConfig = field(default_factory=SofiTauConfig)

    def validate(self) -> None:
        if self.seed < 0:
            raise UserError(f"seed must be ≥ 0, got {self.seed}")
        if self.optim.optimizer not in ("sgp", "adam"):
            raise UserError(f"optim.optimizer must be sgp or adam, got {self.optim.optimizer!r}")


def load_sofi_train_config(config_file: str | Path | None = None,
                           overrides: dict[str, Any] | None = None) -> SofiTrainConfig:
    """Training configuration from a YAML file (a training configuration or a
    ``simulation.yaml``) and a nested mapping of overrides."""
    from stormfold.config import merge

    data = read_config_file(config_file, SofiTrainConfig, "data", SofiDataConfig.preset)
    return from_dict(SofiTrainConfig, merge(data, overrides or {}))


# --------------------------------------------------------------------------- pieces
def variance_scale(dataset: SofiDataset) -> float:
    """Mean intensity cumulant of one fluorophore over the data set (photons²)."""
    values = np.concatenate(dataset.emitter_cumulants)
    scale = float(values.mean()) if values.size else 0.0
    if not scale > 0:
        raise UserError("the training patterns have no fluctuating fluorophores (zero cumulant)")
    return scale


def dataset_tensors(dataset: SofiDataset, scale: float, device: Any = "cpu",
                    dtype: torch.dtype = torch.float32):
    """(y, s, r̄) in units of ``scale``: cumulants, offsets, fine targets."""
    def t(a):
        return torch.as_tensor(np.asarray(a) / scale, dtype=dtype, device=device)
    return t(dataset.cumulants), t(dataset.offsets), t(dataset.targets)


def build_model_for(config: SofiTrainConfig, dataset: SofiDataset, scale: float,
                    camera: Any = None) -> SofiModel:
    """The untrained model: σ at its initial guess, θ initialised, bounds set."""
    s, p = config.solver, config.params
    sigma0_nm = s.sigma_init_nm if s.sigma_init_nm is not None else dataset.sigma_nm
    if not sigma0_nm >= MIN_SIGMA_INIT_PX * dataset.pixel_size_nm:
        raise UserError(f"solver.sigma_init_nm (--sigma-init) {sigma0_nm:g} nm is less than "
                        f"{MIN_SIGMA_INIT_PX:g} camera pixels of {dataset.pixel_size_nm:g} nm "
                        f"(a PSF that narrow is a delta on the pixel grid): give the PSF σ "
                        f"(typically 1–2 pixels)")
    if not sigma0_nm <= MAX_SIGMA_INIT_PX * dataset.pixel_size_nm:
        raise UserError(f"solver.sigma_init_nm (--sigma-init) {sigma0_nm:g} nm is more than "
                        f"{MAX_SIGMA_INIT_PX:g} camera pixels of {dataset.pixel_size_nm:g} nm: "
                        f"give the PSF σ (typically 1–2 pixels)")
    fine_px = dataset.pixel_size_nm / s.upsampling
    sigma0 = sigma0_nm / fine_px
    solver = build_sofi_solver(s.upsampling, sigma0, learn_sigma=s.learn_sigma,
                               iterations=s.iterations, projection=s.projection, eps=s.eps,
                               inertia=s.inertia, init=s.init, rho=p.rho, alpha=p.alpha,
                               tau=config.tau.init, checkpoint_segments=s.checkpoint_segments)
    solver.set_bounds("rho", *p.rho_bounds)
    solver.set_bounds("alpha", *p.alpha_bounds)
    solver.set_bounds("tau", *config.tau.bounds)
    if s.learn_sigma:
        solver.set_bounds("operator.sigma_fine_px", p.sigma_bounds[0] * sigma0,
                          p.sigma_bounds[1] * sigma0)
    solver.project_parameters_()
    return SofiModel(solver, dataset.pixel_size_nm, dataset.lag, scale, camera)


def check_learned(model: SofiModel, step: int, rho_init: float = 1.0) -> None:
    """Refuse to write a model whose σ collapsed or whose θ is not finite or whose ρ fell to 0
    from ``rho_init`` > 0 (no regularisation left): the training diverged
    (:class:`TrainingDiverged`)."""
    theta = theta_record(model)
    sigma_px = model.sigma_nm / model.pixel_size_nm
    if not all(np.isfinite(v) for v in theta.values()):
        raise diverged(step, "a parameter is not finite", "outer iteration")
    if not sigma_px >= COLLAPSED_SIGMA_PX:
        raise diverged(step, f"σ collapsed to {model.sigma_nm:.3g} nm = {sigma_px:.3g} camera "
                             f"pixels", "outer iteration")
    if rho_init > 0 and not float(model.solver.rho.detach().max()) > 0:
        raise diverged(step, "ρ fell to 0", "outer iteration")


def jaccard_scores(reconstructions: np.ndarray, targets: np.ndarray, tau: float,
                   radii: tuple[float, ...] = (1.0, 2.0)) -> dict[str, float]:
    """Pixel Jaccard (SPEC §7) of the plain support (r > 0) and of the binarised one (r ≥ τ).

    ``reconstructions`` and ``targets`` share units (so ``tau`` is in those units); the
    ground truth is the support of the targets; ``radii`` in fine pixels.
    """
    from stormfold.evaluate import pixel_jaccard

    x = np.asarray(reconstructions)
    truth = np.asarray(targets) > 0
    out = {}
    binary = (x >= tau) & (x > 0)
    for r in radii:
        out[f"plain_r{r:g}"] = pixel_jaccard(x > 0, truth, radius=r).jaccard
        out[f"binarised_r{r:g}"] = pixel_jaccard(binary, truth, radius=r).jaccard
    return out


def theta_record(model: SofiModel) -> dict[str, float]:
    """θ as flat numbers for the training log (ρ, τ, σ, α_k and their mean)."""
    out: dict[str, float] = {}
    for name, value in model.solver.theta().items():
        if isinstance(value, list):
            out[f"{name}_mean"] = float(np.mean(value))
            out.update({f"{name}_{k}": float(v) for k, v in enumerate(value)})
        else:
            out[name.replace("operator.", "")] = float(value)
    out["sigma_nm"] = model.sigma_nm
    return out


def fit_tau(model: SofiModel, x: torch.Tensor, target: torch.Tensor, tau: SofiTauConfig,
            optim: OptimConfig) -> list[dict]:
    """Stage 2: learn τ by loss (14) on fixed reconstructions ``x`` (scale units)."""
    from stormfold.unrolled.sgp import SGP

    solver = model.solver
    param = solver.tau
    saved = {n: p.requires_grad for n, p in solver.named_parameters()}
    for p in solver.parameters():
        p.requires_grad_(False)
    param.requires_grad_(True)
    lo, hi = tau.bounds
    opt = SGP([{"params": [param], "lo": lo, "hi": hi, "name": "tau"}], step_min=optim.step_min,
              step_max=optim.step_max, gamma=optim.gamma, beta=optim.beta, memory=optim.memory,
              abb_memory=optim.abb_memory, abb_tau=optim.abb_tau, first_move=optim.first_move)
    x = x.detach()

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=False)
        value = localization_loss(x, target, param, delta=tau.huber_delta,
                                  eps_b=tau.binarise_eps, relative=True, reduction="mean")
        value.backward()
        return value

    history = []
    t0 = time.perf_counter()
    try:
        for it in range(tau.outer_iterations):
            value = opt.step(closure)
            history.append({"stage": 2, "iteration": it + 1, "loss": float(value),
                            "evaluations": opt.n_evaluations,
                            "seconds": time.perf_counter() - t0, **theta_record(model)})
            if opt.converged:
                break
    finally:
        for n, p in solver.named_parameters():
            p.requires_grad_(saved[n])
    return history


def _stage2(model: SofiModel, y: torch.Tensor, b: torch.Tensor, target: torch.Tensor,
            config: SofiTrainConfig) -> list[dict]:
    """τ (and ``tau.also_learn``) by loss (14); σ keeps its stage-1 value."""
    import dataclasses

    tau = config.tau
    optim = dataclasses.replace(config.optim, outer_iterations=tau.outer_iterations)
    if not tau.also_learn:
        with torch.no_grad():
            x = model.solver(y, b)
        return fit_tau(model, x, target, tau, optim)
    loss = LossConfig(kind="localization", huber_delta=tau.huber_delta,
                      binarise_eps=tau.binarise_eps, binarise_relative=True)
    history, _ = fit(model.solver, y, target, loss, optim, learn=["tau", *tau.also_learn],
                     background=b, progress=False)
    for record in history:
        record["stage"] = 2
    return history


# --------------------------------------------------------------------------- the run
def train_sofi(config: SofiTrainConfig, out_dir: str | Path, resume: bool = False,
               device: Any = "cpu", progress: bool = True, command: list[str] | None = None,
               dataset: SofiDataset | None = None, threads: int | None = 1) -> dict[str, Any]:
    """Simulate the training patterns, learn θ = (σ, ρ, α_k[, τ]) and write the model folder.

    Parameters
    ----------
    config : SofiTrainConfig
    out_dir : path
        Model folder (``weights.safetensors``, ``model.yaml``, ``training_log.csv``/``.png``,
        ``checkpoint/``).
    resume : bool
        Continue stage 1 from ``out_dir/checkpoint`` (same configuration except
        ``optim.outer_iterations``).
    device : torch.device or str
    progress : bool
    command : list of str, optional
        The command line, recorded in model.yaml.
    dataset : SofiDataset, optional
        Pre-simulated training data (experiments); default: simulated from ``config.data``.
    threads : int, optional
        Torch CPU threads during the run (restored afterwards). Default 1: the unrolled
        iterations work on small tensors, where a second thread only adds synchronisation —
        on a busy 2-core machine one thread was measured 40× faster. None: keep the setting.

    Returns
    -------
    dict
        The written model.yaml content.
    """
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _train_sofi(config, out_dir, resume, device, progress, command, dataset)
    finally:
        torch.set_num_threads(previous)


def _data_shape(data: SofiDataConfig, dataset: SofiDataset | None) -> tuple[int, int, int]:
    """(patterns, rows, cols) of the training cumulants, before they are simulated."""
    if dataset is not None:
        return tuple(dataset.cumulants.shape[-3:])
    from stormfold.simulate import build_config

    sim = build_config(preset=data.preset, overrides=dict(data.simulation),
                       n_frames=data.n_frames)
    return data.n_patterns, sim.n_rows, sim.n_cols


def _train_sofi(config: SofiTrainConfig, out_dir: str | Path, resume: bool, device: Any,
                progress: bool, command: list[str] | None,
                dataset: SofiDataset | None) -> dict[str, Any]:
    from stormfold.modelfile import read_model_meta

    config.validate()
    cfg_dict = to_dict(config)
    run = TrainingRun(out_dir, resume, without(cfg_dict, "optim.outer_iterations"),
                      "optim.outer_iterations", command, engine=ENGINE)
    out_dir = run.out_dir
    torch.manual_seed(config.seed)
    t_start = time.perf_counter()
    check_fit_memory(_data_shape(config.data, dataset), config.solver.upsampling,
                     config.solver.iterations, config.solver.checkpoint_segments, "train sofi")
    if dataset is None:
        dataset = build_dataset(config.data, config.seed, config.solver.upsampling,
                                progress=progress)
    t_data = time.perf_counter() - t_start
    scale = variance_scale(dataset)
    camera = dataset.configs[0].camera
    model = build_model_for(config, dataset, scale, camera)
    sigma_init_nm = model.sigma_nm
    solver = model.solver.to(device)
    y, b, target = dataset_tensors(dataset, scale, device)
    learn = ["rho", "alpha"] + (["operator.sigma_fine_px"] if config.solver.learn_sigma else [])
    optimizer = build_optimizer(solver, learn, config.optim)
    restored = run.restore(solver, optimizer, fields=RESUME_FIELDS)
    history: list[dict] = restored[1].get("history", []) if restored else []
    start = int(restored[1].get("iteration", 0)) if restored else 0
    out_dir.mkdir(parents=True, exist_ok=True)
    log = list(history)  # fit() keeps its own copy; the checkpoint needs the records too
    best: dict[str, Any] = {"loss": float("inf"), "state": None}

    def on_iteration(it: int, record: dict, opt) -> None:
        record["stage"] = 1
        record["sigma_nm"] = record.get("sigma_fine_px", model.sigma_fine_px) * model.fine_pixel_nm
        log.append(record)
        if record["loss"] < best["loss"]:
            best.update(loss=record["loss"],
                        state={k: v.detach().clone() for k, v in solver.state_dict().items()})
        if it % config.optim.checkpoint_every == 0 or it == config.optim.outer_iterations \
                or getattr(opt, "converged", False):
            run.save(solver, opt, state={"iteration": it, "history": log})
            write_log(log, out_dir)

    t1 = time.perf_counter()
    history, optimizer = fit(solver, y, target, LossConfig(kind="reconstruction"), config.optim,
                             learn=learn, background=b, optimizer=optimizer,
                             start_iteration=start, history=history,
                             on_iteration=on_iteration, progress=progress)
    if best["state"] is not None and history and history[-1]["loss"] > best["loss"]:
        solver.load_state_dict(best["state"])  # a non-monotone optimiser ended above its best
    t_stage1 = time.perf_counter() - t1
    tau_history: list[dict] = []
    if config.tau.learn:
        tau_history = _stage2(model, y, b, target, config)
        # One iteration axis for the log: stage 2 continues after stage 1.
        done = int(history[-1]["iteration"]) if history else 0
        for record in tau_history:
            record["stage_iteration"] = record["iteration"]
            record["iteration"] += done
    with torch.no_grad():
        x = solver(y, b)
    write_log(history + tau_history, out_dir)
    x_np, target_np = x.cpu().numpy(), target.cpu().numpy()
    scores = jaccard_scores(x_np, target_np, model.tau)
    true_sigma = {float(c.emitters.sigma_nm) for c in dataset.configs}
    extra = {
        "sigma_init_nm": sigma_init_nm,
        "training": {
            "data": to_dict(config.data), "n_patterns": len(dataset),
            "n_frames": int(dataset.configs[0].n_frames),
            "simulation_sigma_nm": sorted(true_sigma),
            "config": cfg_dict, "learned": learn + (["tau"] if config.tau.learn else []),
            "loss": "reconstruction (13)" + (" then localization (14) for tau"
                                             if config.tau.learn else ""),
            "optimizer": config.optim.optimizer,
            "outer_iterations_done": int(history[-1]["iteration"]) if history else 0,
            "initial_loss": history[0]["loss"] if history else None,
            "final_loss": history[-1]["loss"] if history else None,
            "final_tau_loss": tau_history[-1]["loss"] if tau_history else None,
            "training_jaccard": {k: round(float(v), 4) for k, v in scores.items()},
            "seconds": {"data": round(t_data, 2), "stage1": round(t_stage1, 2),
                        "total": round(time.perf_counter() - t_start, 2)},
        },
        "command": command or [], "seed": config.seed, "stormfold_version": __version__,
    }
    check_learned(model, int(history[-1]["iteration"]) if history else 0, config.params.rho)
    save_sofi_model(out_dir, model, extra, (LOG_CSV, LOG_PNG))
    return read_model_meta(out_dir)
