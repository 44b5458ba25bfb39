"""Held-back simulated samples: the validation Jaccard during training and the calibration
of the decoder (score threshold and the decoder's parameter) at its end.

The threshold and the decoder variant (the cluster radius, or ``p_keep`` of the peaks
decoder) are calibrated jointly on a grid; the network runs once per sample, each variant
decodes once and every threshold only filters its candidate table, so this is the gridnet
decoder's counterpart of :func:`stormfold.training.calibrate_threshold` (which calibrates
one parameter).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from stormfold.gridnet.config import ValidationConfig
from stormfold.gridnet.decode import Decoder, to_table
from stormfold.gridnet.engine import sample_outputs
from stormfold.gridnet.network import GridNet
from stormfold.gridnet.normalization import InputNormalization
from stormfold.gridnet.sampler import Batch, DomainConfig, Sampler


@dataclass
class HeldBack:
    """Held-back samples of one activation model with their truth table."""

    kind: str
    batch: Batch
    truth: pd.DataFrame


def held_back(domain: DomainConfig, cfg: ValidationConfig, context_frames: int, n: int,
              seed: int, stream: int) -> list[HeldBack]:
    """Fixed held-back samples: ``n`` with independent frames and ``n`` with kinetics."""
    from dataclasses import replace

    out = []
    kinds = ("independent", "kinetics") if context_frames > 1 else ("independent",)
    for i, kind in enumerate(kinds):
        d = replace(domain, independent_fraction=1.0 if kind == "independent" else 0.0)
        sampler = Sampler(d, frame_px=cfg.frame_px, context_frames=context_frames)
        batch = sampler.batch(n, np.random.default_rng([seed, stream, i]))
        out.append(HeldBack(kind, batch, batch.truth_table(domain.pixel_size_nm)))
    return out


def held_back_outputs(model: GridNet, normalization: InputNormalization, batch: Batch,
                      chunk: int = 16):
    """Outputs of held-back samples (in chunks, inference mode)."""
    from stormfold.gridnet.outputs import GridOutputs

    model.eval()
    parts = []
    with torch.inference_mode():
        for i in range(0, len(batch.frames), chunk):
            parts.append(sample_outputs(model, normalization,
                                        torch.from_numpy(batch.frames[i:i + chunk])))
    return GridOutputs(**{f: torch.cat([getattr(p, f) for p in parts])
                          for f in GridOutputs.__dataclass_fields__})


def decoder_variants(cfg: ValidationConfig) -> list[Decoder]:
    """The decoders calibrated with the threshold: one per cluster radius (``clusters``) or
    per ``p_keep`` (``peaks``)."""
    if cfg.decoder == "clusters":
        return [Decoder("clusters", radius_px=float(r)) for r in cfg.radii_px]
    return [Decoder("peaks", p_raw=cfg.p_raw, p_keep=float(pk)) for pk in cfg.p_keeps]


def variant_label(decoder: Decoder) -> str:
    """E.g. ``clusters radius_px=0.6`` or ``peaks p_keep=0.5``."""
    return f"{decoder.method} " + (f"radius_px={decoder.radius_px:g}"
                                   if decoder.method == "clusters" else f"p_keep={decoder.p_keep:g}")


def jaccard_curve(model: GridNet, normalization: InputNormalization, sets: list[HeldBack],
                  pixel_size_nm: float, thresholds: list[float], decoders: list[Decoder],
                  tolerance_nm: float) -> dict[str, np.ndarray]:
    """Jaccard index at ``tolerance_nm`` per (decoder, threshold), per set and pooled (``all``).

    Returns arrays of shape (len(decoders), len(thresholds)).
    """
    from stormfold.evaluate import evaluate

    counts = {}
    for hb in sets:
        out = held_back_outputs(model, normalization, hb.batch)
        rows = []
        for decoder in decoders:
            table = to_table(decoder.candidates(out), 0, pixel_size_nm)
            for t in thresholds:
                m = evaluate(hb.truth, table[table["confidence"] >= t],
                             tolerances_nm=(tolerance_nm,), check_inputs=False)
                rows.append([int(m["tp"].iloc[0]), int(m["fp"].iloc[0]), int(m["fn"].iloc[0])])
        counts[hb.kind] = np.array(rows, dtype=np.float64).reshape(len(decoders),
                                                                   len(thresholds), 3)
    total = sum(counts.values())
    out = {k: c[..., 0] / np.maximum(c.sum(-1), 1) for k, c in counts.items()}
    out["all"] = total[..., 0] / np.maximum(total.sum(-1), 1)
    return out
