"""Configuration of a gridnet training run (``--config`` YAML has the same nesting).

:func:`build_train_config` assembles it from a training configuration or a
``simulation.yaml``, ``--set`` overrides and the command-line options; :func:`lr_at` is the
learning-rate schedule (a pure function of the step, so a resumed run follows it exactly).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from stormfold.config import MAX_THREADS, from_dict, merge, parse_overrides, to_dict
from stormfold.errors import UserError
from stormfold.gridnet.decode import DECODERS, DEFAULT_P_RAW, RADIUS_RANGE_PX
from stormfold.gridnet.network import ArchitectureConfig
from stormfold.gridnet.normalization import InputNormalization
from stormfold.gridnet.sampler import DomainConfig, domain_around
from stormfold.localize.refine import RefineOptions
from stormfold.simulate.config import (PROVENANCE_KEYS, SimulationConfig, build_config,
                                       read_training_yaml)
from stormfold.training.guards import check_at_most, check_lr

GENERALIST = "builtin:gridnet-generalist"
#: Largest training frame side (px). The network sees a few tens of pixels around each
#: pixel, so larger frames add no context, only fewer steps per minute (more samples per
#: step come from batch_size); 100,000 px frames took 23.5 GB before the kernel killed them.
MAX_FRAME_PX = 256
#: Largest validation frame side (px): as above, and every held-back frame is kept in memory.
MAX_VALIDATION_FRAME_PX = 512
#: Largest batch: samples are simulated one by one (ms each) and the time budget is checked
#: between steps, so one step of 10⁸ samples ran for hours past --minutes.
MAX_BATCH_SIZE = 1024
#: Largest number of held-back samples per activation model (validation and calibration):
#: they are simulated before training starts and kept in memory, and more than a few
#: thousand change the Jaccard only in its third decimal.
MAX_HELD_BACK = 5000
DEFAULT_THRESHOLDS = tuple(round(float(v), 4) for v in np.arange(0.05, 0.96, 0.025))


@dataclass
class ScheduleConfig:
    """Optimisation and budget.

    Attributes
    ----------
    steps : int or None
        Number of steps (each a fresh batch). None: from ``minutes``.
    minutes : float or None
        Wall-time budget of the training loop (the final calibration comes on top; it
        takes well under a minute).
    batch_size : int
        Samples per step.
    frame_px : int
        Side of the simulated training frames (camera pixels).
    lr : float or None
        Peak AdamW learning rate (None: 1e-3 from scratch, 3e-4 when fine-tuning).
    weight_decay : float
    warmup_fraction : float
        Share of the steps with a linear warm-up.
    final_lr_fraction : float
        Learning rate at the end of the cosine decay, relative to ``lr``.
    grad_clip : float
        Maximum gradient norm (0: no clipping).
    checkpoint_minutes, validation_minutes : float
        Wall time between checkpoints and between validations.
    threads : int or None
        torch threads (None: leave torch's setting).
    """

    steps: Optional[int] = None
    minutes: Optional[float] = None
    batch_size: int = 32
    frame_px: int = 32
    lr: Optional[float] = None
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.03
    final_lr_fraction: float = 0.02
    grad_clip: float = 1.0
    checkpoint_minutes: float = 2.0
    validation_minutes: float = 1.0
    threads: Optional[int] = None

    def validate(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise UserError(f"schedule.steps must be ≥ 1, got {self.steps}")
        if self.minutes is not None and not self.minutes > 0:
            raise UserError(f"the time budget (--minutes) must be > 0, got {self.minutes:g}")
        if self.batch_size < 1:
            raise UserError(f"schedule.batch_size must be ≥ 1, got {self.batch_size}")
        if self.frame_px < 8 or self.frame_px % 4:
            raise UserError(f"schedule.frame_px must be a multiple of 4, ≥ 8, got {self.frame_px}")
        check_at_most(self.batch_size, MAX_BATCH_SIZE, "schedule.batch_size",
                      "samples are simulated one by one and --minutes is checked between steps")
        check_at_most(self.frame_px, MAX_FRAME_PX, "schedule.frame_px",
                      "larger frames add no context; raise schedule.batch_size instead")
        check_lr(self.lr, "schedule.lr")
        if not (0 <= self.warmup_fraction < 1 and 0 < self.final_lr_fraction <= 1):
            raise UserError("schedule: need 0 ≤ warmup_fraction < 1 and 0 < final_lr_fraction ≤ 1")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError("schedule: weight_decay and grad_clip must be ≥ 0")
        if self.checkpoint_minutes < 0 or self.validation_minutes < 0:
            raise UserError("schedule: checkpoint_minutes and validation_minutes must be ≥ 0")
        if self.threads is not None and not 1 <= self.threads <= MAX_THREADS:
            raise UserError(f"schedule.threads must be 1..{MAX_THREADS}, got {self.threads}")


@dataclass
class LossConfig:
    """Loss settings (SPEC §10).

    Attributes
    ----------
    bg_weight : float
        λ_bg, weight of the background term.
    window_px : int or None
        The mixture of each emitter sums over the (2·window_px + 1)² pixels around it
        (15× faster than all pixels at 32×32 and equal to 0.1 % at initialisation); None:
        every pixel.
    """

    bg_weight: float = 1.0
    window_px: Optional[int] = 3

    def validate(self) -> None:
        if self.bg_weight < 0:
            raise UserError(f"loss.bg_weight must be ≥ 0, got {self.bg_weight}")
        if self.window_px is not None and self.window_px < 2:
            raise UserError(f"loss.window_px must be ≥ 2 (or null), got {self.window_px}")


@dataclass
class ValidationConfig:
    """Held-back simulated samples: validation during training and threshold calibration.

    Attributes
    ----------
    n_samples : int
        Validation samples per activation model (independent, kinetics).
    calibration_samples : int
        Samples of the final threshold calibration (both activation models, other seed).
    frame_px : int
        Side of the held-back frames.
    tolerance_nm : float
        Matching radius of the Jaccard index that is maximised.
    thresholds : list of float
        Candidate score thresholds.
    decoder : {"clusters", "peaks"}
        Decoding method of the model (:class:`~stormfold.gridnet.decode.Decoder`).
    radii_px : list of float
        Candidate cluster radii (px) of ``clusters``, calibrated with the threshold.
    p_raw : float
        ``peaks``: minimum p of a candidate pixel (stored with the model).
    p_keeps : list of float
        ``peaks``: candidate values of ``p_keep`` (pixels with p ≥ p_keep are detections
        even when not a 3×3 maximum; > 1 switches that off), calibrated with the threshold.
    """

    n_samples: int = 48
    calibration_samples: int = 192
    frame_px: int = 64
    tolerance_nm: float = 100.0
    thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    decoder: str = "clusters"
    radii_px: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.75])
    p_raw: float = DEFAULT_P_RAW
    p_keeps: list[float] = field(default_factory=lambda: [0.5, 0.6, 0.7, 0.8, 2.0])

    def validate(self) -> None:
        if self.n_samples < 1 or self.calibration_samples < 1:
            raise UserError("validation: n_samples and calibration_samples must be ≥ 1")
        if self.frame_px < 8 or self.frame_px % 4:
            raise UserError(f"validation.frame_px must be a multiple of 4, ≥ 8, got {self.frame_px}")
        check_at_most(self.frame_px, MAX_VALIDATION_FRAME_PX, "validation.frame_px",
                      "held-back frames are kept in memory")
        for name in ("n_samples", "calibration_samples"):
            check_at_most(getattr(self, name), MAX_HELD_BACK, f"validation.{name}",
                          "held-back samples are simulated up front and kept in memory")
        if not self.tolerance_nm > 0:
            raise UserError(f"validation.tolerance_nm must be > 0, got {self.tolerance_nm}")
        if not self.thresholds or not all(0 < t <= 1 for t in self.thresholds):
            raise UserError("validation.thresholds must be a non-empty list of values in (0, 1]")
        if not 0 < self.p_raw < 1:
            raise UserError(f"validation.p_raw must be in (0, 1), got {self.p_raw}")
        if not self.p_keeps or min(self.p_keeps) < 0.5:
            raise UserError("validation.p_keeps must be a non-empty list of values ≥ 0.5")
        if self.decoder not in DECODERS:
            raise UserError(f"validation.decoder must be one of {', '.join(DECODERS)}, "
                            f"got {self.decoder!r}")
        lo, hi = RADIUS_RANGE_PX
        if not self.radii_px or not all(lo <= r <= hi for r in self.radii_px):
            raise UserError(f"validation.radii_px must be a non-empty list of values in "
                            f"[{lo:g}, {hi:g}]")


@dataclass
class GridnetTrainConfig:
    """Everything a gridnet training run needs (``--config`` YAML has the same nesting).

    ``simulation`` (a preset or a ``simulation.yaml``) centres the domain on one microscope
    (:func:`~stormfold.gridnet.sampler.domain_around`); without it the domain is the wide
    generalist one. ``domain`` entries override either. ``init`` is a model to start from
    (``builtin:gridnet-generalist``, a folder) or ``none``.
    """

    seed: int = 0
    init: str = "none"
    simulation: Optional[SimulationConfig] = None
    domain: DomainConfig = field(default_factory=DomainConfig)
    #: None: the init model's (or the default for ``init: none``). Given with an init model,
    #: wider widths grow that model (:mod:`~stormfold.gridnet.widen`).
    architecture: Optional[ArchitectureConfig] = None
    normalization: InputNormalization = field(default_factory=InputNormalization)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    #: Written to model.yaml: new models refine their localizations by default.
    refine: RefineOptions = field(default_factory=lambda: RefineOptions(method="mle"))

    def validate(self) -> None:
        if self.seed < 0:
            raise UserError(f"seed must be ≥ 0, got {self.seed}")
        if not str(self.init).strip():
            raise UserError("empty --init (init): give a model folder, builtin:NAME or none")


_SECTIONS = ("init", "simulation", "domain", "architecture", "normalization", "schedule", "loss",
             "validation", "refine")


def build_train_config(preset: str | None = None, config_file: str | Path | None = None,
                       overrides: list[str] | dict | None = None, seed: int | None = None,
                       minutes: float | None = None, steps: int | None = None,
                       init: str | None = None) -> GridnetTrainConfig:
    """Assemble a configuration: file → ``--set`` → options; then the domain and defaults.

    ``config_file`` is a training configuration (sections ``simulation``, ``domain``,
    ``architecture``, ``normalization``, ``schedule``, ``loss``, ``validation``, ``init``,
    ``seed``) or a ``simulation.yaml``. With a simulation (file or ``preset``) the domain is
    centred on it and ``init`` defaults to the shipped generalist (fine-tuning, ``minutes``
    15 by default); without one the domain is the generalist's and ``init`` defaults to
    ``none`` (``steps`` 20,000 by default).
    """
    if minutes is not None and not minutes > 0:
        raise UserError(f"--minutes must be > 0, got {minutes:g}")
    loaded, is_simulation = read_training_yaml(config_file, _SECTIONS)
    data: dict[str, Any] = {"simulation": loaded} if is_simulation else dict(loaded)
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    data = merge(data, over)
    if seed is not None:
        data["seed"] = seed
    if init is not None:
        data["init"] = init
    sched = data.get("schedule") or {}
    if not isinstance(sched, dict):
        raise UserError(f"schedule: expected a mapping (steps, minutes, ...), got "
                        f"{type(sched).__name__} {sched!r}")
    sched = dict(sched)
    if minutes is not None:
        sched["minutes"], sched["steps"] = minutes, None
    if steps is not None:
        sched["steps"] = steps
        if minutes is None:
            sched["minutes"] = None
    data["schedule"] = sched
    sim_data = data.pop("simulation", None)
    domain_over = data.pop("domain", None) or {}
    if not isinstance(domain_over, dict):
        raise UserError("domain: expected a mapping of domain ranges")
    cfg = from_dict(GridnetTrainConfig, data)
    if sim_data is not None and not isinstance(sim_data, dict):
        raise UserError("simulation: expected a mapping of simulation parameters")
    if sim_data is not None or preset is not None:
        sim_data = {k: v for k, v in (sim_data or {}).items() if k not in PROVENANCE_KEYS}
        cfg.simulation = build_config(preset=preset or sim_data.get("preset"), overrides=sim_data,
                                      seed=cfg.seed)
        base = domain_around(cfg.simulation)
    else:
        base = DomainConfig()
    cfg.domain = from_dict(DomainConfig, merge(to_dict(base), domain_over), where="domain")
    if "init" not in data:
        cfg.init = GENERALIST if cfg.simulation is not None else "none"
    if cfg.architecture is None and cfg.init == "none":
        cfg.architecture = ArchitectureConfig()
    s = cfg.schedule
    if s.steps is None and s.minutes is None:
        if cfg.init == "none":
            s.steps = 20000
        else:
            s.minutes = 15.0
    if s.lr is None:
        s.lr = 1e-3 if cfg.init == "none" else 3e-4
    return cfg


# ---------------------------------------------------------------------- schedule
def lr_at(step: int, total: int, base: float, warmup_fraction: float, final_fraction: float) -> float:
    """Learning rate of step ``step`` (0-based) of ``total``: linear warm-up, cosine decay."""
    warm = int(round(warmup_fraction * total))
    if step < warm:
        return base * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return base * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))

