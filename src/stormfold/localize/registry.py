"""Which engine reads a model: the ``engine`` key of ``model.yaml`` names a loader here.

Loaders are imported lazily (by dotted path) so a command only imports what it runs.
A loader has the signature ``load(spec, meta, device, threshold) -> Engine``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from stormfold.errors import UserError
from stormfold.localize.engine import Engine
from stormfold.modelfile import read_model_meta

#: engine name in model.yaml → "module:function" of its loader.
MODEL_LOADERS = {
    "deepstorm": "stormfold.deepstorm.engine:load_engine",
    "unrolled": "stormfold.unrolled.engine:load_engine",
    "sofi": "stormfold.sofi.engine:load_engine",
}
#: engines that need no model file, → "module:function" building them from options.
MODEL_FREE = {
    "classic": "stormfold.localize.classic.engine:build_engine",
}


def _import(target: str):
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


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
        Engine-specific options (``--set key=value``).
    """
    if (model is None) == (engine is None):
        raise UserError("give either --model MODEL_DIR|builtin:NAME or --engine NAME")
    if model is not None:
        meta = read_model_meta(model)
        name = meta["engine"]
        if name not in MODEL_LOADERS:
            raise UserError(f"{model}: unknown engine {name!r} in model.yaml "
                            f"(known: {', '.join(MODEL_LOADERS)})")
        return _import(MODEL_LOADERS[name])(model, meta, device=device, threshold=threshold,
                                            options=options or {})
    if engine not in MODEL_FREE:
        hint = " (it needs --model)" if engine in MODEL_LOADERS else ""
        raise UserError(f"unknown engine {engine!r}{hint}: model-free engines are "
                        f"{', '.join(MODEL_FREE)}")
    return _import(MODEL_FREE[engine])(device=device, threshold=threshold, options=options or {})
