"""Fine-grid targets: ground-truth emitters placed on the super-resolution grid (SPEC §1).

Every emitter goes to the fine pixel that *contains* it, ⌊x·L/px⌋ along columns and
⌊y·L/px⌋ along rows (:func:`stormfold.physics.fine_pixel_index`), so decoding at fine-pixel
centres (+½) has no systematic bias. Engines build their targets from these sums: the
unrolled solver's x̄ (photons or 1 per pixel), SOFI's cumulant image r̄, Deep-STORM's spike
maps (which it then blurs).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from stormfold.errors import UserError
from stormfold.physics.geometry import fine_pixel_index


def fine_grid_sum(x_nm: np.ndarray, y_nm: np.ndarray, values: np.ndarray | None,
                  fine_shape: tuple[int, int], fine_pixel_nm: float,
                  frame: np.ndarray | None = None, n_frames: int = 1) -> np.ndarray:
    """Sum of ``values`` (default 1) per fine pixel and frame; points outside are dropped.

    Parameters
    ----------
    x_nm, y_nm : (n,) float
        Positions (nm).
    values : (n,) float or None
        What each point adds (None: 1).
    fine_shape : (rows, cols)
        Fine-grid size.
    fine_pixel_nm : float
        Fine pixel size (camera pixel / L).
    frame : (n,) int, optional
        0-based frame of each point (default all in frame 0).
    n_frames : int
        Frames of the output.

    Returns
    -------
    (n_frames, rows, cols) float64
    """
    rows, cols = int(fine_shape[0]), int(fine_shape[1])
    r = fine_pixel_index(y_nm, fine_pixel_nm)
    c = fine_pixel_index(x_nm, fine_pixel_nm)
    f = np.zeros(r.shape, np.int64) if frame is None else np.asarray(frame, np.int64)
    inside = (f >= 0) & (f < n_frames) & (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    idx = (f[inside] * rows + r[inside]) * cols + c[inside]
    w = np.ones(idx.size) if values is None else np.asarray(values)[inside]
    out = np.bincount(idx, weights=w, minlength=n_frames * rows * cols)
    return out.reshape(n_frames, rows, cols)


def fine_targets(truth: pd.DataFrame, n_frames: int, shape: tuple[int, int],
                 fine_pixel_nm: float, value: str = "photons", first_frame: int = 0) -> np.ndarray:
    """Fine-grid ground truth of frames: each emitter in the fine pixel that contains it.

    Parameters
    ----------
    truth : DataFrame
        Ground truth (``frame``, ``x_nm``, ``y_nm``, and ``photons`` for ``value="photons"``).
    n_frames : int
        Frames [first_frame, first_frame + n_frames) are rendered.
    shape : (int, int)
        Fine-grid shape (rows·L, cols·L).
    fine_pixel_nm : float
        Fine pixel size (camera pixel / L).
    value : {"photons", "binary"}
        Pixel value: summed photons of the emitters in it, or 1.

    Returns
    -------
    ndarray, shape (n_frames, rows·L, cols·L), float32
    """
    if value not in ("photons", "binary"):
        raise UserError(f"target value must be photons or binary, got {value!r}")
    if value == "photons" and "photons" not in truth.columns:
        raise UserError("the ground truth has no photons column (needed by the reconstruction "
                        "loss)")
    out = fine_grid_sum(truth["x_nm"].to_numpy(), truth["y_nm"].to_numpy(),
                        truth["photons"].to_numpy() if value == "photons" else None, shape,
                        fine_pixel_nm, truth["frame"].to_numpy() - first_frame, n_frames)
    if value == "binary":
        out = (out > 0).astype(np.float64)
    return out.astype(np.float32)
