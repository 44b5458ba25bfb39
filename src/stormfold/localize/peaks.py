"""Localizations from super-resolved maps: 3×3 local maxima, centre of gravity, confidence.

This is the extraction of the Deep-STORM notebooks (SPEC §4), vectorised in torch over a
whole batch of maps: a fine pixel is a detection when it is the maximum of its 3×3
neighbourhood and exceeds ``threshold · target_scale``; its position is the centre of
gravity of the 3×3 window around it, and its confidence the window's sum divided by
``target_scale``. Positions follow the fine-grid convention of SPEC §1: fine pixel (r, c)
has its centre at ((c + 0.5)·fine_px, (r + 0.5)·fine_px).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from stormfold.table import make_table

# Offsets of the 3×3 window, row-major, as used by the gathers below.
_DR = torch.tensor([-1, -1, -1, 0, 0, 0, 1, 1, 1])
_DC = torch.tensor([-1, 0, 1, -1, 0, 1, -1, 0, 1])


@dataclass
class Peaks:
    """Detections in a batch of maps (all tensors of length n, on the maps' device).

    Attributes
    ----------
    index : int64
        Map (frame) index in the batch.
    row, col : int64
        Fine pixel of the local maximum.
    value : float32
        Map value at the maximum.
    y_px, x_px : float64
        Centre-of-gravity position in fine pixels, origin at the top-left corner of fine
        pixel (0, 0) (so a symmetric peak centred on pixel (r, c) gives (r + 0.5, c + 0.5)).
    mass : float32
        Sum of the 3×3 window.
    """

    index: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    value: torch.Tensor
    y_px: torch.Tensor
    x_px: torch.Tensor
    mass: torch.Tensor

    def __len__(self) -> int:
        return int(self.index.numel())

    def select(self, keep: torch.Tensor) -> "Peaks":
        """The detections where the boolean ``keep`` is true."""
        return Peaks(*(getattr(self, f)[keep] for f in
                       ("index", "row", "col", "value", "y_px", "x_px", "mass")))


def local_maxima(maps: torch.Tensor, min_value: float) -> torch.Tensor:
    """Boolean mask of pixels that are the maximum of their 3×3 neighbourhood and > min_value.

    Parameters
    ----------
    maps : (n, rows, cols) float tensor
    min_value : float
        Strict lower bound on the value (in the maps' units).
    """
    pooled = F.max_pool2d(maps[:, None], kernel_size=3, stride=1, padding=1)[:, 0]
    return (maps >= pooled) & (maps > min_value)


def find_peaks(maps: torch.Tensor, min_value: float) -> Peaks:
    """3×3 local maxima above ``min_value`` with their centre of gravity and 3×3 mass.

    The maps should be non-negative (Deep-STORM outputs are clamped at 0) so the centre of
    gravity is a convex combination of the window's pixel centres. Pixels outside the map
    count as 0.

    Parameters
    ----------
    maps : (n, rows, cols) float tensor
    min_value : float
        Detection threshold in the maps' units (Deep-STORM: ``threshold · target_scale``).
    """
    if maps.ndim != 3:
        raise ValueError(f"maps must be (n, rows, cols), got shape {tuple(maps.shape)}")
    maps = maps.float()
    n, rows, cols = maps.shape
    idx, r, c = torch.nonzero(local_maxima(maps, min_value), as_tuple=True)
    padded = F.pad(maps, (1, 1, 1, 1))
    dr, dc = _DR.to(maps.device), _DC.to(maps.device)
    # (n_peaks, 9) window values gathered with one advanced index (padded coordinates).
    win = padded[idx[:, None], r[:, None] + 1 + dr, c[:, None] + 1 + dc]
    mass = win.sum(1)
    w = win.double()
    total = w.sum(1)
    y = r.double() + 0.5 + (w * dr.double()).sum(1) / total
    x = c.double() + 0.5 + (w * dc.double()).sum(1) / total
    return Peaks(idx, r, c, maps[idx, r, c], y, x, mass)


def window_sum(maps: torch.Tensor, peaks: Peaks, size: int) -> torch.Tensor:
    """Sum of ``maps`` over the ``size``×``size`` window centred on each detection.

    One gather of ``size²`` values per detection (pixels outside the map count as 0), so
    the cost grows with the number of detections, not with the map area.

    Parameters
    ----------
    maps : (n, rows, cols) float tensor
        The maps the detections were found in.
    peaks : Peaks
        From :func:`find_peaks` on ``maps``.
    size : int
        Odd window side in map pixels (3 gives :attr:`Peaks.mass`).

    Returns
    -------
    (n_peaks,) float32 tensor on the maps' device.
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"window size must be a positive odd number, got {size}")
    half = size // 2
    offsets = torch.arange(-half, half + 1, device=maps.device)
    dr = offsets.repeat_interleave(size)
    dc = offsets.repeat(size)
    padded = F.pad(maps.float(), (half, half, half, half))
    win = padded[peaks.index[:, None], peaks.row[:, None] + half + dr,
                 peaks.col[:, None] + half + dc]
    return win.sum(1)


def peaks_to_table(peaks: Peaks, first_frame: int, fine_pixel_nm: float,
                   confidence_scale: float = 1.0, **columns: np.ndarray) -> pd.DataFrame:
    """Localization table (SPEC §1) of detections.

    Parameters
    ----------
    peaks : Peaks
        From :func:`find_peaks`; ``index`` is the frame within the batch.
    first_frame : int
        Absolute 0-based frame of map 0.
    fine_pixel_nm : float
        Size of one map pixel in nm (camera pixel size / L).
    confidence_scale : float
        ``confidence = mass / confidence_scale`` (Deep-STORM: ``target_scale``).
    **columns : array
        Further columns, one value per detection in the order of ``peaks``.
    """
    frame = peaks.index.cpu().numpy().astype(np.int64) + int(first_frame)
    x_nm = peaks.x_px.cpu().numpy() * fine_pixel_nm
    y_nm = peaks.y_px.cpu().numpy() * fine_pixel_nm
    confidence = peaks.mass.double().cpu().numpy() / confidence_scale
    order = np.lexsort((x_nm, y_nm, frame))
    extra = {name: np.asarray(values)[order] for name, values in columns.items()}
    return make_table(frame[order], x_nm[order], y_nm[order], confidence=confidence[order],
                      **extra)
