"""Per-pixel outputs → localization table (SPEC §10), vectorised in torch.

Candidates are the pixels whose p is the maximum of their 3×3 neighbourhood and at least
``p_raw``; among equal neighbouring maxima the one with the highest linear index is kept.
The score of a candidate is the sum of p over its 3×3 window, clipped to 1 (it estimates
the probability that one emitter is there; the sum can exceed 1 when a neighbour's mass
falls into the window); candidates with score ≥ ``threshold`` are localizations at μ of
the candidate pixel: x = (c + 0.5 + Δx)·px, y = (r + 0.5 + Δy)·px (corner origin, SPEC §1).

Two emitters closer than about 1.5 px light up adjacent pixels, and only one of them can be
a 3×3 maximum. As in DECODE's post-processing, a pixel whose own p is at least ``p_keep``
is therefore a candidate too, with its own p as the score (the count loss makes a single
emitter's p sum to about 1 over the pixels it is split between, so two pixels above
``p_keep`` ≥ 0.5 mean two emitters). ``p_keep`` > 1 switches this off (SPEC §10's rule).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from stormfold.gridnet.outputs import GridOutputs
from stormfold.table import make_table

DEFAULT_P_RAW = 0.1
#: Default of p_keep (> 1: only 3×3 maxima).
DEFAULT_P_KEEP = 0.6


@dataclass
class Candidates:
    """Candidate detections of a batch (tensors of length n_candidates)."""

    index: torch.Tensor   # frame within the batch
    row: torch.Tensor     # pixel of the candidate
    col: torch.Tensor
    is_max: torch.Tensor  # a 3×3 local maximum (else kept for p ≥ p_keep)
    p: torch.Tensor       # the pixel's own p
    x_px: torch.Tensor
    y_px: torch.Tensor
    score: torch.Tensor
    photons: torch.Tensor
    sigma_x_px: torch.Tensor
    sigma_y_px: torch.Tensor
    sigma_photons: torch.Tensor
    bg: torch.Tensor

    def select(self, keep: torch.Tensor) -> "Candidates":
        return Candidates(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def local_maxima(p: torch.Tensor, p_raw: float) -> torch.Tensor:
    """Boolean (n, rows, cols): 3×3 maxima of p with p ≥ p_raw, one per plateau of ties."""
    n, rows, cols = p.shape
    pooled = F.max_pool2d(p[:, None], 3, stride=1, padding=1)[:, 0]
    is_max = (p >= pooled) & (p >= p_raw)
    # Ties (flat tops, e.g. two pixels at the clamped maximum): keep the highest index.
    index = torch.arange(1, rows * cols + 1, device=p.device, dtype=torch.float32).reshape(rows, cols)
    tagged = torch.where(is_max, index[None], torch.zeros((), device=p.device))
    return is_max & (tagged >= F.max_pool2d(tagged[:, None], 3, stride=1, padding=1)[:, 0])


def candidates(out: GridOutputs, p_raw: float = DEFAULT_P_RAW,
               p_keep: float = DEFAULT_P_KEEP) -> Candidates:
    """All candidates of a batch of outputs (before the score threshold)."""
    score_map = F.avg_pool2d(out.p[:, None], 3, stride=1, padding=1, count_include_pad=True,
                             divisor_override=1)[:, 0].clamp(max=1.0)
    is_max = local_maxima(out.p, p_raw)
    f, r, c = torch.nonzero(is_max | (out.p >= p_keep), as_tuple=True)
    peak = is_max[f, r, c]
    p = out.p[f, r, c]
    return Candidates(index=f, row=r, col=c, is_max=peak, p=p,
                      x_px=c.to(torch.float64) + 0.5 + out.dx[f, r, c].double(),
                      y_px=r.to(torch.float64) + 0.5 + out.dy[f, r, c].double(),
                      score=torch.where(peak, score_map[f, r, c], p), photons=out.photons[f, r, c],
                      sigma_x_px=out.sigma_x[f, r, c], sigma_y_px=out.sigma_y[f, r, c],
                      sigma_photons=out.sigma_photons[f, r, c], bg=out.bg[f, r, c])


def to_table(cand: Candidates, first_frame: int, pixel_size_nm: float) -> pd.DataFrame:
    """Localization table (absolute frames, nm) of candidates."""
    px = float(pixel_size_nm)
    sx = cand.sigma_x_px.double().cpu().numpy() * px
    sy = cand.sigma_y_px.double().cpu().numpy() * px
    return make_table(cand.index.cpu().numpy() + int(first_frame), cand.x_px.cpu().numpy() * px,
                      cand.y_px.cpu().numpy() * px,
                      photons=cand.photons.double().cpu().numpy(),
                      bg=cand.bg.double().cpu().numpy(),
                      uncertainty_nm=np.sqrt(0.5 * (sx ** 2 + sy ** 2)),
                      confidence=cand.score.double().cpu().numpy(),
                      uncertainty_x_nm=sx, uncertainty_y_nm=sy,
                      photons_sd_photon=cand.sigma_photons.double().cpu().numpy())


def decode(out: GridOutputs, threshold: float, pixel_size_nm: float, first_frame: int = 0,
           p_raw: float = DEFAULT_P_RAW, p_keep: float = DEFAULT_P_KEEP) -> pd.DataFrame:
    """Localization table of a batch of outputs (frames ``first_frame`` + 0, 1, ...).

    Parameters
    ----------
    out : GridOutputs
    threshold : float
        Minimum score (sum of p over the 3×3 window, clipped to 1).
    pixel_size_nm : float
        Camera pixel size, nm.
    first_frame : int
        Absolute index of the batch's first frame.
    p_raw : float
        Minimum p of a candidate pixel.
    p_keep : float
        Pixels with p ≥ p_keep are candidates even when not a 3×3 maximum (> 1: off).
    """
    cand = candidates(out, p_raw, p_keep)
    return to_table(cand.select(cand.score >= threshold), first_frame, pixel_size_nm)
