"""The checkpointed training loop: output folder, exact resume, stopping on steps or time.

A :class:`TrainingRun` owns the model folder of one training: it refuses to overwrite a
model or a run without ``--resume``, checks on resume that the configuration (all but what
may change, e.g. the number of epochs) and the data are those of the checkpoint, and saves
checkpoints (weights, optimiser, RNG, the caller's state) with the bookkeeping every
trainer needs: the commands that started and resumed the run and the training time so far.

:func:`run_loop` calls the trainer's step function — one epoch, one outer iteration or one
optimisation step, whatever the trainer's unit is — until a :class:`Budget` (steps and/or
wall-clock minutes, counted over all sessions of a resumed run) is spent or the trainer
reports convergence. Exact resume is the trainer's side of the contract: every random draw
of step ``i`` must be seeded by (seed, i), and everything else that changes between steps
must be in the checkpoint.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from stormfold import __version__
from stormfold.errors import UserError
from stormfold.training.guards import check_finite

CHECKPOINT_DIR = "checkpoint"


def without(mapping: dict, *paths: str) -> dict:
    """Deep copy of a nested mapping without the dotted keys ``paths`` (e.g. ``"optim.lr"``)."""
    out = copy.deepcopy(mapping)
    for path in paths:
        *parents, last = path.split(".")
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return out


@dataclass
class Budget:
    """When a training loop stops: after ``steps`` steps and/or ``minutes`` of training.

    Both count the whole run, resumed sessions included; None means no limit (at least one
    must be set).
    """

    steps: int | None = None
    minutes: float | None = None

    def __post_init__(self) -> None:
        if self.steps is None and self.minutes is None:
            raise UserError("a training budget needs a number of steps or of minutes")
        if self.steps is not None and self.steps < 0:
            raise UserError(f"the number of training steps must be ≥ 0, got {self.steps}")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise UserError(f"the training time must be > 0 minutes, got {self.minutes}")

    def spent(self, steps_done: int, seconds: float) -> bool:
        if self.steps is not None and steps_done >= self.steps:
            return True
        return self.minutes is not None and seconds >= 60.0 * self.minutes


class TrainingRun:
    """The model folder of one training run and its checkpoint.

    Parameters
    ----------
    out_dir : path
        Model folder; the checkpoint goes to ``out_dir/checkpoint``.
    resume : bool
        Continue the checkpoint in ``out_dir`` (it must exist); otherwise ``out_dir`` must
        hold neither a model nor a checkpoint.
    key : dict
        What a resumed run must share with the checkpoint: the configuration without the
        keys that may change.
    may_change : str
        Those keys, for the error message (e.g. ``"schedule.epochs"``).
    command : list of str, optional
        The command line of this session.
    engine : str, optional
        The engine being trained, recorded in the checkpoint: resuming another engine's run
        is refused with both names.
    """

    def __init__(self, out_dir: str | Path, resume: bool, key: dict, may_change: str,
                 command: list[str] | None = None, engine: str | None = None):
        from stormfold.modelfile import META

        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / CHECKPOINT_DIR
        self.resume = bool(resume)
        self.key = json.loads(json.dumps(key, default=str))  # as it reads back from JSON
        self.may_change = may_change
        self.engine = engine
        self.commands: list[list[str]] = [list(command)] if command is not None else []
        self.seconds_before = 0.0
        self.data: str | None = None
        self._t0 = time.perf_counter()
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UserError(f"--out {self.out_dir} exists and is not a folder")
        state = self.checkpoint_dir / "state.json"
        if self.resume and not state.is_file():
            raise UserError(f"--resume: no checkpoint in {self.checkpoint_dir} to continue from")
        if not self.resume and (state.is_file() or (self.out_dir / META).is_file()):
            raise UserError(f"{self.out_dir} already holds a model or a training run: use "
                            f"--resume to continue it, or choose another --out")
        if self.resume:  # fail before any data are simulated
            from stormfold.checkpoint import read_state

            saved = read_state(self.checkpoint_dir)
            self._check_engine(saved)
            if saved.get("config") != self.key:
                self._refuse()

    def _check_engine(self, saved: dict) -> None:
        """Name both engines when the checkpoint (or the model beside it) is another's."""
        from stormfold.config import read_yaml_text
        from stormfold.modelfile import META

        other = saved.get("engine")
        if other is None and (self.out_dir / META).is_file():
            try:
                meta = read_yaml_text(self.out_dir / META)
            except UserError:  # a damaged model.yaml names no engine
                meta = None
            other = meta.get("engine") if isinstance(meta, dict) else None
        if self.engine is not None and other is not None and other != self.engine:
            article = "an" if str(other)[:1] in "aeiou" else "a"
            raise UserError(f"--resume: the checkpoint in {self.checkpoint_dir} is {article} "
                            f"{other} training, this is {self.engine}: choose another --out")

    def _refuse(self) -> None:
        raise UserError(f"--resume: the configuration or the training data differs from the "
                        f"checkpoint's in {self.checkpoint_dir} (only {self.may_change} may "
                        f"change)")

    @staticmethod
    def unfinished(out_dir: str | Path) -> bool:
        """True when ``out_dir`` holds a checkpoint but no complete model (its
        ``manifest.json``): resume it."""
        from stormfold.io.manifest import is_complete

        out_dir = Path(out_dir)
        return (out_dir / CHECKPOINT_DIR / "state.json").is_file() and not is_complete(out_dir)

    # ------------------------------------------------------------------ checkpoints
    def restore(self, model: Any = None, optimizer: Any = None, data: str | None = None,
                fields: dict[str, Any] | None = None) -> tuple[dict, dict] | None:
        """On resume, load the checkpoint into ``model`` and ``optimizer`` (and the torch RNG).

        Refuses a checkpoint whose configuration key or data fingerprint ``data`` differ, and
        (as damaged) one whose state lacks the trainer's ``fields`` ({key: int (a count),
        float, list, dict or a history's :class:`~stormfold.checkpoint.Records`}; see
        :func:`stormfold.checkpoint.check_fields`), or whose training time or commands are
        damaged.
        Returns (extra tensors, state) or None when not resuming.
        """
        from stormfold.checkpoint import check_fields, load_checkpoint, read_state

        self.data = data
        if not self.resume:
            return None
        saved = read_state(self.checkpoint_dir)
        if saved.get("data") != data:
            self._refuse()
        # What every run reads back: its training time and its commands (written by save).
        common = {k: kind for k, kind in (("seconds", float), ("commands", list)) if k in saved}
        check_fields(self.checkpoint_dir, saved, {**common, **(fields or {})})
        loaded = load_checkpoint(self.checkpoint_dir, model, optimizer)
        if loaded is None:
            raise UserError(f"--resume: the checkpoint in {self.checkpoint_dir} is incomplete")
        extra, state = loaded
        self.seconds_before = float(state.get("seconds", 0.0))
        self.commands = list(state.get("commands", [])) + self.commands
        return extra, state

    def start_clock(self) -> None:
        """Count training time from now (plus the time of earlier sessions)."""
        self._t0 = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Training time of the whole run so far (s)."""
        return self.seconds_before + time.perf_counter() - self._t0

    def save(self, model: Any = None, optimizer: Any = None, state: dict | None = None,
             tensors: dict | None = None) -> None:
        """Write a checkpoint: weights, optimiser, torch RNG, ``tensors`` and ``state``."""
        from stormfold.checkpoint import save_checkpoint

        full = dict(state or {})
        full.update(config=self.key, data=self.data, seconds=self.seconds, engine=self.engine,
                    commands=self.commands, stormfold_version=__version__)
        save_checkpoint(self.checkpoint_dir, model, optimizer, tensors=tensors, state=full)


def run_loop(step: Callable[[int], dict], first: int, budget: Budget,
             run: TrainingRun | None = None,
             after: Callable[[int, dict], None] | None = None,
             converged: Callable[[dict], bool] | None = None, model: Any = None,
             unit: str = "step") -> int:
    """Run ``step(i)`` for i = first, first + 1, … until ``budget`` is spent.

    After every step, before ``after`` (which checkpoints), a NaN or infinite ``loss`` or
    ``val_loss`` in the record or parameter of ``model`` stops the run with
    :class:`~stormfold.training.guards.TrainingDiverged` (a UserError): a diverged network
    is neither checkpointed nor written as a model.

    Parameters
    ----------
    step : callable(i) -> dict
        One unit of training (epoch, outer iteration, optimisation step); returns its record.
    first : int
        Index of the first step (steps already done by a resumed run).
    budget : Budget
        Stop when this many steps are done or the run's time (``run.seconds``) is spent.
    run : TrainingRun, optional
        The clock of the time budget (default: this call's).
    after : callable(steps_done, record), optional
        Called after every step (checkpoints, logs, progress).
    converged : callable(record) -> bool, optional
        Stop early when it returns True.
    model : torch.nn.Module, optional
        Its parameters are checked for NaN/Inf after every step.
    unit : str
        What a step is called in the divergence message ("step", "epoch", …).

    Returns
    -------
    int
        The number of steps done.

    Raises
    ------
    UserError
        When no step at all was done (e.g. a time budget shorter than one step).
    """
    t0 = time.perf_counter()
    i = int(first)
    while not budget.spent(i, run.seconds if run is not None else time.perf_counter() - t0):
        record = step(i)
        i += 1
        check_finite(i, record, model, unit)
        if after is not None:
            after(i, record)
        if converged is not None and converged(record):
            break
    if i == 0:
        # Writing the untouched initial weights as a trained model would be silent nonsense.
        what = f"{budget.minutes:g} min" if budget.minutes is not None else "the budget"
        raise UserError(f"no training {unit} finished within {what}: nothing written; give "
                        f"more time (--minutes) or a number of {unit}s")
    return i


@contextmanager
def model_folder_guard(out_dir: str | Path) -> Iterator[None]:
    """Around a training command: on an error or an interrupt, a model folder this command
    created is removed unless it holds a checkpoint to resume (then the message says so)."""
    out_dir = Path(out_dir)
    existed = out_dir.exists()
    try:
        yield
    except BaseException as exc:
        checkpoint = out_dir / CHECKPOINT_DIR / "state.json"
        if checkpoint.is_file():
            note = f"the checkpoint in {checkpoint.parent} is kept: continue with --resume"
            if isinstance(exc, KeyboardInterrupt):
                exc.stormfold_note = note
        elif not existed and out_dir.is_dir() and not (out_dir / "manifest.json").is_file():
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
