"""Training of the camera-grid network on simulated batches drawn at every step.

The lifecycle is the shared one of :mod:`stormfold.training` (:class:`TrainingRun` for the
model folder, exact resume and the commands; :func:`run_loop` with a :class:`Budget` of steps
or minutes; :func:`write_history`); gridnet adds:

- Data: :class:`~stormfold.gridnet.sampler.Sampler` draws a new batch at every step from the
  randomised domain, with the generator seeded by (seed, 1, step): no data state is stored
  and a resumed run sees the same batches.
- Optimisation: AdamW, learning rate with a linear warm-up and a cosine decay over the
  whole run (:func:`~stormfold.gridnet.config.lr_at`), gradient-norm clipping.
- Time budget: with ``minutes`` the step count that sets the schedule is planned from the
  measured speed after a short warm-up and re-planned at 1/4, 1/2 and 3/4 of the plan; it is
  stored in the checkpoint, so a resumed run follows the same schedule.
- Validation: fixed held-back samples of both activation models (independent frames and
  blinking kinetics), Jaccard at 100 nm at the best score threshold, on the progress bar and
  against wall time in ``training.csv``; at the end the threshold and the decoder are
  calibrated on other held-back samples (:mod:`~stormfold.gridnet.validation`).
- Initialisation: from scratch, or (the default for a per-microscope model) from the
  shipped generalist, which is then fine-tuned on the microscope's domain; an
  ``architecture`` wider than the init model's grows it first (:mod:`.widen`).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from stormfold.checkpoint import Records
from stormfold.config import to_dict
from stormfold.errors import UserError
from stormfold.gridnet.config import (GENERALIST, GridnetTrainConfig, ScheduleConfig,
                                      ValidationConfig, build_train_config, lr_at)
from stormfold.gridnet.engine import ENGINE, sample_outputs
from stormfold.gridnet.loader import require_section
from stormfold.gridnet.loss import gridnet_loss
from stormfold.gridnet.network import ArchitectureConfig, GridNet, count_parameters, summary
from stormfold.gridnet.normalization import InputNormalization
from stormfold.gridnet.sampler import DomainConfig, Sampler, check_sigma
from stormfold.gridnet.validation import (decoder_variants, held_back, held_back_outputs,
                                        jaccard_curve, variant_label)
from stormfold.gridnet.widen import check_growable, widen
from stormfold.modelfile import model_section
from stormfold.training import Budget, TrainingRun, run_loop, write_history

__all__ = ["GENERALIST", "GridnetTrainConfig", "ScheduleConfig", "TrainResult", "ValidationConfig",
           "build_train_config", "held_back", "held_back_outputs", "jaccard_curve", "lr_at",
           "train_from_cli", "train_gridnet"]

HISTORY_CSV = "training.csv"
CURVE_PNG = "training.png"
HISTORY_COLUMNS = ("step", "seconds", "loss", "lr", "ji_independent", "ji_kinetics", "ji")
#: Time budget: steps before the speed is measured, steps measured, and the schedule length
#: assumed until then.
WARMUP_STEPS, PROBE_STEPS, PROVISIONAL_STEPS = 5, 20, 1000
#: What may differ between a checkpoint and its resumed run.
MAY_CHANGE = ("schedule.steps", "schedule.minutes", "schedule.checkpoint_minutes",
              "schedule.validation_minutes", "schedule.threads")


def _plot_history(fig, history: pd.DataFrame) -> None:
    """Loss and validation Jaccard against wall time (``training.png``)."""
    a1, a2 = fig.subplots(1, 2)
    minutes = history["seconds"] / 60
    a1.plot(minutes, history["loss"], lw=0.8)
    a1.set_xlabel("wall time (min)")
    a1.set_ylabel("training loss (running mean)")
    val = history[history["ji"].notna()]
    for key, label in (("ji", "both"), ("ji_independent", "independent frames"),
                       ("ji_kinetics", "blinking kinetics")):
        a2.plot(val["seconds"] / 60, val[key], "o-", ms=3, label=label)
    a2.set_xlabel("wall time (min)")
    a2.set_ylabel("validation Jaccard (100 nm)")
    a2.legend(fontsize=7)


def save_history(out_dir: Path, history: list[dict], plot: bool = True) -> None:
    """``training.csv`` and (``plot``) ``training.png``."""
    write_history(out_dir, history, HISTORY_CSV, HISTORY_COLUMNS,
                  png_name=CURVE_PNG if plot else None, plot=_plot_history if plot else None,
                  figsize=(8.0, 3.0))


@dataclass
class TrainResult:
    """What :func:`train_gridnet` produced."""

    out_dir: Path
    meta: dict[str, Any]
    history: list[dict]


def _config_key(config: GridnetTrainConfig) -> dict:
    """What a resumed run must share with its checkpoint (all but budget and validation)."""
    from stormfold.training import without

    key = without(to_dict(config), *MAY_CHANGE)
    key.pop("validation", None)
    return key


def initial_model(config: GridnetTrainConfig) -> tuple[GridNet, dict | None]:
    """The network to start from: fresh (seeded) or the ``init`` model's weights."""
    if config.init == "none":
        torch.manual_seed(config.seed)
        return GridNet(config.architecture), None
    from stormfold.gridnet.loader import read_gridnet

    return read_gridnet(config.init)


