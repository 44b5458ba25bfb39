"""Learning θ of the unrolled solver (the upper-level problem), full batch.

Two entry points:

- :func:`fit` — the optimisation loop on tensors: frames y (photons), fine-grid targets
  x̄, a loss, an optimiser (SGP by default, projected Adam as alternative); used by the
  experiments;
- :func:`train_unrolled` — what ``stormfold train unrolled`` runs: build the training data
  (simulated from a preset, or a given movie and its ground truth), build the solver, fit,
  and write the model folder with a CSV + PNG log of the loss and of θ per outer iteration,
  resumable from ``MODEL_DIR/checkpoint``.

Targets (:func:`fine_targets`): each emitter of the ground truth goes to the fine pixel that
contains it. For the reconstruction loss (13) the target pixel holds the emitter's photons
(summed when several share the pixel), so x̄ is in the units of x; the localization loss
(14) uses only the support 1[x̄ > 0].
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np
import pandas as pd
import torch

from stormfold import __version__
from stormfold.config import from_dict, to_dict
from stormfold.errors import UserError
from stormfold.simulate.config import read_training_yaml
from stormfold.unrolled.losses import localization_loss, reconstruction_loss
from stormfold.unrolled.sgp import SGP, ProjectedAdam
from stormfold.unrolled.solver import UnrolledAPG

LOG_CSV = "training_log.csv"
LOG_PNG = "training_log.png"
CHECKPOINT_DIR = "checkpoint"


# --------------------------------------------------------------------------- configuration
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
    """

    preset: str = "challenge2016"
    simulation: dict = field(default_factory=dict)
    n_frames: int = 16
    movie: Optional[str] = None
    truth: Optional[str] = None
    pixel_size_nm: Optional[float] = None
    camera: Optional[dict] = None

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
    the data) or ``learned``.
    """

    upsampling: int = 4
    iterations: int = 100
    fidelity: Literal["ls", "kl"] = "ls"
    projection: Literal["cubic", "symmetric"] = "cubic"
    eps: float = 0.1
    inertia: float = 3.0
    init: Literal["zero", "adjoint"] = "zero"
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
        Initial ρ (λ = ρ·λ_max) and α_k (units of 1/Lip).
    tau : float, optional
        Initial binarisation threshold τ (photons per fine pixel). Default with the
        localization loss: the value reached by as many pixels of x_K (at the initial θ) as
        the targets have emitter pixels; 0 with the reconstruction loss, where τ is not
        learned and every non-zero pixel counts (the paper's "n.a.").
    rho_bounds : (float, float)
    alpha_bounds : (float, float)
        Box of α_k in units of 1/Lip. Default [0, 1]: the SPEC allows 2/Lip (the bound of
        the plain projected gradient), but with the inertia the iteration is only guaranteed
        stable for α ≤ 1/Lip, and learned steps near 2 made x_K collapse on real frames
        (ISBI 2013: 2.5 % of the signal recovered at α = 1.79 against 80 % at α ≤ 1.3).
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

    rho: float = 0.05
    alpha: float = 1.0
    tau: Optional[float] = None
    rho_bounds: tuple[float, float] = (0.0, 1.0)
    alpha_bounds: tuple[float, float] = (0.0, 1.0)
    tau_bounds: Optional[tuple[float, float]] = None
    background_bounds: Optional[tuple[float, float]] = None
    sigma_bounds: tuple[float, float] = (0.5, 2.0)
    learn: Optional[list[str]] = None

    def validate(self) -> None:
        for name in ("rho_bounds", "alpha_bounds", "tau_bounds", "background_bounds",
                     "sigma_bounds"):
            box = getattr(self, name)
            if box is not None and not box[0] <= box[1]:
                raise UserError(f"params.{name}: need lo ≤ hi, got {list(box)}")
        if not self.rho_bounds[0] <= self.rho <= self.rho_bounds[1]:
            raise UserError(f"params.rho={self.rho} is outside rho_bounds {list(self.rho_bounds)}")
        if not self.alpha_bounds[0] <= self.alpha <= self.alpha_bounds[1]:
            raise UserError(f"params.alpha={self.alpha} is outside alpha_bounds "
                            f"{list(self.alpha_bounds)}")


@dataclass
class LossConfig:
    """Upper-level loss: ``reconstruction`` (13) or ``localization`` (14–16).

    ``tolerance_px`` > 0 selects the tolerant variant of (14) (see
    :func:`stormfold.unrolled.losses.localization_loss`); 0 is the paper's loss.
    """

    kind: Literal["reconstruction", "localization"] = "localization"
    huber_delta: float = 0.1
    binarise_eps: float = 0.5
    binarise_relative: bool = True
    tolerance_px: int = 0

    def validate(self) -> None:
        if self.huber_delta <= 0 or self.binarise_eps <= 0:
            raise UserError("loss.huber_delta and loss.binarise_eps must be > 0")
        if self.tolerance_px < 0:
            raise UserError("loss.tolerance_px must be ≥ 0")


@dataclass
class OptimConfig:
    """Upper-level optimiser (SGP by default; see :class:`stormfold.unrolled.sgp.SGP`)."""

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
    tol: float = 1e-7
    adam_lr: float = 0.02
    checkpoint_every: int = 5

    def validate(self) -> None:
        if self.outer_iterations < 1:
            raise UserError(f"optim.outer_iterations must be ≥ 1, got {self.outer_iterations}")
        if self.checkpoint_every < 1:
            raise UserError("optim.checkpoint_every must be ≥ 1")


@dataclass
class ExtractionConfig:
    """How the engine turns x_K into localizations (stored in model.yaml).

    Attributes
    ----------
    calibrate : bool
        After training, choose the extraction threshold among ``factors``·τ that maximises
        the Jaccard index at ``tolerance_nm`` on the training frames (as Deep-STORM's
        calibration does); otherwise the threshold is the learned τ (SPEC §5).
    tolerance_nm : float
        Matching tolerance of the calibration.
    factors : list of float
        Candidate thresholds, as multiples of τ.
    connectivity : int
        8 or 4: pixels joined into one localization.
    """

    calibrate: bool = False
    tolerance_nm: float = 100.0
    factors: list[float] = field(default_factory=lambda: [0.0625, 0.125, 0.25, 0.5, 1.0, 2.0])
    connectivity: int = 8

    def validate(self) -> None:
        if self.connectivity not in (4, 8):
            raise UserError(f"extraction.connectivity must be 4 or 8, got {self.connectivity}")
        if self.tolerance_nm <= 0 or not self.factors or min(self.factors) <= 0:
            raise UserError("extraction: tolerance_nm and factors must be > 0")


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


# --------------------------------------------------------------------------- targets
def fine_targets(truth: pd.DataFrame, n_frames: int, shape: tuple[int, int],
                 fine_pixel_nm: float, value: str = "photons", first_frame: int = 0) -> np.ndarray:
    """Fine-grid ground truth: each emitter in the fine pixel that contains it.

    Parameters
    ----------
    truth : DataFrame
        Ground truth (``frame``, ``x_nm``, ``y_nm``, and ``photons`` for ``value="photons"``).
    n_frames : int
        Frames [first_frame, first_frame + n_frames) are rendered.
    shape : (int, int)
        Fine-grid shape (rows·L, cols·L).
    fine_pixel_nm : float
        Fine pixel size (camera pixel / L).
    value : {"photons", "binary"}
        Pixel value: summed photons of the emitters in it, or 1.

    Returns
    -------
    ndarray, shape (n_frames, rows·L, cols·L), float32
    """
    if value not in ("photons", "binary"):
        raise UserError(f"target value must be photons or binary, got {value!r}")
    if value == "photons" and "photons" not in truth.columns:
        raise UserError("the ground truth has no photons column (needed by the reconstruction "
                        "loss)")
    frame = truth["frame"].to_numpy() - first_frame
    r = np.floor(truth["y_nm"].to_numpy() / fine_pixel_nm).astype(np.int64)
    c = np.floor(truth["x_nm"].to_numpy() / fine_pixel_nm).astype(np.int64)
    inside = ((frame >= 0) & (frame < n_frames) & (r >= 0) & (r < shape[0]) & (c >= 0)
              & (c < shape[1]))
    idx = (frame[inside] * shape[0] + r[inside]) * shape[1] + c[inside]
    w = truth["photons"].to_numpy()[inside] if value == "photons" else np.ones(idx.size)
    out = np.bincount(idx, weights=w, minlength=n_frames * shape[0] * shape[1])
    if value == "binary":
        out = (out > 0).astype(np.float64)
    return out.reshape(n_frames, *shape).astype(np.float32)


# --------------------------------------------------------------------------- loss & optimiser
def upper_loss(solver: UnrolledAPG, x: torch.Tensor, target: torch.Tensor,
               loss: LossConfig) -> torch.Tensor:
    """The configured upper-level loss, averaged over frames."""
    if loss.kind == "reconstruction":
        return reconstruction_loss(x, target, reduction="mean")
    return localization_loss(x, target, solver.tau, delta=loss.huber_delta,
                             eps_b=loss.binarise_eps, relative=loss.binarise_relative,
                             tolerance_px=loss.tolerance_px, reduction="mean")


def default_learn(solver: UnrolledAPG, loss_kind: str) -> list[str]:
    """Parameters learned by default: ρ, α (and τ for the localization loss, b, σ if learnable)."""
    names = [n for n, p in solver.named_parameters()]
    learn = ["rho", "alpha"] + (["tau"] if loss_kind == "localization" else [])
    return learn + [n for n in ("background", "operator.sigma_fine_px") if n in names]


def build_optimizer(solver: UnrolledAPG, learn: list[str], optim: OptimConfig):
    """SGP (one block per parameter, or one normalised block) or projected Adam."""
    params = dict(solver.named_parameters())
    for name, p in params.items():
        p.requires_grad_(name in learn)
    blocks = [{"params": [p], "lo": lo, "hi": hi, "name": name}
              for name, p, lo, hi in solver.bounded_parameters(learn)]
    if optim.optimizer == "adam":
        return ProjectedAdam(blocks, lr=optim.adam_lr)
    return SGP(blocks, step_min=optim.step_min, step_max=optim.step_max, gamma=optim.gamma,
               beta=optim.beta, memory=optim.memory, abb_memory=optim.abb_memory,
               abb_tau=optim.abb_tau, first_move=optim.first_move,
               shared_step=not optim.per_block, tol=optim.tol)


# --------------------------------------------------------------------------- the loop
def fit(solver: UnrolledAPG, y: torch.Tensor, target: torch.Tensor, loss: LossConfig,
        optim: OptimConfig, learn: list[str] | None = None, background: Any = None,
        optimizer: torch.optim.Optimizer | None = None, start_iteration: int = 0,
        history: list[dict] | None = None,
        on_iteration: Callable[[int, dict, Any], None] | None = None,
        progress: bool = True) -> tuple[list[dict], torch.optim.Optimizer]:
    """Learn θ on one batch of frames (deterministic, full batch).

    Parameters
    ----------
    solver : UnrolledAPG
    y : Tensor, shape (M, rows, cols)
        Training frames in photons.
    target : Tensor, shape (M, rows·L, cols·L)
        Fine-grid ground truth (photons per fine pixel; see :func:`fine_targets`).
    loss, optim : LossConfig, OptimConfig
    learn : list of str, optional
        Parameters to learn (default :func:`default_learn`).
    background : optional
        b passed to the solver (default: its background mode).
    optimizer : Optimizer, optional
        A restored optimiser to continue with (resume); built from ``optim`` otherwise.
    start_iteration, history
        Where a resumed run continues.
    on_iteration : callable, optional
        Called as ``on_iteration(iteration, record, optimizer)`` after each outer iteration.

    Returns
    -------
    history : list of dict
        One record per outer iteration: ``iteration``, ``loss`` (upper loss after the
        iteration), ``evaluations``, ``seconds`` and θ (``rho``, ``tau``, ``alpha_k``, ...).
    optimizer
    """
    from tqdm import tqdm

    learn = learn or default_learn(solver, loss.kind)
    if optimizer is None:
        optimizer = build_optimizer(solver, learn, optim)
    history = list(history or [])

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=False)
        value = upper_loss(solver, solver(y, background), target, loss)
        value.backward()
        return value

    t0 = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
    bar = tqdm(total=optim.outer_iterations, initial=start_iteration, unit="it",
               desc=f"train unrolled ({loss.kind})", disable=not progress, leave=False)
    try:
        for it in range(start_iteration, optim.outer_iterations):
            value = optimizer.step(closure)
            if isinstance(optimizer, ProjectedAdam):
                with torch.no_grad():
                    value = upper_loss(solver, solver(y, background), target, loss)
            record = {"iteration": it + 1, "loss": float(value),
                      "evaluations": getattr(optimizer, "n_evaluations", it + 1),
                      "seconds": time.perf_counter() - t0}
            record.update(_theta_record(solver))
            history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.4g}", rho=f"{record['rho']:.3g}",
                            tau=f"{record['tau']:.3g}")
            if on_iteration is not None:
                on_iteration(it + 1, record, optimizer)
            if getattr(optimizer, "converged", False):
                break
    finally:
        bar.close()
    return history, optimizer


def _theta_record(solver: UnrolledAPG) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in solver.theta().items():
        if isinstance(value, list):
            out[f"{name}_mean"] = float(np.mean(value))
            out.update({f"{name}_{k}": float(v) for k, v in enumerate(value)})
        else:
            out[name.replace("operator.", "")] = float(value)
    return out


# --------------------------------------------------------------------------- logs
def write_log(history: list[dict], folder: Path) -> None:
    """``training_log.csv`` (one row per outer iteration) and ``training_log.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stormfold.io.atomic import atomic_path

    df = pd.DataFrame(history)
    with atomic_path(folder / LOG_CSV) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    if df.empty:
        return
    alpha_cols = [c for c in df.columns if c.startswith("alpha_") and c != "alpha_mean"]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(df["iteration"], df["loss"], "o-", ms=3)
    ax[0].set(xlabel="outer iteration", ylabel="upper loss", title="loss")
    if (df["loss"] > 0).all():
        ax[0].set_yscale("log")
    scalars = [c for c in ("rho", "tau", "background", "sigma_fine_px") if c in df.columns]
    for name in scalars:
        v = df[name]
        span = float(v.abs().max()) or 1.0
        ax[1].plot(df["iteration"], v / span, label=f"{name} / {span:.3g}")
    ax[1].set(xlabel="outer iteration", title="scalar parameters (normalised)")
    ax[1].legend(fontsize=8)
    if alpha_cols:
        last = df[alpha_cols].iloc[-1].to_numpy()
        first = df[alpha_cols].iloc[0].to_numpy()
        ax[2].plot(first, ":", label=f"iteration {int(df['iteration'].iloc[0])}")
        ax[2].plot(last, "-", label=f"iteration {int(df['iteration'].iloc[-1])}")
        ax[2].set(xlabel="inner iteration k", ylabel="α_k (units of 1/Lip)", title="step sizes")
        ax[2].legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(folder / LOG_PNG) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    """Frames (photons), fine targets, and what produced them."""

    photons: np.ndarray
    truth: pd.DataFrame
    pixel_size_nm: float
    sigma_nm: float | None
    background_photons: float | None
    camera: dict
    source: dict


