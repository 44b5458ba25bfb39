"""Model files: ``weights.safetensors`` + ``model.yaml`` in one folder; never pickles.

A model is referred to by a folder path or by ``builtin:NAME`` for the models shipped
inside the package (``src/stormfold/models/NAME/``). ``model.yaml`` holds everything
needed to run the model (the ``engine`` that reads it, the architecture, the upsampling
factor, normalisation constants, the training simulation's camera and PSF, the exact
training command, the seed and the stormfold version).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from stormfold import __version__
from stormfold.config import dump_yaml, from_dict, read_yaml_text
from stormfold.errors import UserError
from stormfold.io.atomic import write_text

WEIGHTS = "weights.safetensors"
META = "model.yaml"
BUILTIN_PREFIX = "builtin:"
FORMAT_VERSION = 1
#: The model.yaml entries the weights were trained with, per engine: a copy is kept in the
#: weights file's header (:data:`BOUND_HEADER`) and an edited model.yaml is refused where
#: they differ (review 21: Deep-STORM's ``upsampling`` edited 8 → 4 scaled every position
#: by half without a word). Thresholds, decoders, refinement settings and the records
#: written after training stay free to edit.
BOUND_KEYS = {
    "deepstorm": ("architecture", "upsampling", "target_scale", "pixel_size_nm",
                  "normalization"),
    "gridnet": ("architecture", "normalization"),
    "unrolled": ("upsampling", "pixel_size_nm", "sigma_fine_px", "solver", "bounds"),
    "sofi": ("upsampling", "pixel_size_nm", "sigma_fine_px", "solver", "bounds", "lag",
             "variance_scale"),
}
BOUND_HEADER = "stormfold.model_yaml_bound"


def builtin_root() -> Path:
    """Folder of the models shipped with the package."""
    return Path(__file__).resolve().parent / "models"


def list_builtin() -> list[str]:
    """Names of the shipped models (use as ``builtin:NAME``)."""
    root = builtin_root()
    return sorted(p.name for p in root.iterdir() if (p / META).is_file()) if root.is_dir() else []


def resolve_model_dir(spec: str | Path) -> Path:
    """Folder of a model given as a path or ``builtin:NAME``; UserError when it is not a model."""
    text = str(spec)
    if not text.strip():  # Path("") is the current folder: name the real mistake
        raise UserError("empty model folder name: give a model folder or builtin:NAME")
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX):]
        path = builtin_root() / name
        if not (path / META).is_file():
            known = ", ".join(BUILTIN_PREFIX + n for n in list_builtin()) or "none"
            raise UserError(f"unknown built-in model {text!r} (available: {known})")
        return path
    path = Path(spec)
    if path.is_file():
        raise UserError(f"--model {path} is a file, not a model folder (a folder holding "
                        f"{META} and {WEIGHTS}, or builtin:NAME)")
    if not path.is_dir():
        raise UserError(f"model folder not found: {path}")
    for name in (META, WEIGHTS):
        if not (path / name).is_file():
            raise UserError(f"{path} is not a stormfold model folder (no {name})")
    return path


def read_model_meta(spec: str | Path) -> dict[str, Any]:
    """The ``model.yaml`` of a model (path or ``builtin:NAME``)."""
    path = resolve_model_dir(spec) / META
    meta = read_yaml_text(path)
    if not isinstance(meta, dict) or "engine" not in meta:
        raise UserError(f"{path}: model metadata has no 'engine' key")
    return meta


def _not_safetensors(path: Path) -> str:
    """What a weights file that is not safetensors seems to be (review 21: a pickle said
    only "header too large")."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return ""
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05") or \
            head[:4] == b"PK\x03\x04":
        return ": it is a PyTorch/pickle file, which stormfold never loads (pickles can run " \
               "code); save the weights as safetensors"
    return ""


