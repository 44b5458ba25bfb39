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

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from stormfold.gridnet.outputs import GridOutputs
from stormfold.localize.split import principal_axis
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
    # Copy j = 0, 1, ... of a cluster reported as several emitters (0 for peaks), and the
    # cluster's spread along its principal axis (px; the axis times the p-weighted standard
    # deviation of its components' means along it, 0 for peaks).
    copy: torch.Tensor
    spread_x_px: torch.Tensor
    spread_y_px: torch.Tensor

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
                      copy=torch.zeros_like(f), spread_x_px=torch.zeros_like(p),
                      spread_y_px=torch.zeros_like(p),
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


# ---------------------------------------------------------------------------- clusters
#: Decoding methods: SPEC §10's 3×3 peaks, or clusters of the mixture's components.
DECODERS = ("peaks", "clusters")
#: Default cluster radius (px): components whose means are this close are one emitter.
DEFAULT_CLUSTER_RADIUS_PX = 0.6
#: Allowed cluster radii (px).
RADIUS_RANGE_PX = (0.1, 1.0)
#: Smallest p of a pixel that takes part in a cluster (below it a component weighs nothing).
COMPONENT_P_MIN = 0.05
#: Camera pixels decoded at once by the cluster decoder: each component gathers
#: (2⌈2 + r⌉ + 1)² neighbours, so this bounds its memory (≈ 100 MB) on any frame size.
CLUSTER_CHUNK_PIXELS = 2 ** 18