def build_training_data(data: DataConfig, seed: int) -> TrainingData:
    """Simulate the training frames, or read the given movie and truth (first n frames)."""
    from stormfold.physics.camera import Camera

    if data.movie is None:
        from stormfold.simulate import build_config, simulate
        from stormfold.simulate.config import config_to_dict

        sim_cfg = build_config(preset=data.preset, overrides=dict(data.simulation),
                               n_frames=data.n_frames, seed=seed)
        sim = simulate(sim_cfg)
        photons = sim_cfg.camera.backward(sim.movie)
        bg = sim_cfg.background.photons if sim_cfg.background.map is None else None
        return TrainingData(photons, sim.truth, sim_cfg.pixel_size_nm, sim_cfg.emitters.sigma_nm,
                            bg, to_dict(sim_cfg.camera),
                            {"simulation": config_to_dict(sim_cfg)})
    from stormfold.io.movie import open_movie
    from stormfold.io.tables import read_table
    from stormfold.localize.runner import resolve_camera

    for label, path in (("movie", data.movie), ("truth", data.truth)):
        if not Path(path).exists():
            raise UserError(f"{label} not found: {path}")
    truth = read_table(data.truth)
    with open_movie(data.movie, pixel_size_nm=data.pixel_size_nm) as mv:
        px = mv.require_pixel_size()
        n = min(data.n_frames, mv.n_frames)
        if data.camera is not None:
            camera = from_dict(Camera, data.camera, where="data.camera")
        else:
            camera, _ = resolve_camera(None, mv, None)
        photons = camera.backward(mv.read(0, n))
    sigma = bg = None
    sim_yaml = Path(data.truth).parent / "simulation.yaml"
    if sim_yaml.is_file():
        from stormfold.config import load_yaml

        meta = load_yaml(sim_yaml) or {}
        sigma = (meta.get("emitters") or {}).get("sigma_nm")
        bg = (meta.get("background") or {}).get("photons")
    return TrainingData(photons, truth[truth["frame"] < n].reset_index(drop=True), px, sigma, bg,
                        to_dict(camera), {"movie": str(data.movie), "truth": str(data.truth),
                                          "frames": n})


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
    """The extraction threshold (among factors·τ) with the best Jaccard on these frames."""
    from stormfold.evaluate import evaluate
    from stormfold.localize.components import components_to_table, find_components

    with torch.no_grad():
        x = torch.cat([solver(y[a:a + batch]).cpu() for a in range(0, len(y), batch)]).numpy()
    tau = float(solver.tau.detach())
    fine_nm = pixel_size_nm / solver.op.factor
    scores = []
    for f in extraction.factors:
        comp = find_components(x, f * tau, extraction.connectivity)
        m = evaluate(truth, components_to_table(comp, 0, fine_nm),
                     tolerances_nm=(extraction.tolerance_nm,))
        scores.append((float(m["jaccard"].iloc[0]), f))
    best_j, best_f = max(scores, key=lambda t: (t[0], t[1]))
    return {"threshold": best_f * tau, "calibrated": True, "jaccard": best_j,
            "tolerance_nm": extraction.tolerance_nm,
            "candidates": [{"factor_of_tau": f, "jaccard": j} for j, f in scores]}