def load_model(spec: str | Path, engine: str | None = None,
               device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a model's tensors and metadata, checking that it is made for ``engine``.

    Returns
    -------
    tensors : dict of name → tensor (on ``device``)
    meta : dict (the parsed ``model.yaml``)
    """
    folder = resolve_model_dir(spec)
    meta = read_model_meta(folder)
    if engine is not None and meta.get("engine") != engine:
        raise UserError(f"{spec}: model is for engine {meta.get('engine')!r}, not {engine!r}")
    if int(meta.get("format_version", FORMAT_VERSION)) > FORMAT_VERSION:
        raise UserError(f"{spec}: model format {meta['format_version']} is newer than this "
                        f"stormfold ({__version__}) understands; upgrade stormfold")
    try:
        tensors = load_file(str(folder / WEIGHTS), device=str(device))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{folder / WEIGHTS}: cannot read weights ({exc})"
                        f"{_not_safetensors(folder / WEIGHTS)}") from None
    check_bound(meta, folder / WEIGHTS, str(spec))
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{spec}: weight tensor {name!r} holds NaN or infinite values "
                            f"(a damaged or diverged model): retrain it or use another model")
    return tensors, meta


def save_model(folder: str | Path, tensors: Mapping[str, torch.Tensor],
               meta: Mapping[str, Any], adopt: Sequence[str] = ()) -> Path:
    """Write ``weights.safetensors`` and ``model.yaml`` as one set, with ``manifest.json``.

    Both files are written into a staging folder and moved in together, the manifest last
    (:class:`stormfold.io.outputs.OutputFolder`): a model folder never holds the weights of
    one training beside the metadata of another. ``adopt`` names files a trainer wrote in
    the folder (its history), listed in the manifest too.
    """
    from stormfold.io.outputs import OutputFolder

    folder = Path(folder)
    full = {"engine": meta["engine"], "format_version": FORMAT_VERSION,
            "stormfold_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    full.update({k: v for k, v in meta.items() if k not in full})
    out = OutputFolder(folder, "model", [WEIGHTS, META])
    with out:
        weights = out.path(WEIGHTS)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(weights),
                  metadata=bound_header(full))
        write_text(out.path(META), dump_yaml(full))
        out.commit({k: v for k, v in full.items() if k != "created"}, latest_command(full),
                   adopt=[name for name in adopt if (folder / name).is_file()])
    return folder


def _plain(value: Any) -> Any:
    """``value`` as JSON would give it back (tuples → lists, numpy scalars → Python)."""
    return json.loads(json.dumps(value, sort_keys=True, default=float))


def bound_header(meta: Mapping[str, Any]) -> dict[str, str]:
    """The weights file's header entry holding ``meta``'s :data:`BOUND_KEYS` (empty for an
    engine without them)."""
    keys = BOUND_KEYS.get(str(meta.get("engine")), ())
    if not keys:
        return {}
    return {BOUND_HEADER: json.dumps(_plain({k: meta.get(k) for k in keys}), sort_keys=True)}


def _differences(stored: Any, current: Any, where: str) -> list[tuple[str, Any, Any]]:
    """(dotted name, stored, current) of the entries where ``stored`` and ``current``
    differ."""
    if isinstance(stored, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(stored) | set(current)):
            found += _differences(stored.get(key), current.get(key), f"{where}.{key}")
        return found
    return [] if stored == current else [(where, stored, current)]


def _short(value: Any, width: int = 60) -> str:
    text = "missing" if value is None else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def check_bound(meta: Mapping[str, Any], weights: Path, source: str) -> None:
    """Refuse a model.yaml whose :data:`BOUND_KEYS` differ from those the weights were
    saved with. Weights written before the header existed (no entry) are not checked."""
    try:
        with safe_open(str(weights), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, OSError):  # load_file has read it: nothing more to learn
        return
    text = header.get(BOUND_HEADER)
    if text is None:
        return
    try:
        stored = json.loads(text)
    except ValueError:
        raise UserError(f"{source}: the weights file's record of its model.yaml is damaged; "
                        f"re-save the model") from None
    if not isinstance(stored, dict):
        return
    current = _plain({k: meta.get(k) for k in stored})
    changed = [d for key in sorted(stored)
               for d in _differences(stored[key], current[key], key)]
    if changed:
        name, trained, now = changed[0]
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise UserError(f"{source}: model.yaml gives {name} = {_short(now)}{more} but the weights "
                        f"were trained with {_short(trained)} (model.yaml edited?): restore it "
                        f"or retrain")


def latest_command(meta: Mapping[str, Any]) -> list[str] | None:
    """The command that wrote this model: the last ``--resume`` of its training, else the
    command that started it (``training.command`` or, for the unrolled and SOFI models,
    ``command``)."""
    training = meta.get("training")
    training = training if isinstance(training, Mapping) else {}
    resumed = training.get("resumed_with") or []
    command = resumed[-1] if resumed else training.get("command") or meta.get("command")
    return list(command) if command else None


def check_size(value: Any, what: str, maximum: int, source: str = "model.yaml") -> int:
    """An architecture size (channels, levels, factor) as an int in 1..``maximum``.

    The bound refuses in one line what would otherwise fail as a multi-GB allocation."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or not 1 <= value <= maximum:
        raise UserError(f"{source}: {what} must be an integer in 1..{maximum}, got {value!r}")
    return int(value)


def check_state_dict(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor],
                     source: str) -> None:
    """Refuse weights whose names or shapes do not fit ``module`` (one clear message)."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise UserError(f"{source}: weights do not match the architecture in model.yaml ({what})")
    for name, value in own.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise UserError(f"{source}: weight {name} has shape {tuple(tensors[name].shape)}, "
                            f"the architecture needs {tuple(value.shape)}")
        # load_state_dict would cast an int32 tensor silently (review 21: 0 localizations).
        if tensors[name].dtype != value.dtype and value.dtype.is_floating_point and \
                not tensors[name].dtype.is_floating_point:
            raise UserError(f"{source}: weight {name} holds {tensors[name].dtype} values, the "
                            f"architecture needs {value.dtype} (a damaged or converted file)")


def stored_threshold(value: Any, source: str, maximum: float = math.inf,
                     meaning: str = "") -> float:
    """A model's calibrated detection threshold as a float in (0, ``maximum``].

    A value that is not such a number (``.nan`` in a hand-edited ``model.yaml``) is a
    :class:`UserError` naming the model (``source``), the file the user must fix.
    """
    valid = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) and 0 < value <= maximum
    if not valid:
        bound = "a positive finite number" if maximum == math.inf else f"in (0, {maximum:g}]"
        raise UserError(f"{source}: threshold must be {bound}{meaning}, got {value!r}")
    return float(value)


def model_section(cls: type, data: Any, key: str, source: str) -> Any:
    """Section ``key`` of a model's metadata as dataclass ``cls``.

    A bad value names the model it came from, so a user with several model folders knows
    which file to fix.
    """
    try:
        return from_dict(cls, data, where=key)
    except UserError as err:
        if str(err).startswith(f"{source}:"):
            raise
        raise UserError(f"{source}: {err}") from None
