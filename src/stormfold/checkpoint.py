"""Training checkpoints in safetensors + JSON, so an interrupted run resumes exactly.

A checkpoint is a folder with ``state.safetensors`` (model weights, optimizer tensors,
torch RNG state) and ``state.json`` (epoch counters, optimizer hyper-parameters, numpy RNG
state, anything JSON-safe). ``state.json`` is written last: a checkpoint without it is
incomplete and ignored. Nothing is pickled.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from stormfold.errors import UserError
from stormfold.io.atomic import atomic_path, write_text

TENSORS = "state.safetensors"
STATE = "state.json"


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors and JSON-safe values."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in sd["state"].items():
        for key, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: dict) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, entry in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entry)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: str | Path, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    tensors: dict[str, torch.Tensor] | None = None,
                    state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint (model weights, optimizer, torch RNG, extra tensors and state)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    all_tensors: dict[str, torch.Tensor] = {"rng.torch": torch.get_rng_state()}
    meta: dict[str, Any] = dict(state or {})
    if model is not None:
        all_tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    if optimizer is not None:
        opt_tensors, opt_meta = optimizer_state(optimizer)
        all_tensors.update(opt_tensors)
        meta["optimizer"] = opt_meta
    all_tensors.update({f"extra.{k}": v for k, v in (tensors or {}).items()})
    stale = folder / STATE
    if stale.exists():  # invalidate the old pair before replacing its tensors
        stale.unlink()
    with atomic_path(folder / TENSORS) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in all_tensors.items()}, str(tmp))
    write_text(folder / STATE, json.dumps(meta, indent=1, default=_json_default))
    return folder


def damaged(folder: Path, exc: BaseException) -> UserError:
    """The one-line error of a checkpoint that cannot be read: it can never be resumed, so
    the message says how to go on rather than to retry."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UserError(f"{folder}: damaged checkpoint ({detail}): train again without --resume")


def read_state(folder: str | Path) -> dict:
    """The JSON state of the checkpoint in ``folder``; a damaged one is a :class:`UserError`."""
    folder = Path(folder)
    try:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        state = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise damaged(folder, exc) from None
    if not isinstance(state, dict):
        raise damaged(folder, TypeError(f"{STATE} holds no mapping"))
    return state


@dataclass(frozen=True)
class Records:
    """A field that is a list of JSON objects, each with these number-valued keys (a
    training history, which a resumed run reads back and extends)."""

    keys: tuple[str, ...]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        not math.isnan(value)


def _field_ok(value: Any, kind: Any) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if kind is float:
        return _is_number(value)
    if isinstance(kind, Records):
        return isinstance(value, list) and all(
            isinstance(r, dict) and all(_is_number(r.get(k)) for k in kind.keys) for r in value)
    return isinstance(value, kind)


def _field_kind(kind: Any) -> str:
    if isinstance(kind, Records):
        return f"a list of records with {', '.join(kind.keys)}"
    return "a count ≥ 0" if kind is int else {float: "a number", list: "a list",
                                               dict: "a mapping"}.get(kind, kind.__name__)


def check_fields(folder: str | Path, state: dict, fields: dict[str, Any]) -> None:
    """Refuse (as a damaged checkpoint) a state whose ``fields`` are missing or of the wrong
    type: ``int`` means a count ≥ 0, ``float`` a finite or infinite number (not NaN),
    ``list`` and ``dict`` a JSON array or object, :class:`Records` a history."""
    for key, kind in fields.items():
        value = state.get(key)
        if not _field_ok(value, kind):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise damaged(Path(folder), ValueError(f"{key} is {shown}, not {_field_kind(kind)}"))


def load_checkpoint(folder: str | Path, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None,
                    restore_rng: bool = True) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Restore a checkpoint into ``model``/``optimizer``; returns (extra tensors, state).

    Returns None when the folder holds no complete checkpoint.
    """
    folder = Path(folder)
    if not (folder / STATE).is_file() or not (folder / TENSORS).is_file():
        return None
    meta = read_state(folder)
    try:
        tensors = load_file(str(folder / TENSORS))
        if model is not None:
            model.load_state_dict({k[6:]: v for k, v in tensors.items()
                                   if k.startswith("model.")})
        if optimizer is not None and "optimizer" in meta:
            restore_optimizer(optimizer, tensors, meta["optimizer"])
        if restore_rng and "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RuntimeError,
            SafetensorError) as exc:
        raise damaged(folder, exc) from None
    extra = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return extra, meta


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
