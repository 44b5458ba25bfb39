"""The engine registry: one entry per engine says how to load it, build it and train it.

``model.yaml``'s ``engine`` key names the entry that reads a model folder; ``--engine NAME``
names a model-free one; ``stormfold run`` with ``engine.train`` calls the entry's trainer.
Targets are ``"module:function"`` strings imported lazily, so a command only imports the
engine it runs. A new engine adds one entry (see docs/architecture.md):

``loader(spec, meta, device=, threshold=, options=) -> Engine``
    Builds the engine from a model folder (or ``builtin:NAME``) and its parsed ``model.yaml``.
``builder(device=, threshold=, options=) -> Engine``
    Builds a model-free engine from its options.
``trainer(out, preset=, config_file=, overrides=, seed=, device=, progress=, resume=, command=)``
    Trains a model into the folder ``out`` (``resume=None``: continue an unfinished run).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from stormfold.errors import UserError, as_path
from stormfold.localize.engine import Engine
from stormfold.modelfile import read_model_meta


@dataclass(frozen=True)
class EngineEntry:
    """Where an engine's loader, builder and trainer live (``"module:function"`` or None)."""

    loader: str | None = None
    builder: str | None = None
    trainer: str | None = None


#: engine name → its entry.
ENGINES: dict[str, EngineEntry] = {
    "deepstorm": EngineEntry(loader="stormfold.deepstorm.engine:load_engine",
                             trainer="stormfold.deepstorm.train:train_from_cli"),
    "unrolled": EngineEntry(loader="stormfold.unrolled.engine:load_engine",
                            trainer="stormfold.unrolled.train:train_from_cli"),
    "sofi": EngineEntry(loader="stormfold.sofi.engine:load_engine"),
    "classic": EngineEntry(builder="stormfold.localize.classic.engine:build_engine"),
    "gridnet": EngineEntry(loader="stormfold.gridnet.loader:load_engine",
                           trainer="stormfold.gridnet.train:train_from_cli"),
}


def register_engine(name: str, loader: str | None = None, builder: str | None = None,
                    trainer: str | None = None, registry: dict | None = None) -> EngineEntry:
    """Add (or replace) an engine entry; returns it. ``registry`` defaults to :data:`ENGINES`."""
    if loader is None and builder is None:
        raise ValueError(f"engine {name!r} needs a loader (model files) or a builder (model-free)")
    entry = EngineEntry(loader, builder, trainer)
    (ENGINES if registry is None else registry)[name] = entry
    return entry


def _names(kind: str) -> list[str]:
    return [name for name, entry in ENGINES.items() if getattr(entry, kind) is not None]


def _import(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def check_threshold(value: Any, source: str = "--threshold") -> float:
    """``value`` as a positive finite float, else :class:`UserError` (an infinite threshold
    would detect nothing, zero or a negative one every pixel)."""
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: threshold must be a number, got {value!r}") from None
    if not np.isfinite(threshold) or threshold <= 0:
        raise UserError(f"{source}: threshold must be a positive finite number, got {value!r}")
    return threshold


def load_engine(model: str | Path | None = None, engine: str | None = None, device: Any = None,
                threshold: float | None = None, options: dict[str, Any] | None = None) -> Engine:
    """Build the engine for ``--model`` (a folder or ``builtin:NAME``) or ``--engine NAME``.

    Parameters
    ----------
    model : str or Path, optional
        Model folder or ``builtin:NAME``; its ``model.yaml`` names the engine.
    engine : str, optional
        A model-free engine (``classic``); exclusive with ``model``.
    device : torch.device or str, optional
        Compute device (see :func:`stormfold.device.get_device`).
    threshold : float, optional
        Extraction threshold overriding the model's calibrated one (engine-specific meaning).
    options : dict, optional
        Engine-specific options (``--set key=value``). ``bin`` (every localization engine):
        localize b × b binned frames (:mod:`stormfold.localize.binning`); ``auto``, the
        default of engines that fit the PSF width (gridnet), bins when the movie's PSF is
        wider than the model's range.
    """
    from stormfold.localize.binning import check_bin, with_binning

    if (model is None) == (engine is None):
        raise UserError("give either --model MODEL_DIR|builtin:NAME or --engine NAME")
    if threshold is not None:
        threshold = check_threshold(threshold)
    if model is not None:
        as_path(model, "model")
    if options is not None and not isinstance(options, Mapping):
        raise UserError(f"options must be a mapping of option name to value, got "
                        f"{type(options).__name__} {options!r:.60}")
    options = dict(options or {})
    bin_factor = options.pop("bin", None)
    if bin_factor is not None and bin_factor != "auto":
        bin_factor = check_bin(bin_factor)
    if model is not None:
        meta = read_model_meta(model)
        name = meta["engine"]
        entry = ENGINES.get(name)
        if entry is None or entry.loader is None:
            raise UserError(f"{model}: unknown engine {name!r} in model.yaml "
                            f"(known: {', '.join(_names('loader'))})")
        built = _import(entry.loader)(model, meta, device=device, threshold=threshold,
                                      options=options)
        return with_binning(built, bin_factor)
    entry = ENGINES.get(engine)
    if entry is None or entry.builder is None:
        hint = " (it needs --model)" if entry is not None else ""
        raise UserError(f"unknown engine {engine!r}{hint}: model-free engines are "
                        f"{', '.join(_names('builder'))}")
    built = _import(entry.builder)(device=device, threshold=threshold, options=options)
    return with_binning(built, bin_factor)


def check_trainable(engine: str) -> None:
    """Refuse an engine that ``stormfold run`` cannot train (before any work starts)."""
    entry = ENGINES.get(engine)
    if entry is None or entry.trainer is None:
        raise UserError(f"engine.train.engine: cannot train {engine!r} "
                        f"({' or '.join(_names('trainer'))})")


def train_model(engine: str, out: str | Path, **kwargs: Any) -> Path:
    """Train a model of ``engine`` into ``out`` with its registered trainer; returns ``out``.

    ``kwargs`` are the trainer's (``preset``, ``config_file``, ``overrides``, ``seed``,
    ``device``, ``progress``, ``resume``, ``command``).
    """
    check_trainable(engine)
    _import(ENGINES[engine].trainer)(out, **kwargs)
    return Path(out)
