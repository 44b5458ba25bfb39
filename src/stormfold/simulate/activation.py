"""Activation: which emitters are ON in each frame, and for what fraction of it."""
from __future__ import annotations

import numpy as np

from stormfold.simulate.config import ActivationConfig


def independent_counts(n_frames: int, mean: float, std: float,
                       rng: np.random.Generator) -> np.ndarray:
    """Active emitters per frame, ``max(0, round(Normal(mean, std)))`` (ZeroCostDL4Mic)."""
    if std == 0:
        return np.full(n_frames, max(0, int(round(mean))), dtype=np.int64)
    return np.maximum(np.rint(rng.normal(mean, std, n_frames)), 0).astype(np.int64)


def telegraph_on_fractions(n_fluorophores: int, n_frames: int, config: ActivationConfig,
                           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ON fraction of every frame for fluorophores that blink as two-state telegraph processes.

    Each fluorophore alternates ON and OFF periods with exponential dwell times of means
    ``t_on_frames`` and ``t_off_frames``, starting in its stationary state; with
    ``t_bleach_frames`` set it bleaches (stays OFF) after an exponential lifetime.
    Time is continuous (unit = one frame); a frame's photon count is proportional to the
    time the fluorophore was ON during it.

    Returns
    -------
    fluorophore, frame : (n,) int
        Indices of every (fluorophore, frame) pair with a non-zero ON time.
    fraction : (n,) float
        ON time as a fraction of the frame, in (0, 1].
    """
    t_on, t_off = config.t_on_frames, config.t_off_frames
    horizon = np.full(n_fluorophores, float(n_frames))
    if config.t_bleach_frames is not None:
        horizon = np.minimum(horizon, rng.exponential(config.t_bleach_frames, n_fluorophores))
    p_on = t_on / (t_on + t_off)
    # Stationary start: the first period is ON with probability p_on; by memorylessness its
    # residual length is again exponential with the state's mean.
    start_on = rng.random(n_fluorophores) < p_on
    # Vectorised: draw a block of cycles for many fluorophores at once; repeat only for the
    # few fluorophores whose cycles do not yet reach their horizon.
    starts, ends, owner = [], [], []
    t = np.zeros(n_fluorophores)
    first = start_on.copy()
    cycles = int(np.ceil(n_frames / (t_on + t_off) * 1.2)) + 4
    max_batch = max(1, 2_000_000 // cycles)  # bounds the (batch, cycles) temporaries
    pending = np.arange(n_fluorophores)
    while pending.size:
        todo, pending = pending[:max_batch], pending[max_batch:]
        m = todo.size
        off = rng.exponential(t_off, (m, cycles))
        on = rng.exponential(t_on, (m, cycles))
        # A fluorophore that starts ON has no OFF period before its first ON period.
        off[:, 0] = np.where(first[todo], 0.0, off[:, 0])
        on_start = t[todo, None] + np.cumsum(off, axis=1) + np.concatenate(
            [np.zeros((m, 1)), np.cumsum(on, axis=1)[:, :-1]], axis=1)
        on_end = on_start + on
        h = horizon[todo, None]
        keep = on_start < h
        rows = np.broadcast_to(todo[:, None], keep.shape)
        starts.append(on_start[keep])
        ends.append(np.minimum(on_end, h)[keep])
        owner.append(rows[keep])
        t[todo] = on_end[:, -1]
        first[todo] = False
        pending = np.concatenate([todo[t[todo] < horizon[todo]], pending])
    starts = np.concatenate(starts) if starts else np.zeros(0)
    ends = np.concatenate(ends) if ends else np.zeros(0)
    owner = np.concatenate(owner).astype(np.int64) if owner else np.zeros(0, np.int64)
    return _intervals_to_frames(owner, starts, ends, n_frames)


def _intervals_to_frames(owner: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                         n_frames: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ON intervals [start, end) at frame boundaries and sum per (owner, frame)."""
    first = np.floor(starts).astype(np.int64)
    last = np.minimum(np.ceil(ends).astype(np.int64) - 1, n_frames - 1)
    count = np.maximum(last - first + 1, 0)
    rep = np.repeat(np.arange(len(starts)), count)
    offset = np.arange(rep.size) - np.repeat(np.cumsum(count) - count, count)
    frame = first[rep] + offset
    frac = np.minimum(ends[rep], frame + 1.0) - np.maximum(starts[rep], frame)
    ok = (frac > 0) & (frame >= 0) & (frame < n_frames)
    key = owner[rep][ok] * n_frames + frame[ok]
    unique, inverse = np.unique(key, return_inverse=True)
    fraction = np.bincount(inverse, weights=frac[ok], minlength=unique.size)
    fluorophore, frame = np.divmod(unique, n_frames)
    return fluorophore, frame, np.minimum(fraction, 1.0)
