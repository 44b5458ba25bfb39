"""The configuration of ``stormfold train deepstorm`` (``--config`` YAML / ``--set`` keys)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from stormfold.config import from_dict, merge, parse_overrides
from stormfold.deepstorm.engine import UPSAMPLINGS
from stormfold.deepstorm.model import DEFAULT_CHANNELS, MAX_CHANNELS
from stormfold.errors import UserError
from stormfold.simulate.config import PROVENANCE_KEYS, SimulationConfig, build_config
from stormfold.training import check_at_most, check_lr, read_config_file

#: Thresholds (fractions of target_scale) tried by the calibration.
DEFAULT_THRESHOLDS = tuple(float(v) for v in np.round(np.geomspace(0.001, 1.0, 61), 6))


@dataclass
class ArchitectureConfig:
    """The network and its output scale.

    Attributes
    ----------
    arch : "deepstorm"
        The faithful Deep-STORM encoder–decoder.
    channels : 4 int
        Encoder channels (32, 64, 128, 512 in the paper); smaller for quick tests.
    upsampling : {4, 8, 16}
        Fine-grid factor L.
    target_scale : float
        Multiplier of the target maps (100).
    """

    arch: Literal["deepstorm"] = "deepstorm"
    channels: tuple[int, int, int, int] = DEFAULT_CHANNELS
    upsampling: int = 8
    target_scale: float = 100.0

    def validate(self) -> None:
        if self.upsampling not in UPSAMPLINGS:
            raise UserError(f"architecture.upsampling must be one of {UPSAMPLINGS}, "
                            f"got {self.upsampling}")
        if min(self.channels) < 1:
            raise UserError(f"architecture.channels must be positive, got {list(self.channels)}")
        check_at_most(max(self.channels), MAX_CHANNELS, "architecture.channels",
                      "wider layers would not fit in memory")
        if not self.target_scale > 0:
            raise UserError(f"architecture.target_scale must be > 0, got {self.target_scale}")


#: Largest number of training patches: 100× the 10,000 of Deep-STORM's recipe; all are kept in
#: memory and every epoch sees each once, so more make hour-long epochs.
MAX_PATCHES = 1_000_000
#: Largest patch side (camera px): the paper's patches are 26 px, about the network's
#: receptive field; a patch is upsampled L× and (128 · 16)² fine pixels is one large image.
MAX_PATCH_PX = 128
#: Largest batch (patches per optimisation step; the paper's is 16).
MAX_BATCH_SIZE = 1024


@dataclass
class PatchConfig:
    """Training patches: how many, how big, which are kept, and the validation share."""

    n_patches: int = 10000
    patch_px: int = 26
    min_emitters: int = 7
    val_fraction: float = 0.3

    def validate(self) -> None:
        if self.n_patches < 2:
            raise UserError(f"patches.n_patches must be ≥ 2, got {self.n_patches}")
        if self.patch_px < 1:
            raise UserError(f"patches.patch_px must be ≥ 1, got {self.patch_px}")
        check_at_most(self.n_patches, MAX_PATCHES, "patches.n_patches (--patches)",
                      "every patch is kept in memory and seen in every epoch")
        check_at_most(self.patch_px, MAX_PATCH_PX, "patches.patch_px",
                      "the network sees a few tens of pixels; larger patches only cost memory")
        if self.min_emitters < 0:
            raise UserError(f"patches.min_emitters must be ≥ 0, got {self.min_emitters}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"patches.val_fraction must be in (0, 1), got {self.val_fraction}")


@dataclass
class ScheduleConfig:
    """Optimisation: Adam, ReduceLROnPlateau on the validation loss, best checkpoint kept.

    Attributes
    ----------
    epochs : int
        Number of epochs (each sees every training patch once).
    batch_size : int
        Patches per step.
    lr, lr_factor, lr_patience, lr_min : float, float, int, float
        Adam learning rate and its plateau schedule.
    precision : {"auto", "float32", "bfloat16"}
        Arithmetic of the forward/backward pass (weights stay float32). ``auto`` uses
        bfloat16 autocast where the device has native bf16 (CPUs with AVX-512 BF16 or AMX,
        CUDA GPUs from Ampere on: :func:`stormfold.device.native_bf16`), else float32.
    """

    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-3
    lr_factor: float = 0.1
    lr_patience: int = 5
    lr_min: float = 5e-5
    precision: Literal["auto", "float32", "bfloat16"] = "auto"

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("schedule.epochs and schedule.batch_size must be ≥ 1")
        check_at_most(self.batch_size, MAX_BATCH_SIZE, "schedule.batch_size (--batch-size)",
                      "the activations of one batch are held for the backward pass")
        check_lr(self.lr, "schedule.lr (--lr)")
        if not 0 < self.lr_factor < 1 or self.lr_patience < 0 or self.lr_min < 0:
            raise UserError("schedule: need 0 < lr_factor < 1, lr_patience ≥ 0 and "
                            "lr_min ≥ 0")


@dataclass
class CalibrationConfig:
    """Threshold calibration on held-back frames (maximum Jaccard at ``tolerance_nm``).

    Attributes
    ----------
    n_frames : int
        Frames simulated for the calibration (seed + 1), simulation mode only; with a given
        movie the validation patches are used.
    tolerance_nm : float
        Matching radius of the Jaccard index that is maximised.
    thresholds : list of float
        Candidate thresholds (fractions of target_scale).
    """

    n_frames: int = 20
    tolerance_nm: float = 100.0
    thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))

    def validate(self) -> None:
        if self.n_frames < 1:
            raise UserError(f"calibration.n_frames must be ≥ 1, got {self.n_frames}")
        if not self.tolerance_nm > 0:
            raise UserError(f"calibration.tolerance_nm must be > 0, got {self.tolerance_nm}")
        if not self.thresholds or min(self.thresholds) <= 0:
            raise UserError("calibration.thresholds must be a non-empty list of values > 0")


@dataclass
class DeepStormTrainConfig:
    """Everything a Deep-STORM training run needs (``--config`` YAML has the same nesting).

    ``seed`` seeds everything: the training simulation (seed), the calibration frames
    (seed + 1), the patch draws, the split, the initialisation and the data order.
    """

    seed: int = 0
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    architecture: ArchitectureConfig = field(default_factory=ArchitectureConfig)
    patches: PatchConfig = field(default_factory=PatchConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def validate(self) -> None:
        if self.seed < 0:
            raise UserError(f"seed must be ≥ 0, got {self.seed}")


def build_train_config(preset: str | None = None, config_file: str | Path | None = None,
                       overrides: list[str] | dict | None = None, seed: int | None = None,
                       epochs: int | None = None, n_patches: int | None = None,
                       batch_size: int | None = None,
                       lr: float | None = None) -> DeepStormTrainConfig:
    """Assemble a training configuration: preset → YAML file → ``--set`` → explicit options.

    ``config_file`` is either a training configuration (sections ``simulation``,
    ``architecture``, ``patches``, ``schedule``, ``calibration``, ``seed``) or a simulation
    file (``simulation.yaml`` of ``stormfold simulate``/``calibrate``), which then becomes the
    ``simulation`` section.
    """
    data: dict[str, Any] = read_config_file(config_file, DeepStormTrainConfig, "simulation")
    over = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    data = merge(data, over)
    explicit = {"epochs": epochs, "batch_size": batch_size, "lr": lr}
    data = merge(data, {"schedule": {k: v for k, v in explicit.items() if v is not None}})
    if n_patches is not None:
        data = merge(data, {"patches": {"n_patches": n_patches}})
    if seed is not None:
        data["seed"] = seed
    sim = data.pop("simulation", None) or {}
    if not isinstance(sim, dict):
        raise UserError("simulation: expected a mapping of simulation parameters")
    sim = {k: v for k, v in sim.items() if k not in PROVENANCE_KEYS}
    train_seed = data.get("seed", 0)
    cfg = from_dict(DeepStormTrainConfig, data)
    cfg.simulation = build_config(preset=preset or sim.get("preset"), overrides=sim,
                                  seed=int(train_seed))
    return cfg