def _neighbour_offsets(window: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.arange(-window, window + 1, device=device)
    return d.repeat_interleave(d.numel()), d.repeat(d.numel())


def cluster_candidates(out: GridOutputs, radius_px: float = DEFAULT_CLUSTER_RADIUS_PX,
                       p_min: float = COMPONENT_P_MIN) -> Candidates:
    """Candidates as clusters of the mixture's components (frames in chunks of
    :data:`CLUSTER_CHUNK_PIXELS` camera pixels; see :func:`_cluster_chunk`)."""
    n, rows, cols = out.p.shape
    step = max(1, CLUSTER_CHUNK_PIXELS // max(1, rows * cols))
    if n <= step:
        return _cluster_chunk(out, radius_px, p_min)
    parts = []
    for i in range(0, n, step):
        part = _cluster_chunk(GridOutputs(*(getattr(out, f)[i:i + step]
                                            for f in out.__dataclass_fields__)),
                              radius_px, p_min)
        part.index = part.index + i
        parts.append(part)
    return Candidates(*(torch.cat([getattr(c, f) for c in parts])
                        for f in Candidates.__dataclass_fields__))


def _cluster_chunk(out: GridOutputs, radius_px: float, p_min: float) -> Candidates:
    """Candidates as clusters of the mixture's components.

    The loss reads the outputs as a mixture: pixel k proposes an emitter at μ_k with
    weight p_k, and the network may split one emitter's probability over several pixels
    whose μ's agree. Two emitters 1–2 px apart then give about 2 of probability over a few
    pixels, but rarely two 3×3 maxima of p (see docs/gridnet.md). So clusters are formed
    in position space, not on the pixel grid:

    - every pixel with p ≥ ``p_min`` is a component at μ_k;
    - its density is D_k = Σ_j p_j exp(−|μ_j − μ_k|²/(2s²)), s = 0.3·``radius_px``;
    - a component is a cluster centre when no component within ``radius_px`` of it has a
      higher density (ties: the higher linear pixel index wins); every other component
      moves to its densest such neighbour, and on from there, until it reaches a centre
      (quick shift): the clusters partition the components;
    - a cluster's mass m is its Σp; its position and photons are the p-weighted means;
      σx, σy, σN and the background are the centre component's;
    - the count loss makes m estimate the number of emitters in the cluster, so a cluster
      gives ⌈m⌉ candidates at its position with scores min(m − j, 1), j = 0, 1, …: with
      threshold t it yields ⌊m − t⌋ + 1 localizations when m ≥ t (two emitters closer than
      the network can separate are reported at their common mean, not dropped).

    The centre's σ, not the mixture's standard deviation, because the latter counts the
    spread twice: its z-scores have a standard deviation of about 0.6 on sparse
    simulations, the centre's σ about 0.9 (docs/gridnet.md).

    Pairs are found among pixels at most ⌈2 + radius_px⌉ apart (|Δx|, |Δy| < 1 px), so
    the cost is linear in the number of components.

    Parameters
    ----------
    out : GridOutputs
    radius_px : float
        Cluster radius, camera pixels (> 0).
    p_min : float
        Smallest p of a component.
    """
    p = out.p
    n, rows, cols = p.shape
    dev = p.device
    window = int(math.ceil(2.0 + radius_px))
    yc = torch.arange(rows, device=dev, dtype=torch.float32)[:, None] + 0.5
    xc = torch.arange(cols, device=dev, dtype=torch.float32)[None, :] + 0.5
    comp = (p >= p_min) & torch.isfinite(out.dx) & torch.isfinite(out.dy)
    pw = torch.where(comp, p, torch.zeros((), device=dev, dtype=p.dtype))
    fields = {"p": pw, "x": xc + out.dx, "y": yc + out.dy}

    def padded(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (window, window, window, window)).flatten()

    f, r, c = torch.nonzero(comp, as_tuple=True)
    width = cols + 2 * window
    plane = (rows + 2 * window) * width
    centre = f * plane + (r + window) * width + (c + window)
    da, db = _neighbour_offsets(window, dev)
    neighbour = centre[:, None] + (da * width + db)[None, :]  # (K, (2w+1)²), inside the padding
    flat = {k: padded(v) for k, v in fields.items()}
    pn = flat["p"][neighbour]
    d2 = (flat["x"][neighbour] - flat["x"][centre][:, None]) ** 2 + \
        (flat["y"][neighbour] - flat["y"][centre][:, None]) ** 2
    s2 = (0.3 * radius_px) ** 2
    density = (pn * torch.exp(-0.5 * d2 / s2)).sum(1)
    near = d2 <= radius_px ** 2
    dmap = torch.zeros(n * plane, device=dev, dtype=density.dtype)
    dmap[centre] = density
    dn = dmap[neighbour]
    beaten = near & ((dn > density[:, None]) |
                     ((dn == density[:, None]) & (neighbour > centre[:, None])))
    peak = ~beaten.any(1)
    # Every component climbs to its densest beating neighbour until it reaches a centre
    # (quick shift): the clusters partition the components, so each p counts once.
    k_all = torch.arange(len(density), device=dev)
    comp_of = torch.full((n * plane,), -1, dtype=torch.long, device=dev)
    comp_of[centre] = k_all
    best = torch.where(beaten, dn, torch.full_like(dn, -1.0)).argmax(1)
    parent = torch.where(peak, k_all, comp_of[neighbour[k_all, best]])
    for _ in range(64):  # pointer jumping: ⌈log2(longest chain)⌉ rounds
        climbed = parent[parent]
        if torch.equal(climbed, parent):
            break
        parent = climbed
    roots = torch.nonzero(peak).squeeze(1)
    slot = torch.full((len(density),), -1, dtype=torch.long, device=dev)
    slot[roots] = torch.arange(len(roots), device=dev)
    member = slot[parent]
    p_k = flat["p"][centre]
    mass = torch.zeros(len(roots), device=dev, dtype=p_k.dtype).index_add_(0, member, p_k)
    members = centre
    f, r, c, centre = f[peak], r[peak], c[peak], centre[peak]

    def mean(value: torch.Tensor) -> torch.Tensor:
        # Deviations from the centre component keep float32 exact far from the origin.
        flat_value = padded(value)
        ref = flat_value[centre]
        deviation = flat_value[members] - ref[member]
        return ref + torch.zeros_like(ref).index_add_(0, member, p_k * deviation) / mass

    spread_x, spread_y = _principal_spread(padded(fields["x"]), padded(fields["y"]), centre,
                                           members, member, p_k, mass)
    cand = Candidates(index=f, row=r, col=c, is_max=torch.ones_like(f, dtype=torch.bool),
                      p=p[f, r, c], x_px=mean(fields["x"]).double(),
                      y_px=mean(fields["y"]).double(), score=mass.clamp(max=1.0),
                      photons=mean(out.photons), sigma_x_px=out.sigma_x[f, r, c],
                      sigma_y_px=out.sigma_y[f, r, c], sigma_photons=out.sigma_photons[f, r, c],
                      bg=out.bg[f, r, c], copy=torch.zeros_like(f), spread_x_px=spread_x,
                      spread_y_px=spread_y)
    # A cluster of mass m holds about m emitters whose means the network did not separate:
    # copy j = 0, 1, ... has score min(m − j, 1), so the threshold t keeps ⌊m − t⌋ + 1.
    copies = torch.ceil(mass).clamp(min=1).long()
    idx = torch.repeat_interleave(torch.arange(len(mass), device=dev), copies)
    j = torch.arange(len(idx), device=dev) - (torch.cumsum(copies, 0) - copies)[idx]
    cand = cand.select(idx)
    cand.score = (mass[idx] - j).clamp(max=1.0)
    cand.copy = j
    return cand


def _principal_spread(x: torch.Tensor, y: torch.Tensor, centre: torch.Tensor,
                      members: torch.Tensor, member: torch.Tensor, p_k: torch.Tensor,
                      mass: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each cluster's principal axis scaled by the p-weighted standard deviation of its
    components' means along it (px): where two emitters share a cluster, about half their
    separation. Deviations from the centre component keep float32 exact."""
    dx = x[members] - x[centre][member]
    dy = y[members] - y[centre][member]

    def wsum(v: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(mass).index_add_(0, member, p_k * v) / mass

    mx, my = wsum(dx), wsum(dy)
    sxx = (wsum(dx * dx) - mx * mx).clamp_min(0)
    syy = (wsum(dy * dy) - my * my).clamp_min(0)
    sxy = wsum(dx * dy) - mx * my
    lam, ux, uy = principal_axis(sxx, syy, sxy)
    scale = torch.sqrt(lam)
    return ux * scale, uy * scale


def split_starts(cand: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
    """Starting positions (px) of the refinement.

    The k kept copies of one cluster (consecutive candidates, copy 0 first) all sit at the
    cluster's mean, and identical starts would take identical steps. So they start spread
    along the cluster's principal axis, at offsets whose standard deviation is the
    cluster's spread: ±1 spread for two copies.
    """
    if len(cand.copy) == 0:
        return cand.x_px, cand.y_px
    cluster = torch.cumsum(cand.copy == 0, 0) - 1
    k = torch.bincount(cluster)[cluster].to(cand.x_px.dtype)
    offset = (cand.copy.to(k.dtype) - 0.5 * (k - 1)) / torch.sqrt(((k * k - 1) / 12).clamp_min(1e-12))
    offset = torch.where(k > 1, offset, torch.zeros_like(offset))
    return (cand.x_px + offset * cand.spread_x_px.to(offset.dtype),
            cand.y_px + offset * cand.spread_y_px.to(offset.dtype))


@dataclass
class Decoder:
    """How per-pixel outputs become candidates (stored in model.yaml as ``decoder``).

    Attributes
    ----------
    method : {"peaks", "clusters"}
        ``peaks``: SPEC §10's 3×3 local maxima (with ``p_raw``, ``p_keep``);
        ``clusters``: :func:`cluster_candidates` (with ``radius_px``).
    p_raw, p_keep : float
        Parameters of ``peaks``.
    radius_px : float
        Cluster radius of ``clusters``, camera pixels.
    """

    method: str = "clusters"
    p_raw: float = DEFAULT_P_RAW
    p_keep: float = DEFAULT_P_KEEP
    radius_px: float = DEFAULT_CLUSTER_RADIUS_PX

    def validate(self) -> None:
        from stormfold.errors import UserError

        if self.method not in DECODERS:
            raise UserError(f"gridnet decoder must be one of {', '.join(DECODERS)}, "
                            f"got {self.method!r}")
        if not 0 < self.p_raw < 1:
            raise UserError(f"gridnet p_raw must be in (0, 1), got {self.p_raw}")
        if not self.p_keep >= 0.5:
            raise UserError(f"gridnet p_keep must be ≥ 0.5 (> 1: off), got {self.p_keep}")
        lo, hi = RADIUS_RANGE_PX
        if not lo <= self.radius_px <= hi:
            raise UserError(f"gridnet cluster radius_px must be in [{lo:g}, {hi:g}] px, "
                            f"got {self.radius_px}")

    def metadata(self) -> dict:
        """The method and its own parameters (model.yaml's ``decoder`` section)."""
        if self.method == "clusters":
            return {"method": "clusters", "radius_px": self.radius_px}
        return {"method": "peaks", "p_raw": self.p_raw, "p_keep": self.p_keep}

    def candidates(self, out: GridOutputs) -> Candidates:
        if self.method == "clusters":
            return cluster_candidates(out, self.radius_px)
        return candidates(out, self.p_raw, self.p_keep)
