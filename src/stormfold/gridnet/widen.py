"""Grow a trained network to wider layers without changing what it computes.

Training a wider network from scratch costs hours on a CPU; starting it from a trained
narrower one keeps what that one learned and adds capacity (Chen et al., "Net2Net",
ICLR 2016, the "wider" operator). Every new channel of a layer copies an existing channel
of that layer (its incoming weights and bias), so its activation is the same; every layer
that reads a copied channel splits that channel's weight among its copies with fractions
that sum to one, so its output is unchanged. The network has no normalisation layers and
ELU is elementwise, so the grown network computes exactly the same outputs (up to
float rounding).

The fractions are drawn at random (uniform in [0.5, 1.5], normalised per channel), not
equal: copies with equal outgoing weights would receive equal gradients and stay copies
forever.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from stormfold.errors import UserError
from stormfold.gridnet.network import ArchitectureConfig, GridNet, UNet

__all__ = ["check_growable", "widen"]


def check_growable(old: ArchitectureConfig, new: ArchitectureConfig, source: str) -> None:
    """Refuse (one line) an architecture that cannot be grown from ``old``."""
    same = ("arch", "context_frames", "levels")
    changed = [k for k in same if getattr(old, k) != getattr(new, k)]
    narrower = [k for k in ("frame_width", "context_width") if getattr(new, k) < getattr(old, k)]
    if changed or narrower:
        what = ", ".join(f"{k} {getattr(old, k)} → {getattr(new, k)}" for k in changed + narrower)
        raise UserError(f"architecture: {what} differs from the init model {source}; a model can "
                        f"only be grown to wider frame_width/context_width (or train with "
                        f"--init none)")


def _channel_map(old: int, new: int, rng: np.random.Generator) -> np.ndarray:
    """Old channel copied by each new channel: the old ones first, then random repeats."""
    return np.concatenate([np.arange(old), rng.integers(0, old, new - old)])


def _split(mapping: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per new channel, its share of its old channel's weight (the shares of one old channel
    sum to one)."""
    u = rng.uniform(0.5, 1.5, mapping.size)
    totals = np.bincount(mapping, weights=u)
    return u / totals[mapping]


def _grow_conv(conv: nn.Conv2d, in_map: np.ndarray, out_map: np.ndarray,
               rng: np.random.Generator) -> nn.Conv2d:
    share = torch.as_tensor(_split(in_map, rng), dtype=conv.weight.dtype)
    grown = nn.Conv2d(in_map.size, out_map.size, conv.kernel_size, stride=conv.stride,
                      padding=conv.padding)
    with torch.no_grad():
        w = conv.weight[torch.as_tensor(out_map)][:, torch.as_tensor(in_map)]
        grown.weight.copy_(w * share[None, :, None, None])
        grown.bias.copy_(conv.bias[torch.as_tensor(out_map)])
    return grown


def _grow_unet(old: UNet, new: UNet, in_map: np.ndarray, widths_old: list[int],
               widths_new: list[int], rng: np.random.Generator) -> np.ndarray:
    """Fill ``new`` from ``old``; returns the channel map of the output (level 0)."""
    maps = [_channel_map(o, n, rng) for o, n in zip(widths_old, widths_new)]

    def block(old_block: nn.Sequential, new_block: nn.Sequential, first_in: np.ndarray,
              level: int) -> None:
        new_block[0] = _grow_conv(old_block[0], first_in, maps[level], rng)
        new_block[2] = _grow_conv(old_block[2], maps[level], maps[level], rng)

    for i in range(len(old.enc)):
        block(old.enc[i], new.enc[i], in_map if i == 0 else maps[i], i)
    for i in range(len(old.down)):
        new.down[i][0] = _grow_conv(old.down[i][0], maps[i], maps[i + 1], rng)
        new.up[i][0] = _grow_conv(old.up[i][0], maps[i + 1], maps[i], rng)
        concat = np.concatenate([maps[i], maps[i] + widths_old[i]])
        block(old.dec[i], new.dec[i], concat, i)
    return maps[0]


def widen(model: GridNet, config: ArchitectureConfig, seed: int) -> GridNet:
    """A copy of ``model`` with the wider layers of ``config`` and the same outputs.

    Parameters
    ----------
    model : GridNet
        The trained network.
    config : ArchitectureConfig
        Same ``context_frames`` and ``levels``; ``frame_width`` and ``context_width`` at
        least the model's.
    seed : int
        Seeds which channels are copied and the weight shares.
    """
    old = model.config
    check_growable(old, config, "given")
    rng = np.random.default_rng([seed, 7])
    grown = GridNet(config)
    levels = old.levels
    fw_old = [old.frame_width * 2 ** i for i in range(levels)]
    fw_new = [config.frame_width * 2 ** i for i in range(levels)]
    frame_out = _grow_unet(model.frame_net, grown.frame_net, np.zeros(1, dtype=int),
                           fw_old, fw_new, rng)
    context_in = np.concatenate([frame_out + j * old.frame_width
                                 for j in range(old.context_frames)])
    cw_old = [old.context_width * 2 ** i for i in range(levels)]
    cw_new = [config.context_width * 2 ** i for i in range(levels)]
    context_out = _grow_unet(model.context_net, grown.context_net, context_in, cw_old, cw_new, rng)
    grown.head = _grow_conv(model.head, context_out, np.arange(model.head.out_channels), rng)
    return grown.to(next(model.parameters()).device)
