"""The upper-level optimisation of the unrolled solver on tensors (full batch).

:func:`fit` learns θ of an :class:`~stormfold.unrolled.solver.UnrolledAPG` on frames y and
fine-grid targets x̄ with the configured loss and optimiser (SGP by default, projected Adam
as alternative), one outer iteration per step of :func:`stormfold.training.run_loop`. It is
shared by ``stormfold train unrolled`` (:mod:`stormfold.unrolled.train`), the SOFI trainer
and the experiments; the configurations it reads (:class:`~stormfold.unrolled.train.LossConfig`,
:class:`~stormfold.unrolled.train.OptimConfig`) live with the trainer.
"""
from __future__ import annotations

import math

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
import torch

from stormfold.checkpoint import Records
from stormfold.training import Budget, run_loop, write_history
from stormfold.unrolled.losses import localization_loss, reconstruction_loss
from stormfold.unrolled.sgp import SGP, ProjectedAdam
from stormfold.unrolled.solver import UnrolledAPG

if TYPE_CHECKING:
    from stormfold.unrolled.train import LossConfig, OptimConfig

LOG_CSV = "training_log.csv"
LOG_PNG = "training_log.png"


#: The checkpoint state a resumed fit needs (see :func:`stormfold.checkpoint.check_fields`).
RESUME_FIELDS = {"iteration": int,
                 "history": Records(("iteration", "loss", "evaluations", "seconds"))}
#: Fine-grid images per frame and per unrolled iteration that the backward pass keeps
#: (iterate, momentum, gradient and projection), float32.
IMAGES_PER_ITERATION = 4


def check_fit_memory(data_shape: tuple[int, ...], upsampling: int, iterations: int,
                     segments: int, what: str) -> None:
    """Refuse, before fitting, a full-batch fit whose backward pass would not fit in memory:
    every frame of ``data_shape`` (frames, rows, cols) unrolled over ``iterations`` on the
    ``upsampling``× finer grid, of which ``segments`` > 1 keeps only the segment ends and
    one segment at a time."""
    from stormfold.io.readers import check_memory

    n, rows, cols = (int(v) for v in data_shape[-3:])
    kept = iterations if segments <= 1 else segments + math.ceil(iterations / segments)
    need = float(n) * rows * cols * upsampling ** 2 * 4.0 * IMAGES_PER_ITERATION * kept
    check_memory(need, f"{what}: {n} images of {cols} x {rows} px at upsampling {upsampling} "
                       f"unrolled over {iterations} iterations need about",
                 " (use fewer frames or iterations, or more solver.checkpoint_segments)")

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
               max_backtracks=optim.max_backtracks, shared_step=not optim.per_block,
               tol=optim.tol)


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
        Fine-grid ground truth (photons per fine pixel; see
        :func:`stormfold.training.fine_targets`).
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

    def outer_iteration(it: int) -> dict:
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
        bar.set_postfix(loss=f"{record['loss']:.4g}",
                        rho=f"{record.get('rho', record.get('rho_mean', 0.0)):.3g}",
                        tau=f"{record['tau']:.3g}")
        return record

    def after(done: int, record: dict) -> None:
        if on_iteration is not None:
            on_iteration(done, record, optimizer)

    try:
        run_loop(outer_iteration, start_iteration, Budget(steps=optim.outer_iterations),
                 after=after, converged=lambda record: getattr(optimizer, "converged", False),
                 model=solver, unit="outer iteration")
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
def _plot_log(fig, df: pd.DataFrame) -> None:
    ax = fig.subplots(1, 3)
    alpha_cols = [c for c in df.columns if c.startswith("alpha_") and c != "alpha_mean"]
    ax[0].plot(df["iteration"], df["loss"], "o-", ms=3)
    ax[0].set(xlabel="outer iteration", ylabel="upper loss", title="loss")
    if (df["loss"] > 0).all():
        ax[0].set_yscale("log")
    scalars = [c for c in ("rho", "rho_mean", "tau", "background", "sigma_fine_px")
               if c in df.columns]
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


def write_log(history: list[dict], folder: Path) -> None:
    """``training_log.csv`` (one row per outer iteration) and ``training_log.png``."""
    write_history(folder, history, LOG_CSV, float_format="%.6g", png_name=LOG_PNG,
                  plot=_plot_log, figsize=(13, 3.6), dpi=110)
