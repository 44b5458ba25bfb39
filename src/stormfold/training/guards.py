"""Guards every trainer shares: sane configuration bounds and a stop on divergence.

A configuration value that would exhaust the memory or run for hours is refused before any
data are simulated (:func:`check_at_most`, :func:`check_lr`, and the memory estimate of
:func:`stormfold.io.readers.check_memory`). During training, :func:`check_finite` stops the
run as soon as a loss or a weight is NaN or infinite: a diverged network must never be
written as a model (nor its untrained initial weights, which is what a "best validation
loss" kept when every validation loss is NaN).
"""
from __future__ import annotations

import math
from typing import Any

from stormfold.errors import UserError

#: Largest learning rate of every optimiser. Adam-type optimisers move each weight by about
#: ``lr`` per step and the weights are O(1): at 1 a Deep-STORM run ended at a validation loss
#: of 2e22 (finite, so not caught as divergence, and a useless model), and beyond 1 the loss
#: is NaN within a few steps. The defaults are 3e-4 to 0.02.
MAX_LR = 0.1
#: The record entries that are checked for divergence.
WATCHED = ("loss", "val_loss")


class TrainingDiverged(UserError):
    """The loss or the weights became NaN or infinite; nothing was written as a model."""


def check_lr(lr: float | None, name: str) -> None:
    """Refuse a learning rate outside (0, :data:`MAX_LR`] (None: the default is used)."""
    if lr is None:
        return
    if not (isinstance(lr, (int, float)) and 0 < lr <= MAX_LR):
        raise UserError(f"{name} must be in (0, {MAX_LR:g}], got {lr}: larger steps make the "
                        f"weights diverge")


def check_at_most(value: float, limit: float, name: str, reason: str) -> None:
    """Refuse ``value > limit`` with the reason of the limit (one line)."""
    if value > limit:
        raise UserError(f"{name} must be ≤ {_number(limit)}, got {_number(value)} ({reason})")


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def diverged(step: int, what: str, unit: str = "step") -> TrainingDiverged:
    """The one-line error of a diverged training run."""
    return TrainingDiverged(f"training diverged at {unit} {step} ({what}): lower the learning "
                            f"rate (or check the training data); no model was written")


def _nonfinite_parameter(model: Any) -> str | None:
    import torch

    for name, value in model.named_parameters():
        if not bool(torch.isfinite(value.detach()).all()):
            return name
    return None


def check_finite(step: int, record: dict, model: Any = None, unit: str = "step") -> None:
    """Raise :class:`TrainingDiverged` when a watched loss of ``record`` or a parameter of
    ``model`` (a ``torch.nn.Module``) is NaN or infinite."""
    for key in WATCHED:
        value = record.get(key)
        if value is not None and not math.isfinite(float(value)):
            raise diverged(step, f"{key} {float(value)}", unit)
    if model is not None:
        name = _nonfinite_parameter(model)
        if name is not None:
            raise diverged(step, f"weight {name} is not finite", unit)


#: A calibrated Jaccard index below this on the training frames: the model finds nothing.
DEAD_JACCARD = 0.05


def check_alive(jaccard: float, detail: str, checkpoint_dir: Any, remedy: str) -> None:
    """Refuse to write a model whose calibrated Jaccard index on its own training frames is
    below :data:`DEAD_JACCARD` (review 17: the unrolled SGP can drive every α_k to 0 or ρ to
    1, the trivial minimiser of loss (14) when the initial τ gives many false detections)."""
    if jaccard >= DEAD_JACCARD:
        return
    raise TrainingDiverged(f"training left a model that finds almost nothing on its own "
                           f"training frames (calibrated Jaccard {jaccard:.3f}; {detail}): no "
                           f"model written (the checkpoint in {checkpoint_dir} is kept); "
                           f"{remedy}")