def _adopt_init(config: GridnetTrainConfig, init_meta: dict) -> GridnetTrainConfig:
    """Fine-tuning keeps the initial model's normalisation and its architecture, or grows it
    to the given wider one; it refuses a simulation whose σ in pixels is outside that model's
    range."""
    config = copy.deepcopy(config)
    source = str(config.init)
    architecture = require_section(init_meta, "architecture", source)
    init_arch = model_section(ArchitectureConfig, {k: v for k, v in architecture.items()
                                                   if k != "n_parameters"}, "architecture", source)
    if config.architecture is None:
        config.architecture = init_arch
    else:
        check_growable(init_arch, config.architecture, source)
    config.normalization = model_section(
        InputNormalization, require_section(init_meta, "normalization", source),
        "normalization", source)
    if config.simulation is not None:
        sim = config.simulation
        check_sigma(sim.emitters.sigma_nm, sim.pixel_size_nm,
                    model_section(DomainConfig, require_section(init_meta, "domain", source),
                                  "domain", source), source)
    return config


def train_gridnet(config: GridnetTrainConfig, out_dir: str | Path, resume: bool = False,
                  device: torch.device | str | None = None, progress: bool = True,
                  command: list[str] | None = None,
                  step_callback: Callable[[int], None] | None = None) -> TrainResult:
    """Train a gridnet model and write it to ``out_dir``.

    Parameters
    ----------
    config : GridnetTrainConfig
        From :func:`build_train_config`.
    out_dir : path
        Model folder: ``weights.safetensors`` + ``model.yaml`` at the end, ``training.csv``,
        ``training.png`` and ``checkpoint/``.
    resume : bool
        Continue from ``out_dir/checkpoint`` (same configuration but the budget).
    device : torch.device or str, optional
    progress : bool
        tqdm bar with the loss and the validation Jaccard.
    command : list of str, optional
        The command line, recorded in model.yaml.
    step_callback : callable(step), optional
        Called after every step (after its checkpoint, if any).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    threads = torch.get_num_threads()
    if config.schedule.threads is not None:
        torch.set_num_threads(config.schedule.threads)
    try:
        return _train(config, Path(out_dir), resume, device, progress, command, step_callback)
    finally:
        torch.set_num_threads(threads)


class _Trainer:
    """The mutable state of one run and its step function for :func:`run_loop`."""

    def __init__(self, config: GridnetTrainConfig, model: GridNet, run: TrainingRun,
                 device: torch.device):
        sched, vcfg, arch = config.schedule, config.validation, config.architecture
        if sched.frame_px % arch.size_multiple or vcfg.frame_px % arch.size_multiple:
            raise UserError(f"frame sizes must be multiples of {arch.size_multiple} for "
                            f"{arch.levels} levels")
        self.config, self.model, self.run, self.device = config, model, run, device
        self.sampler = Sampler(config.domain, frame_px=sched.frame_px,
                               context_frames=arch.context_frames)
        self.validation = held_back(config.domain, vcfg, arch.context_frames, vcfg.n_samples,
                                    config.seed, 2)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=sched.lr,
                                           weight_decay=sched.weight_decay)
        self.step, self.total_steps = 0, sched.steps
        self.history: list[dict] = []
        self.t_val: float | None = None
        self.running: float | None = None
        self.last_val: dict | None = None
        self.mark: tuple[int, float] | None = None
        self.replan_at: set[int] = set()
        self.bar = None
        self.last_valid = 0.0

    # ------------------------------------------------------------------ checkpoints
    def restore(self) -> None:
        restored = self.run.restore(self.model, self.optimizer,
                                    fields={"step": int, "history": Records(("step", "seconds"))})
        if restored is None:
            return
        _, state = restored
        self.step, self.history = int(state["step"]), state["history"]
        self.t_val = state.get("validation_seconds")
        if state.get("total_steps") is not None:
            self.total_steps = state["total_steps"]
        if self.config.schedule.steps is not None:
            self.total_steps = self.config.schedule.steps
        if self.history and "ji" in self.history[-1]:
            self.last_val = self.history[-1]

    def save(self) -> None:
        self.run.save(self.model, self.optimizer,
                      state={"step": self.step, "total_steps": self.total_steps,
                             "history": self.history, "validation_seconds": self.t_val})
        save_history(self.run.out_dir, self.history, plot=False)

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict:
        vcfg = self.config.validation
        curve = jaccard_curve(self.model, self.config.normalization, self.validation,
                              self.config.domain.pixel_size_nm, vcfg.thresholds,
                              decoder_variants(vcfg), vcfg.tolerance_nm)
        best = np.unravel_index(int(np.argmax(curve["all"])), curve["all"].shape)
        self.model.train()
        return {f"ji_{k}" if k != "all" else "ji": round(float(v[best]), 4)
                for k, v in curve.items()}

    def first_validation(self) -> None:
        t0 = time.perf_counter()
        self.last_val = self.validate()
        self.t_val = time.perf_counter() - t0
        self.history.append({"step": 0, "seconds": round(self.run.seconds, 2), "loss": None,
                             "lr": None, **self.last_val})

    # ------------------------------------------------------------------ one step
    def loss_step(self, step: int) -> tuple[float, float]:
        config, sched = self.config, self.config.schedule
        norm = config.normalization
        batch = self.sampler.batch(sched.batch_size, np.random.default_rng([config.seed, 1, step]))
        out = sample_outputs(self.model, norm, torch.from_numpy(batch.frames).to(self.device))
        terms = gridnet_loss(out, torch.from_numpy(batch.emitters).to(self.device),
                             torch.from_numpy(batch.mask).to(self.device),
                             torch.from_numpy(batch.bg).to(self.device),
                             bg_unit=norm.scale_photons, bg_weight=config.loss.bg_weight,
                             window_px=config.loss.window_px)
        lr = lr_at(step, self.total_steps or PROVISIONAL_STEPS, sched.lr, sched.warmup_fraction,
                   sched.final_lr_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if sched.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), sched.grad_clip)
        self.optimizer.step()
        return float(terms.total.detach()), lr

    def replan(self) -> None:
        """With a time budget, fix the step count from the measured speed (after a warm-up)
        and re-plan it at a quarter, half and three quarters of the plan."""
        sched, step, seconds = self.config.schedule, self.step, self.run.seconds
        if self.mark is None and (step >= WARMUP_STEPS or self.run.resume):
            self.mark = (step, seconds)
        if self.mark is None or step not in self.replan_at or step <= self.mark[0]:
            return
        per_step = (seconds - self.mark[1]) / (step - self.mark[0])
        per_val = (self.t_val or 0.0) / max(1.0, sched.validation_minutes * 60.0)
        remaining = sched.minutes * 60.0 - seconds - 2.0 * (self.t_val or 0.0)
        self.total_steps = step + max(1, int(remaining / (per_step * (1 + per_val))))
        self.replan_at = {int(self.total_steps * f) for f in (0.25, 0.5, 0.75)
                          if int(self.total_steps * f) > step}
        self.bar.reset(total=self.total_steps)
        self.bar.update(step - 1)

    def __call__(self, step: int) -> dict:
        self.model.train()
        value, lr = self.loss_step(step)
        self.step = step + 1
        self.running = value if self.running is None else 0.98 * self.running + 0.02 * value
        if self.config.schedule.steps is None:
            self.replan()
        self.bar.update(1)
        row = {"step": self.step, "seconds": round(self.run.seconds, 2),
               "loss": round(self.running, 4), "lr": lr}
        if self.done or self.run.seconds - self.last_valid >= \
                self.config.schedule.validation_minutes * 60.0:
            self.last_val = self.validate()
            row.update(self.last_val)
            self.last_valid = self.run.seconds
        self.history.append(row)
        self.bar.set_postfix(loss=f"{self.running:.4g}",
                             ji="-" if self.last_val is None else f"{self.last_val['ji']:.3f}")
        return row

    @property
    def done(self) -> bool:
        return self.total_steps is not None and self.step >= self.total_steps


#: Bytes per pixel and per full-resolution feature channel of one training step (the
#: activations the backward pass keeps, their gradients, float32): 2.1 GB peak RSS was
#: measured for 2 steps of batch 64 × 64² px (zerocost preset, 3 context frames; 0.4 GB of
#: that is torch and the validation), i.e. about 90 bytes.
STEP_BYTES_PER_CHANNEL_PX = 96.0
#: Floats per pixel of one held-back sample besides its frames: background and the eight
#: output maps kept for the threshold calibration.
HELD_BACK_FLOATS_PX = 9


def training_memory_bytes(config: GridnetTrainConfig) -> float:
    """Estimated peak memory (bytes) of a gridnet training run: one step's batch and
    activations plus the held-back validation and calibration samples."""
    sched, vcfg, arch = config.schedule, config.validation, config.architecture
    kinds = 2 if arch.context_frames > 1 else 1
    channels = arch.context_frames * (arch.frame_width + 1) + arch.context_width
    step = float(sched.batch_size) * sched.frame_px ** 2 * channels * STEP_BYTES_PER_CHANNEL_PX
    held = (float(vcfg.n_samples) + vcfg.calibration_samples) * kinds * vcfg.frame_px ** 2 \
        * (arch.context_frames + HELD_BACK_FLOATS_PX) * 4.0
    return step + held


def check_training_memory(config: GridnetTrainConfig) -> None:
    """Refuse, before anything is simulated, a run whose estimate does not fit in memory."""
    from stormfold.io.readers import check_memory

    s, v = config.schedule, config.validation
    check_memory(training_memory_bytes(config),
                 f"gridnet training: batches of {s.batch_size} × {s.frame_px}² px and "
                 f"{v.n_samples} + {v.calibration_samples} held-back samples of {v.frame_px}² px "
                 f"need about", " (lower schedule.batch_size or the frame sizes)")


def _train(config: GridnetTrainConfig, out_dir: Path, resume: bool, device: torch.device,
           progress: bool, command: list[str] | None,
           step_callback: Callable[[int], None] | None) -> TrainResult:
    from tqdm import tqdm

    from stormfold.modelfile import save_model

    t_start = time.perf_counter()
    model, init_meta = initial_model(config)
    if init_meta is not None:
        config = _adopt_init(config, init_meta)
        if config.architecture != model.config:
            model = widen(model, config.architecture, config.seed)
    check_training_memory(config)
    run = TrainingRun(out_dir, resume, _config_key(config), "the budget (schedule.steps, "
                      "schedule.minutes, --minutes, --steps)", command, engine=ENGINE)
    model = model.to(device).to(memory_format=torch.channels_last)
    sched, vcfg = config.schedule, config.validation
    tr = _Trainer(config, model, run, device)
    tr.restore()
    out_dir.mkdir(parents=True, exist_ok=True)
    tr.bar = tqdm(total=tr.total_steps, initial=tr.step, unit="step", desc="train gridnet",
                  disable=not progress, dynamic_ncols=True)
    run.start_clock()
    if tr.step == 0:
        tr.first_validation()
    tr.last_valid = last_ckpt = run.seconds
    if tr.total_steps is None:
        tr.replan_at = {max(WARMUP_STEPS, tr.step + 1) + PROBE_STEPS}
    else:
        tr.replan_at = {int(tr.total_steps * f) for f in (0.25, 0.5, 0.75)
                        if int(tr.total_steps * f) > tr.step}

    def after(steps_done: int, record: dict) -> None:
        nonlocal last_ckpt
        if tr.done or run.seconds - last_ckpt >= sched.checkpoint_minutes * 60.0:
            tr.save()
            last_ckpt = run.seconds
        if step_callback is not None:
            step_callback(steps_done)

    try:
        if not tr.done:
            run_loop(tr, tr.step, Budget(steps=sched.steps, minutes=sched.minutes), run,
                     after=after, converged=lambda record: tr.done, model=tr.model)
    finally:
        tr.bar.close()
    if "ji" not in tr.history[-1]:
        tr.history[-1].update(tr.validate())
    tr.save()
    train_seconds = run.seconds

    calib_sets = held_back(config.domain, vcfg, config.architecture.context_frames,
                           vcfg.calibration_samples, config.seed, 3)
    curve = jaccard_curve(model, config.normalization, calib_sets, config.domain.pixel_size_nm,
                          vcfg.thresholds, decoder_variants(vcfg), vcfg.tolerance_nm)
    meta = model_metadata(config, model, init_meta, curve, tr.history, tr.step, tr.total_steps,
                          train_seconds, time.perf_counter() - t_start, run.commands)
    save_history(out_dir, tr.history)
    # The model files and the manifest go in as one set; the history files are listed in it.
    save_model(out_dir, {k: v.detach().cpu() for k, v in model.state_dict().items()}, meta,
               adopt=[HISTORY_CSV, CURVE_PNG])
    return TrainResult(out_dir, meta, tr.history)


def model_metadata(config: GridnetTrainConfig, model: GridNet, init_meta: dict | None,
                   curve: dict[str, np.ndarray], history: list[dict], steps: int,
                   total_steps: int | None, train_seconds: float, total_seconds: float,
                   commands: list[list[str]]) -> dict[str, Any]:
    """The content of model.yaml; the threshold and the decoder are the best of the
    calibration ``curve`` (from :func:`jaccard_curve` on held-back samples)."""
    vcfg = config.validation
    specific = config.simulation is not None
    variants = decoder_variants(vcfg)
    i, j = np.unravel_index(int(np.argmax(curve["all"])), curve["all"].shape)
    return {
        "engine": ENGINE,
        "architecture": {**to_dict(config.architecture), "n_parameters": count_parameters(model)},
        "summary": summary(model),
        "normalization": to_dict(config.normalization),
        "threshold": float(vcfg.thresholds[j]),
        "decoder": variants[i].metadata(),
        "refine": config.refine.metadata(),
        # A camera-specific model keeps the 10 % pixel-size rule; the generalist runs at any
        # pixel size whose σ in pixels is inside domain.sigma_px.
        "pixel_size_nm": config.domain.pixel_size_nm if specific else None,
        "camera": to_dict(config.simulation.camera) if specific else None,
        "domain": to_dict(config.domain),
        "calibration": {
            "tolerance_nm": vcfg.tolerance_nm,
            "frames": f"{vcfg.calibration_samples} + {vcfg.calibration_samples} held-back "
                      f"simulated samples ({vcfg.frame_px}×{vcfg.frame_px} px; independent "
                      f"frames + blinking kinetics), seed ({config.seed}, 3)",
            "jaccard": {k: round(float(v[i, j]), 4) for k, v in curve.items()},
            "jaccard_by_decoder": {variant_label(d): round(float(curve["all"][k].max()), 4)
                                   for k, d in enumerate(variants)},
            "curve": [[t, round(float(v), 4)] for t, v in zip(vcfg.thresholds, curve["all"][i])],
        },
        "validation": {k: history[-1].get(k) for k in ("ji", "ji_independent", "ji_kinetics")},
        "training": {
            "command": commands[0] if commands else None,
            "resumed_with": commands[1:],
            "seed": config.seed,
            "init": config.init,
            # Provenance of the starting model (its own training, recursively).
            "init_model": {"stormfold_version": init_meta.get("stormfold_version"),
                           "created": init_meta.get("created"),
                           "training": {k: init_meta.get("training", {}).get(k) for k in
                                        ("command", "resumed_with", "steps", "wall_time",
                                         "train_seconds", "init", "init_model")}}
            if init_meta else None,
            "config": to_dict(config),
            "steps": steps,
            "planned_steps": total_steps,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(total_seconds, 1),
            "wall_time": f"{train_seconds / 3600:.2f} h" if train_seconds > 3600 else
            f"{train_seconds / 60:.1f} min",
            "history": HISTORY_CSV,
        },
    }


def train_from_cli(out: str | Path, preset: str | None = None,
                   config_file: str | Path | None = None,
                   overrides: list[str] | dict | None = None, seed: int | None = None,
                   minutes: float | None = None, steps: int | None = None,
                   init: str | None = None, resume: bool | None = None,
                   device: torch.device | str | None = None, progress: bool = True,
                   command: list[str] | None = None) -> TrainResult:
    """``stormfold train gridnet`` as one call: build the configuration, then train.

    ``resume=None`` continues an unfinished checkpoint in ``out`` when there is one (as the
    pipeline's ``--resume`` needs) and starts afresh otherwise.
    """
    config = build_train_config(preset=preset, config_file=config_file, overrides=overrides,
                                seed=seed, minutes=minutes, steps=steps, init=init)
    if resume is None:
        resume = TrainingRun.unfinished(out)
    return train_gridnet(config, out, resume=resume, device=device, progress=progress,
                         command=command)
