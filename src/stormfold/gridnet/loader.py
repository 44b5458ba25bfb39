"""Gridnet model files: ``weights.safetensors`` + ``model.yaml`` → network and engine.

Everything the engine needs is in model.yaml: the architecture, the input normalisation,
the calibrated threshold and the decoder, the training domain (σ range for the σ check), the
pixel size of a camera-specific model (``null`` for the generalist: any pixel size) and
the training camera. Files that do not fit (another engine, a wrong architecture, weights
of other shapes) are refused with one line.
"""
from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from stormfold.config import from_dict, to_dict
from stormfold.errors import UserError
from stormfold.gridnet.decode import Decoder
from stormfold.gridnet.engine import ENGINE, GridnetEngine
from stormfold.gridnet.network import ArchitectureConfig, GridNet, count_parameters
from stormfold.gridnet.normalization import InputNormalization
from stormfold.gridnet.sampler import DomainConfig
from stormfold.localize.refine import RefineOptions
from stormfold.modelfile import model_section, stored_threshold
from stormfold.physics.camera import Camera

#: ``--set`` options of the engine and their types.
OPTIONS = {"decoder": str, "radius_px": float, "refine": str, "split_llr": float,
           "split_neighbours": int, "split_photons": bool, "merge": bool, "drop_spikes": bool,
           "p_raw": float, "p_keep": float, "batch_pixels": int, "tile_px": int,
           "temporal": bool, "sigma_nm": float, "flatten": bool}


def require_section(meta: dict, key: str, source: str) -> Any:
    if meta.get(key) is None:
        raise UserError(f"{source}: model.yaml has no {key!r} (not a complete gridnet model)")
    return meta[key]


def network_from_meta(meta: dict, tensors: dict[str, torch.Tensor], source: str) -> GridNet:
    """The network described by ``meta['architecture']`` with ``tensors`` loaded."""
    from stormfold.modelfile import check_state_dict

    if meta.get("engine") != ENGINE:
        raise UserError(f"{source}: model is for engine {meta.get('engine')!r}, not {ENGINE!r}")
    arch = require_section(meta, "architecture", source)
    if not isinstance(arch, dict):
        raise UserError(f"{source}: architecture must be a mapping, got {arch!r}")
    arch = {k: v for k, v in arch.items() if k != "n_parameters"}
    model = GridNet(model_section(ArchitectureConfig, arch, "architecture", source))
    n_params = meta["architecture"].get("n_parameters")
    if n_params is not None and n_params != count_parameters(model):
        raise UserError(f"{source}: architecture.n_parameters is {n_params} but the architecture "
                        f"gives {count_parameters(model)}")
    check_state_dict(model, tensors, source)
    model.load_state_dict(tensors)
    return model


def read_gridnet(spec: str | Path) -> tuple[GridNet, dict]:
    """Network and metadata of a gridnet model (folder or ``builtin:NAME``)."""
    from stormfold.modelfile import load_model

    tensors, meta = load_model(spec, engine=ENGINE, device="cpu")
    return network_from_meta(meta, tensors, str(spec)), meta


def engine_from_meta(meta: dict, model: GridNet, device: Any = "cpu",
                     threshold: float | None = None, options: dict | None = None,
                     source: str = "model") -> GridnetEngine:
    """Engine of a loaded network, with ``--set`` options checked."""
    norm = model_section(InputNormalization, require_section(meta, "normalization", source),
                         "normalization", source)
    domain = model_section(DomainConfig, require_section(meta, "domain", source), "domain",
                           source)
    camera = model_section(Camera, meta["camera"], "camera", source) \
        if isinstance(meta.get("camera"), dict) else None
    px = meta.get("pixel_size_nm")
    opts: dict[str, Any] = {}
    for key, value in (options or {}).items():
        if key not in OPTIONS:
            raise UserError(f"unknown gridnet option {key!r} (valid: {', '.join(OPTIONS)})")
        kind = OPTIONS[key]
        if kind is str or kind is bool:
            ok = isinstance(value, kind)
        else:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
                (kind is float or (math.isfinite(value) and int(value) == value))
        if not ok:
            raise UserError(f"gridnet option {key} must be {kind.__name__}, got {value!r}")
        opts[key] = kind(value)
    if threshold is None:
        stored_thr = stored_threshold(require_section(meta, "threshold", source), source, 1.0,
                                      " (a detection probability)")
    thr = float(threshold) if threshold is not None else float(stored_thr)
    # Models written before the decoder section decode with peaks (p_raw, p_keep at the top).
    stored = meta.get("decoder")
    if stored is None:
        stored = {"method": "peaks", "p_raw": meta.get("p_raw", 0.1),
                  "p_keep": meta.get("p_keep", 2.0)}
    if not isinstance(stored, dict):
        raise UserError(f"{source}: decoder must be a mapping, got {stored!r}")
    keys = [f.name for f in fields(Decoder)]
    unknown = sorted(set(stored) - set(keys), key=str)
    if unknown:
        raise UserError(f"{source}: unknown decoder key(s) {', '.join(map(str, unknown))} "
                        f"(valid: {', '.join(keys)})")
    dec = {**{k: stored[k] for k in keys if k in stored},
           **{k: opts.pop(k) for k in keys if k in opts}}
    if "decoder" in opts:
        dec["method"] = opts.pop("decoder")
    method = dec.pop("method", "peaks")
    # Models written before the refine section do not refine; ``--set refine=`` overrides.
    stored_refine = meta.get("refine")
    # A refine section written before split_neighbours tested lone emitters only.
    refine = RefineOptions() if stored_refine is None else model_section(
        RefineOptions, {"split_neighbours": 0, **stored_refine} if isinstance(stored_refine, dict)
        else stored_refine, "refine", source)
    if "refine" in opts:
        refine = from_dict(RefineOptions, {**to_dict(refine), "method": opts.pop("refine")},
                           where="--set refine")
    for key in ("split_llr", "split_neighbours", "split_photons", "merge", "drop_spikes"):
        if key in opts:
            refine = from_dict(RefineOptions, {**to_dict(refine), key: opts.pop(key)},
                               where=f"--set {key}")
    for key, value in dec.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{source}: decoder {key} must be a number, got {value!r}")
    return GridnetEngine(model, norm, thr, decoder=str(method),
                         **{k: float(v) for k, v in dec.items()},
                         device=device if device is not None else "cpu", domain=domain,
                         pixel_size_nm=float(px) if px is not None else None, camera=camera,
                         source=source, refine=refine, **opts)


def load_engine(spec: str | Path, meta: dict, device: Any = None, threshold: float | None = None,
                options: dict | None = None) -> GridnetEngine:
    """Loader named by ``model.yaml`` (``engine: gridnet``): see the registry."""
    model, meta = read_gridnet(spec)
    return engine_from_meta(meta, model, device=device, threshold=threshold, options=options,
                            source=str(spec))