# --------------------------------------------------------------------------- CLI entry
def training_data_yaml(config_file: str | Path | None, config_cls: type,
                       default_preset: str) -> dict[str, Any]:
    """A ``--config`` file as a nested mapping for ``config_cls`` (unrolled and SOFI trainers):
    a ``simulation.yaml`` becomes the ``data`` section, so the training data mimic it."""
    sections = tuple(f.name for f in dataclasses.fields(config_cls) if f.name != "seed")
    loaded, is_simulation = read_training_yaml(config_file, sections)
    if is_simulation:
        return {"data": {"preset": loaded.pop("preset", default_preset), "simulation": loaded}}
    return loaded


def load_train_config(config_file: str | Path | None = None,
                      overrides: dict[str, Any] | None = None) -> UnrolledTrainConfig:
    """Training configuration from a YAML file and overrides (nested mapping)."""
    from stormfold.config import merge

    data = training_data_yaml(config_file, UnrolledTrainConfig, DataConfig.preset)
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
    from stormfold.checkpoint import load_checkpoint, save_checkpoint
    from stormfold.unrolled.model import save_unrolled_model

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} exists and is not a folder")
    ckpt_dir = out_dir / CHECKPOINT_DIR
    cfg_dict = to_dict(config)
    if resume:
        if not (ckpt_dir / "state.json").is_file():
            raise UserError(f"--resume: no checkpoint in {ckpt_dir}")
        import json

        old = json.loads((ckpt_dir / "state.json").read_text(encoding="utf-8")).get("config", {})
        a = {k: v for k, v in old.items() if k != "optim"}
        b = {k: v for k, v in cfg_dict.items() if k != "optim"}
        old_optim = {k: v for k, v in old.get("optim", {}).items() if k != "outer_iterations"}
        new_optim = {k: v for k, v in cfg_dict["optim"].items() if k != "outer_iterations"}
        if a != b or old_optim != new_optim:
            raise UserError(f"--resume: the configuration differs from the one of the checkpoint "
                            f"in {ckpt_dir} (only optim.outer_iterations may change)")
    torch.manual_seed(config.seed)
    td = build_training_data(config.data, config.seed)
    L = config.solver.upsampling
    n, rows, cols = td.photons.shape
    shape = (rows * L, cols * L)
    fine_px = td.pixel_size_nm / L
    value = "photons" if "photons" in td.truth.columns else "binary"
    target_np = fine_targets(td.truth, n, shape, fine_px, value)
    if config.loss.kind == "reconstruction" and value != "photons":
        raise UserError("the reconstruction loss needs photons in the ground truth")
    solver = build_solver_for(config, td, target_np).to(device)
    y = torch.from_numpy(td.photons).to(device)
    target = torch.from_numpy(target_np).to(device)
    learn = config.params.learn or default_learn(solver, config.loss.kind)
    for name in learn:
        if name not in dict(solver.named_parameters()):
            raise UserError(f"params.learn: unknown parameter {name!r} "
                            f"(learnable: {', '.join(n for n, _ in solver.named_parameters())})")
    optimizer = build_optimizer(solver, learn, config.optim)
    history: list[dict] = []
    start = 0
    if resume:
        restored = load_checkpoint(ckpt_dir, solver, optimizer)
        if restored is None:
            raise UserError(f"--resume: the checkpoint in {ckpt_dir} is incomplete")
        _, state = restored
        history = state.get("history", [])
        start = int(state.get("iteration", 0))
    out_dir.mkdir(parents=True, exist_ok=True)

    done = list(history)

    def on_iteration(it: int, record: dict, opt) -> None:
        done.append(record)
        if it % config.optim.checkpoint_every == 0 or it == config.optim.outer_iterations \
                or getattr(opt, "converged", False):
            save_checkpoint(ckpt_dir, solver, opt, state={"iteration": it, "history": done,
                                                          "config": cfg_dict})
            write_log(done, out_dir)

    t0 = time.perf_counter()
    history, optimizer = fit(solver, y, target, config.loss, config.optim, learn=learn,
                             optimizer=optimizer, start_iteration=start, history=history,
                             on_iteration=on_iteration, progress=progress)
    write_log(history, out_dir)
    final = history[-1]["loss"] if history else None
    extra = {
        "camera": td.camera,
        "training": {"data": td.source, "n_frames": int(n), "pixel_size_nm": td.pixel_size_nm,
                     "config": cfg_dict, "learned": learn, "loss": config.loss.kind,
                     "optimizer": config.optim.optimizer,
                     "outer_iterations_done": int(history[-1]["iteration"]) if history else 0,
                     "final_loss": final, "initial_loss": history[0]["loss"] if history else None,
                     "evaluations": int(history[-1]["evaluations"]) if history else 0,
                     "seconds": round(time.perf_counter() - t0, 2), "target_value": value},
        "command": command or [], "seed": config.seed, "stormfold_version": __version__,
    }
    extra["extraction"] = {"threshold": float(solver.tau.detach()), "calibrated": False,
                           "connectivity": config.extraction.connectivity, "merge": True}
    if config.extraction.calibrate:
        cal = calibrate_threshold(solver, y, td.truth, td.pixel_size_nm, config.extraction)
        extra["extraction"].update(cal)
    save_unrolled_model(out_dir, solver, td.pixel_size_nm, extra)
    from stormfold.modelfile import read_model_meta

    return read_model_meta(out_dir)
