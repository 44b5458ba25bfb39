"""Background level of frames in photons, and matching a movie's to a model's training level.

A network trained on one simulation has learned its background: Deep-STORM's shipped model
saw none, and a background of 50 photons per pixel drops its Jaccard from 0.97 to 0.80, of
200 to 0.18 (review 12; `experiments/background_match.py`). Subtracting the excess over
the training level before the network restores it (0.97 and 0.96).

The level is measured per frame on tiles of :data:`TILE_PX` pixels, so that a slow gradient
or a cell's autofluorescence is followed, from the tile's 10th percentile p:
b = p + 1.28·√(p + 1) (where the 10th percentile of Poisson noise around b lies). In crowded
frames the tails of overlapping PSFs raise it too, so the training level is measured the same
way on frames of the training simulation, and only the excess over it (beyond a tolerance)
is taken away. Each frame is handled on its own: batches do not change the result.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Side of the square tiles the background is measured on (camera pixels): large enough for
#: a stable 10th percentile (1,024 pixels), small enough to follow a cell-sized structure.
TILE_PX = 32
#: Standard-normal quantile of the 10th percentile (its distance below the mean, in SD).
Z10 = 1.2816


def background_level(frames: np.ndarray) -> np.ndarray:
    """Background (photons per pixel) of each frame from its 10th percentile.

    Parameters
    ----------
    frames : (n, rows, cols) array
        Frames in photons per pixel.

    Returns
    -------
    (n,) float64
        ``max(p + 1.28·√(max(p, 0) + 1), 0)`` with p each frame's 10th percentile.
    """
    frames = np.asarray(frames)
    p10 = np.percentile(frames.reshape(len(frames), -1), 10, axis=1)
    return np.maximum(p10 + Z10 * np.sqrt(np.maximum(p10, 0.0) + 1.0), 0.0)


def interpolation_matrix(n: int, tile_px: int, extrapolate: bool = False) -> np.ndarray:
    """(n, n_tiles) weights interpolating tile-centre values linearly onto n pixels (constant
    beyond the first and last centres, or ``extrapolate``-d linearly there)."""
    n_tiles = -(-n // tile_px)
    starts = np.arange(n_tiles) * tile_px
    centres = (starts + np.minimum(starts + tile_px, n)) / 2.0 - 0.5
    pixels = np.arange(n, dtype=np.float64)
    if n_tiles == 1:
        return np.ones((n, 1))
    weights = np.stack([np.interp(pixels, centres, np.eye(n_tiles)[k])
                        for k in range(n_tiles)], 1)
    if extrapolate:
        for side, (a, b) in ((pixels < centres[0], (0, 1)),
                             (pixels > centres[-1], (n_tiles - 1, n_tiles - 2))):
            t = (pixels[side] - centres[a]) / (centres[b] - centres[a])
            weights[side] = 0.0
            weights[side, a] = 1.0 - t
            weights[side, b] = t
    return weights


def _tile_percentile10(values: np.ndarray) -> np.ndarray:
    """``np.nanpercentile(values, 10, axis=-1)`` (linear interpolation) from one sort, which
    puts the NaN padding of partial tiles last: 30× faster on 256 × 256 frames."""
    ordered = np.sort(values, axis=-1)
    count = np.isfinite(values).sum(axis=-1)
    pos = 0.1 * (count - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.ceil(pos).astype(np.int64)
    v_lo = np.take_along_axis(ordered, lo[..., None], -1)[..., 0]
    v_hi = np.take_along_axis(ordered, hi[..., None], -1)[..., 0]
    return v_lo + (v_hi - v_lo) * (pos - lo)


def background_map(frames: np.ndarray, tile_px: int = TILE_PX,
                   follow_gradient: bool = False) -> np.ndarray:
    """Per-pixel background (photons) of each frame, from :func:`background_level` on tiles.

    Parameters
    ----------
    frames : (n, rows, cols) array
        Frames in photons per pixel.
    tile_px : int
        Tile side (camera pixels); the last tile of a row or column may be smaller.
    follow_gradient : bool
        Extrapolate linearly beyond the outer tile centres (else constant), and correct the
        tiles' levels on the residual: the 10th percentile of a tile that holds a gradient
        lies below its centre's level (review 17: Deep-STORM on a 0 → 300 photons/px ramp).

    Returns
    -------
    (n, rows, cols) float32
        The tile levels interpolated linearly between tile centres.
    """
    frames = np.asarray(frames, dtype=np.float32)
    n, rows, cols = frames.shape
    tr, tc = -(-rows // tile_px), -(-cols // tile_px)
    wr = interpolation_matrix(rows, tile_px, follow_gradient)
    wc = interpolation_matrix(cols, tile_px, follow_gradient)

    def tile_levels(values: np.ndarray) -> np.ndarray:
        pad = np.full((n, tr * tile_px, tc * tile_px), np.nan, np.float32)
        pad[:, :rows, :cols] = values
        tiles = pad.reshape(n, tr, tile_px, tc, tile_px).transpose(0, 1, 3, 2, 4)
        return _tile_percentile10(tiles.reshape(n, tr, tc, -1))

    p10 = tile_levels(frames)
    level = (wr @ np.maximum(p10 + Z10 * np.sqrt(np.maximum(p10, 0.0) + 1.0), 0.0)) @ wc.T
    if follow_gradient and tr * tc > 1:
        # On the residual the gradient is gone; its 10th percentile is the Poisson one of
        # the level (Z10 SDs below), the rest is the tile's offset.
        offset = tile_levels(frames - level.astype(np.float32)) + \
            Z10 * np.sqrt(np.maximum(p10, 0.0) + 1.0)
        level = np.maximum(level + (wr @ offset) @ wc.T, 0.0)
    return level.astype(np.float32)  # matmul: einsum is 80× slower here


@dataclass(frozen=True)
class BackgroundMatch:
    """Take from each frame its background in excess of a model's training level.

    Attributes
    ----------
    reference_photons : float
        :func:`background_map`'s median on frames of the training simulation (photons/px).
    tolerance_photons : float
        Excess left in place (photons/px): what the model tolerates, and what PSF tails of a
        frame more crowded than the training frames add to the measured level.
    tile_px : int
        Tile side of :func:`background_map`.
    """

    reference_photons: float
    tolerance_photons: float
    tile_px: int = TILE_PX

    def excess(self, frames: np.ndarray) -> np.ndarray:
        """(n, rows, cols) photons to subtract (≥ 0)."""
        level = background_map(frames, self.tile_px, follow_gradient=True)
        return np.maximum(level - self.reference_photons - self.tolerance_photons, 0.0)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """The frames (photons) with the excess background subtracted (float32)."""
        frames = np.asarray(frames, dtype=np.float32)
        return frames - self.excess(frames).astype(np.float32)


def training_reference(simulation: dict, n_frames: int = 8, seed: int = 0,
                       tile_px: int = TILE_PX) -> float | None:
    """:func:`background_map`'s median on ``n_frames`` frames of a training simulation.

    Parameters
    ----------
    simulation : dict
        The ``simulation`` mapping a model's ``model.yaml`` records.

    Returns
    -------
    float or None
        Photons per pixel; None when the mapping is not a simulation stormfold can run.
    """
    from stormfold.errors import UserError
    from stormfold.simulate import simulate
    from stormfold.simulate.config import build_config

    data = {k: v for k, v in simulation.items() if k not in ("stormfold_version", "provenance")}
    try:
        cfg = build_config(overrides=data, n_frames=n_frames, seed=seed)
    except (UserError, TypeError, ValueError):
        return None
    sim = simulate(cfg)
    return float(np.median(background_map(cfg.camera.backward(sim.movie), tile_px,
                                          follow_gradient=True)))


#: Tile side (camera pixels) of :func:`flatten_structure`: a cell-sized blob (σ 20 px) is
#: followed at 16 px and not at 32 (gridnet on a blob of 400 on 30 photons/px: JI@100 0.977
#: and 0.188, 0.081 unflattened; `experiments/background_flatten.py`).
FLATTEN_TILE_PX = 16
#: Excess left in place, in standard deviations of Poisson noise at the frame's level: crowded
#: frames vary the tile levels by a few of them (same record: zerocost at 6 and 10/µm² and
#: the demo movie change by +0.0017, −0.0018 and +0.0002 in JI@100).
FLATTEN_TOLERANCE_SD = 3.0


def flatten_structure(frames: np.ndarray | None, tile_px: int = FLATTEN_TILE_PX,
                      tolerance_sd: float = FLATTEN_TOLERANCE_SD) -> np.ndarray | None:
    """Frames with background structure above their typical level taken away.

    Per frame, the tile map of :func:`background_map` is compared with its median m; where it
    exceeds m by more than ``tolerance_sd``·√(m + 1), the excess is subtracted. A uniform or
    gently varying background is left as it is; a bright blob (a cell's autofluorescence) or a
    steep gradient is brought down to the frame's level.

    Parameters
    ----------
    frames : (n, rows, cols) array or None
        Frames in photons per pixel (None is passed through: no context frames).

    Returns
    -------
    (n, rows, cols) float32 or None
    """
    if frames is None:
        return None
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim == 2:
        return flatten_structure(frames[None], tile_px, tolerance_sd)[0]
    level = background_map(frames, tile_px)
    typical = np.median(level.reshape(len(level), -1), axis=1)[:, None, None]
    cut = typical + tolerance_sd * np.sqrt(np.maximum(typical, 0.0) + 1.0)
    return frames - np.maximum(level - cut, 0.0).astype(np.float32)
