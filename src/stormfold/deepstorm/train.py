"""Training of Deep-STORM on simulated (or given) movies (SPEC §4), with exact resume.

Deep-STORM supplies its network, loss and decoder to the training lifecycle of
:mod:`stormfold.training`: simulate the training frames (or read a movie and its ground
truth) → fix the normalisation from these frames → draw patches (≥ ``min_emitters``
emitters each; targets on the fine grid) → 70/30 train/validation split → Adam with
ReduceLROnPlateau on the validation loss, keeping the best-validation weights → calibrate
the extraction threshold on held-back frames (maximum Jaccard at 100 nm) and, at that
threshold, the photons and uncertainty estimates (:mod:`stormfold.deepstorm.estimates`)
→ write the model.

Every epoch ends with a checkpoint (model, optimizer, scheduler, best weights, history).
The data order of epoch e is a permutation seeded by (seed, e) and the model is initialised
from ``seed``, so a run interrupted anywhere and resumed from its last checkpoint ends with
the same epochs and the same weights as an uninterrupted run.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from stormfold import __version__
from stormfold.checkpoint import Records, damaged
from stormfold.config import to_dict
from stormfold.deepstorm.config import DeepStormTrainConfig, build_train_config
from stormfold.deepstorm.data import PatchSet, batch_targets, extract_patches
from stormfold.deepstorm.engine import ENGINE, DeepStormEngine
from stormfold.deepstorm.loss import DeepStormLoss
from stormfold.deepstorm.model import DeepSTORM, count_parameters
from stormfold.deepstorm.normalization import Normalization, fit_normalization, upsample
from stormfold.device import resolve_precision
from stormfold.errors import UserError
from stormfold.training import (Budget, Calibration, TrainingData, TrainingRun, movie_data,
                                run_loop, simulated_data, without, write_history)
from stormfold.training import calibrate_threshold as calibrate_by_jaccard

HISTORY_CSV = "training.csv"
LOSS_PNG = "loss.png"
HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "lr", "seconds")
__all__ = ["DeepStormTrainConfig", "TrainResult", "build_train_config", "calibrate_threshold",
           "train_deepstorm", "train_from_cli"]


# ---------------------------------------------------------------------- helpers
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """Data order of an epoch: a permutation seeded by (seed, epoch) alone."""
    return np.random.default_rng([seed, 0xE90C, epoch]).permutation(n)


def split_patches(patches: PatchSet, val_fraction: float, seed: int) -> tuple[PatchSet, PatchSet]:
    """Random train/validation split of the patches (seeded)."""
    order = np.random.default_rng([seed, 0x5B1]).permutation(len(patches))
    n_val = max(1, int(round(val_fraction * len(patches))))
    if n_val >= len(patches):
        raise UserError("patches: the validation share leaves no training patch")
    return patches.subset(np.sort(order[n_val:])), patches.subset(np.sort(order[:n_val]))


def model_inputs(patches: PatchSet, index: np.ndarray, normalization: Normalization,
                 device: torch.device) -> torch.Tensor:
    """Network inputs of patches ``index``: normalised, ×L pixel replication, (n, 1, S, S)."""
    images = torch.from_numpy(patches.images[index]).to(device)
    return upsample(normalization.apply(images), patches.upsampling)[:, None]


def evaluate_loss(model: DeepSTORM, loss_fn: DeepStormLoss, patches: PatchSet,
                  normalization: Normalization, target_scale: float, batch_size: int,
                  device: torch.device, precision: str) -> float:
    """Mean loss over patches (network in eval mode, batch-weighted)."""
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(patches), batch_size):
            index = np.arange(start, min(start + batch_size, len(patches)))
            x = model_inputs(patches, index, normalization, device)
            y = batch_targets(patches, index, target_scale, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
                pred = model(x.contiguous(memory_format=torch.channels_last))
            total += loss_fn(pred, y).item() * len(index)
            n += len(index)
    return total / n


def _plot_loss(fig, history: pd.DataFrame) -> None:
    ax = fig.add_subplot()
    ax.plot(history["epoch"], history["loss"], "o-", ms=3, label="training")
    ax.plot(history["epoch"], history["val_loss"], "o-", ms=3, label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("Deep-STORM training")


# ---------------------------------------------------------------------- calibration
def calibrate_threshold(engine: DeepStormEngine, photons: np.ndarray, truth: pd.DataFrame,
                        pixel_size_nm: float, thresholds: list[float], tolerance_nm: float = 100.0,
                        source: str = "") -> Calibration:
    """The threshold (fraction of target_scale) maximising the Jaccard index on given frames.

    Deep-STORM's decoder for :func:`stormfold.training.calibrate_threshold`: the network runs
    once and local maxima are found once at the lowest threshold; each candidate only
    filters them (a local maximum does not depend on the threshold).
    """
    from stormfold.localize.peaks import find_peaks, peaks_to_table

    lowest = min(float(t) for t in thresholds)
    peaks = find_peaks(engine.predict(photons), lowest * engine.target_scale)
    table = peaks_to_table(peaks, 0, pixel_size_nm / engine.upsampling,
                           confidence_scale=engine.target_scale)
    peak_value = peaks.value.cpu().numpy() / engine.target_scale

    def decode(threshold: float) -> pd.DataFrame:
        return table[peak_value > threshold]

    return calibrate_by_jaccard(decode, truth, thresholds, tolerance_nm, len(photons), source)


def _calibration_frames(config: DeepStormTrainConfig, data: TrainingData, val_set: PatchSet,
                        from_movie: bool) -> tuple[np.ndarray, pd.DataFrame, str]:
    """Held-back frames for the calibrations: fresh simulated frames (seed + 1), or the
    validation patches of a given movie. Returns (photons, truth, description)."""
    if not from_movie:
        sim = copy.deepcopy(config.simulation)
        sim.seed, sim.n_frames = config.seed + 1, config.calibration.n_frames
        cal = simulated_data(sim)
        return cal.photons, cal.truth, (f"{sim.n_frames} simulated frames of the training "
                                        f"simulation (preset {sim.preset}), seed {sim.seed}")
    return (val_set.images, val_set.truth_table(data.pixel_size_nm),
            f"{len(val_set)} validation patches")


def _calibrate(config: DeepStormTrainConfig, engine: DeepStormEngine, data: TrainingData,
               val_set: PatchSet, from_movie: bool) -> tuple[Calibration, dict]:
    """Threshold calibration, then the photons/uncertainty estimates at that threshold, on
    the same held-back frames (:func:`_calibration_frames`)."""
    from stormfold.deepstorm.estimates import DeepStormEstimates, calibrate_estimates

    cal_cfg = config.calibration
    photons, truth, source = _calibration_frames(config, data, val_set, from_movie)
    calibration = calibrate_threshold(engine, photons, truth, data.pixel_size_nm,
                                      cal_cfg.thresholds, cal_cfg.tolerance_nm, source=source)
    engine.threshold = calibration.threshold
    estimates = calibrate_estimates(engine, photons, truth, data.pixel_size_nm,
                                    cal_cfg.tolerance_nm)
    estimates = {"frames": source, "stormfold_version": __version__, **estimates}
    if "photons" in estimates:
        engine.estimates = DeepStormEstimates.from_meta(estimates)
    return calibration, estimates


# ---------------------------------------------------------------------- training
def train_epoch(model: DeepSTORM, optimizer: torch.optim.Optimizer, loss_fn: DeepStormLoss,
                patches: PatchSet, normalization: Normalization, target_scale: float,
                batch_size: int, order: np.ndarray, device: torch.device, precision: str,
                on_step: Callable[[int, float], None] | None = None) -> float:
    """One pass over ``patches`` in ``order``, in batches; returns the mean training loss.

    ``on_step(step, running_mean_loss)`` is called after every optimisation step.
    """
    model.train()
    running, seen = 0.0, 0
    for step, start in enumerate(range(0, len(order), batch_size)):
        index = order[start:start + batch_size]
        x = model_inputs(patches, index, normalization, device)
        y = batch_targets(patches, index, target_scale, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
            pred = model(x.contiguous(memory_format=torch.channels_last))
        loss = loss_fn(pred, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running += loss.item() * len(index)
        seen += len(index)
        if on_step is not None:
            on_step(step, running / seen)
    return running / seen


@dataclass
class TrainResult:
    """What :func:`train_deepstorm` produced."""

    out_dir: Path
    meta: dict[str, Any]
    history: list[dict]
    engine: DeepStormEngine


#: The checkpoint state a resumed run needs (see :func:`stormfold.checkpoint.check_fields`).
STATE_FIELDS = {"epoch": int, "history": Records(("epoch", "loss", "val_loss", "lr")),
                "best_val": float, "best_epoch": float, "scheduler": dict}


@dataclass
class _State:
    """What changes from epoch to epoch (all of it goes into the checkpoint)."""

    model: DeepSTORM
    optimizer: torch.optim.Optimizer
    scheduler: Any
    history: list[dict] = field(default_factory=list)
    best_val: float = float("inf")
    best_epoch: int = -1
    best_weights: dict = field(default_factory=dict)

    def keep_if_best(self, val_loss: float, epoch: int) -> None:
        if val_loss < self.best_val:
            self.best_val, self.best_epoch = val_loss, epoch
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def save(self, run: TrainingRun, epoch: int) -> None:
        run.save(self.model, self.optimizer,
                 tensors={f"best.{k}": v for k, v in self.best_weights.items()},
                 state={"epoch": epoch, "history": self.history, "best_val": self.best_val,
                        "best_epoch": self.best_epoch, "scheduler": self.scheduler.state_dict()})

    def restore(self, run: TrainingRun, fingerprint: str, epochs: int, device) -> int:
        """Continue a checkpoint (resume); returns the first epoch to run."""
        loaded = run.restore(self.model, self.optimizer, data=fingerprint, fields=STATE_FIELDS)
        if loaded is None:
            return 0
        extra, state = loaded
        try:
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise damaged(run.checkpoint_dir, exc) from None
        self.history = state["history"]
        self.best_val, self.best_epoch = state["best_val"], state["best_epoch"]
        self.best_weights = {k[len("best."):]: v.to(device) for k, v in extra.items()
                             if k.startswith("best.")}
        first = state["epoch"] + 1
        if epochs < first:
            raise UserError(f"--resume: the checkpoint already has {first} epochs, more "
                            f"than the {epochs} asked for")
        return first


def _build(config: DeepStormTrainConfig, device: torch.device) -> _State:
    """Network (initialised from the seed), Adam and the plateau schedule."""
    sched = config.schedule
    torch.manual_seed(config.seed)
    model = DeepSTORM(config.architecture.channels).to(device).to(
        memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=sched.lr, eps=1e-7)  # Keras epsilon
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=sched.lr_factor, patience=sched.lr_patience,
        min_lr=sched.lr_min)
    state = _State(model, optimizer, scheduler)
    state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state


def _training_patches(config: DeepStormTrainConfig, movie: str | Path | None,
                      truth: str | Path | None, movie_options: dict | None = None
                      ) -> tuple[TrainingData, PatchSet]:
    """The training frames (simulated, or the given movie) and the patches drawn from them."""
    pcfg = config.patches
    if movie is not None:
        data = movie_data(movie, truth, fallback_pixel_size_nm=config.simulation.pixel_size_nm,
                          fallback_camera=(config.simulation.camera,
                                           "configuration simulation.camera"),
                          movie_options=movie_options)
    else:
        data = simulated_data(config.simulation)
    patches = extract_patches(data.photons, data.truth, data.pixel_size_nm, pcfg.n_patches,
                              pcfg.patch_px, pcfg.min_emitters, config.architecture.upsampling,
                              seed=config.seed)
    return data, patches


#: Bytes per fine-grid pixel and per channel-at-full-resolution of one training step: the
#: convolution, batch-norm and ReLU outputs the backward pass keeps and their gradients.
STEP_BYTES_PER_CHANNEL_PX = 6 * 4.0


def check_training_memory(config: DeepStormTrainConfig) -> None:
    """Refuse, before any data are made, a run whose patches and training step would not
    fit in memory (the estimate counts each level's channels at its resolution)."""
    from stormfold.io.readers import check_memory

    arch, pcfg, sched = config.architecture, config.patches, config.schedule
    c = arch.channels
    # Encoder and decoder at full, 1/2 and 1/4 resolution, the bottleneck at 1/8.
    channels = 2 * c[0] + 2 * c[1] / 4 + 2 * c[2] / 16 + c[3] / 64
    fine_px = float(pcfg.patch_px * arch.upsampling) ** 2
    step = sched.batch_size * fine_px * channels * STEP_BYTES_PER_CHANNEL_PX
    stored = float(pcfg.n_patches) * pcfg.patch_px ** 2 * 4.0 * 2
    check_memory(step + stored,
                 f"deepstorm training: {pcfg.n_patches} patches of {pcfg.patch_px}² px, "
                 f"batches of {sched.batch_size} at upsampling {arch.upsampling}, need about",
                 " (lower the batch size, the patch size or the number of patches)")


def train_deepstorm(config: DeepStormTrainConfig, out_dir: str | Path,
                    movie: str | Path | None = None, truth: str | Path | None = None,
                    resume: bool = False, device: torch.device | str | None = None,
                    progress: bool = True, command: list[str] | None = None,
                    step_callback: Callable[[int, int], None] | None = None,
                    movie_options: dict | None = None) -> TrainResult:
    """Train a Deep-STORM model and write it to ``out_dir``.

    Parameters
    ----------
    config : DeepStormTrainConfig
        From :func:`build_train_config`.
    out_dir : path
        Model folder: ``weights.safetensors`` + ``model.yaml`` at the end, ``training.csv``,
        ``loss.png`` and ``checkpoint/`` (updated every epoch).
    movie, truth : path, optional
        Train on this movie and ground truth instead of simulating (give both).
    resume : bool
        Continue from ``out_dir/checkpoint`` (same configuration; the epoch count may grow).
    device : torch.device or str, optional
        Compute device (default CPU).
    progress : bool
        Show a progress bar with the loss and validation loss.
    command : list of str, optional
        The command line, recorded in model.yaml.
    step_callback : callable(epoch, step), optional
        Called after every optimisation step (0-based epoch and step within the epoch).
    movie_options : dict, optional
        How ``movie`` is read (``nan_policy``, ``axes``, ``z``, ``channel``).
    """
    from tqdm import tqdm

    if (movie is None) != (truth is None):
        raise UserError("give both --movie and --truth to train on an existing movie")
    key = without(to_dict(config), "calibration", "schedule.epochs")
    run = TrainingRun(out_dir, resume, key, "schedule.epochs", command, engine=ENGINE)
    device = torch.device(device) if device is not None else torch.device("cpu")
    arch, sched, pcfg = config.architecture, config.schedule, config.patches
    precision = resolve_precision(sched.precision, device)
    L = arch.upsampling
    if (pcfg.patch_px * L) % 8:
        raise UserError(f"patches.patch_px × upsampling ({pcfg.patch_px}×{L}) must be a "
                        f"multiple of 8")
    check_training_memory(config)
    t_start = time.perf_counter()

    data, patches = _training_patches(config, movie, truth, movie_options)
    normalization = fit_normalization(data.photons)
    train_set, val_set = split_patches(patches, pcfg.val_fraction, config.seed)
    loss_fn = DeepStormLoss().to(device)
    st = _build(config, device)
    first_epoch = st.restore(run, patches.fingerprint(), sched.epochs, device)
    run.out_dir.mkdir(parents=True, exist_ok=True)

    steps_per_epoch = -(-len(train_set) // sched.batch_size)
    bar = tqdm(total=sched.epochs * steps_per_epoch, initial=first_epoch * steps_per_epoch,
               unit="step", desc="train deepstorm", disable=not progress, dynamic_ncols=True)

    def epoch_step(epoch: int) -> dict:
        t_epoch = time.perf_counter()
        last_val = st.history[-1]["val_loss"] if st.history else None

        def on_step(step: int, mean_loss: float) -> None:
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{mean_loss:.4g}",
                            val_loss="-" if last_val is None else f"{last_val:.4g}")
            if step_callback is not None:
                step_callback(epoch, step)

        loss = train_epoch(st.model, st.optimizer, loss_fn, train_set, normalization,
                           arch.target_scale, sched.batch_size,
                           epoch_order(len(train_set), config.seed, epoch), device, precision,
                           on_step=on_step)
        val_loss = evaluate_loss(st.model, loss_fn, val_set, normalization, arch.target_scale,
                                 sched.batch_size, device, precision)
        lr_used = st.optimizer.param_groups[0]["lr"]
        st.scheduler.step(val_loss)
        st.keep_if_best(val_loss, epoch)
        record = {"epoch": epoch + 1, "loss": loss, "val_loss": val_loss, "lr": lr_used,
                  "seconds": round(time.perf_counter() - t_epoch, 2)}
        st.history.append(record)
        bar.set_postfix(epoch=epoch + 1, loss=f"{loss:.4g}", val_loss=f"{val_loss:.4g}")
        return record

    def checkpoint(epochs_done: int, record: dict) -> None:
        st.save(run, epochs_done - 1)
        write_history(run.out_dir, st.history, HISTORY_CSV, HISTORY_COLUMNS, png_name=LOSS_PNG,
                      plot=_plot_loss, figsize=(5, 3.2))

    run.start_clock()
    try:
        run_loop(epoch_step, first_epoch, Budget(steps=sched.epochs), run, after=checkpoint,
                 model=st.model, unit="epoch")
    finally:
        bar.close()
    train_seconds = run.seconds

    # The best-validation weights become the model; calibrate its threshold.
    st.model.load_state_dict(st.best_weights)
    engine = DeepStormEngine(copy.deepcopy(st.model), L, arch.target_scale, normalization,
                             threshold=1.0, device=device, pixel_size_nm=data.pixel_size_nm,
                             camera=data.camera, precision="float32")
    calibration, estimates = _calibrate(config, engine, data, val_set,
                                        from_movie=movie is not None)
    meta = model_metadata(config, st.model, normalization, data, calibration, st.history,
                          st.best_val, st.best_epoch, precision, train_seconds,
                          time.perf_counter() - t_start, len(train_set), len(val_set),
                          run.commands, movie is not None)
    meta["estimates"] = estimates
    from stormfold.modelfile import save_model

    save_model(run.out_dir, {k: v.cpu() for k, v in st.model.state_dict().items()}, meta,
               adopt=[HISTORY_CSV, LOSS_PNG])
    engine.source = str(run.out_dir)
    return TrainResult(run.out_dir, meta, st.history, engine)


def model_metadata(config: DeepStormTrainConfig, model: DeepSTORM, normalization: Normalization,
                   data: TrainingData, calibration: Calibration, history: list[dict],
                   best_val: float, best_epoch: int, precision: str, train_seconds: float,
                   total_seconds: float, n_train: int, n_val: int, commands: list[list[str]],
                   from_movie: bool) -> dict[str, Any]:
    """The content of model.yaml."""
    arch = config.architecture
    sim = config.simulation
    return {
        "engine": ENGINE,
        "architecture": {"arch": arch.arch, "channels": list(arch.channels),
                         "n_parameters": count_parameters(model)},
        "upsampling": arch.upsampling,
        "target_scale": arch.target_scale,
        "pixel_size_nm": float(data.pixel_size_nm),
        "normalization": to_dict(normalization),
        "threshold": float(calibration.threshold),
        "calibration": {"jaccard": round(calibration.jaccard, 4),
                        "tolerance_nm": calibration.tolerance_nm,
                        "frames": calibration.source,
                        "curve": [[t, round(j, 4)] for t, j in calibration.curve]},
        "validation_loss": float(best_val),
        "camera": to_dict(data.camera),
        "psf": {"sigma_nm": sim.emitters.sigma_nm, "sigma_std_nm": sim.emitters.sigma_std_nm}
        if not from_movie else {"sigma_nm": None, "note": "given movie; see training_data"},
        "training_data": data.description,
        "training": {
            # The first command started the run; later ones resumed it.
            "command": commands[0] if commands else None,
            "resumed_with": commands[1:],
            "seed": config.seed,
            "config": to_dict(config) if not from_movie else
            {k: v for k, v in to_dict(config).items() if k != "simulation"},
            "precision": precision,
            "epochs_run": len(history),
            "best_epoch": best_epoch + 1,
            "final_lr": history[-1]["lr"] if history else None,
            "n_train_patches": n_train,
            "n_val_patches": n_val,
            "train_seconds": round(train_seconds, 1),
            "total_seconds": round(total_seconds, 1),
            "history": HISTORY_CSV,
        },
        "superres_unit": "sum of clamped predictions / target_scale",
    }


def train_from_cli(out: str | Path, preset: str | None = None,
                   config_file: str | Path | None = None,
                   overrides: list[str] | dict | None = None, seed: int | None = None,
                   movie: str | Path | None = None, truth: str | Path | None = None,
                   epochs: int | None = None, n_patches: int | None = None,
                   batch_size: int | None = None, lr: float | None = None,
                   resume: bool | None = None, device: torch.device | str | None = None,
                   progress: bool = True, command: list[str] | None = None,
                   movie_options: dict | None = None) -> TrainResult:
    """``stormfold train deepstorm`` as one call: build the configuration, then train.

    Parameters are those of the command line (see :func:`build_train_config` and
    :func:`train_deepstorm`). ``resume=None`` continues an unfinished checkpoint in ``out``
    when there is one (as the pipeline's ``--resume`` needs) and starts afresh otherwise.
    """
    if (movie is None) != (truth is None):
        raise UserError("give both --movie and --truth to train on an existing movie")
    config = build_train_config(preset=preset, config_file=config_file, overrides=overrides,
                                seed=seed, epochs=epochs, n_patches=n_patches,
                                batch_size=batch_size, lr=lr)
    if resume is None:
        resume = TrainingRun.unfinished(out)
    return train_deepstorm(config, out, movie=movie, truth=truth, resume=resume, device=device,
                           progress=progress, command=command, movie_options=movie_options)
