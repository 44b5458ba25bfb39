"""The split test of the refinement: is one refined emitter really two?

A detector can report two close emitters as one, and a refinement started from one
position cannot separate them. :func:`split_pairs` fits the emitter's region once as one
emitter and once as two (the other emitters' models held fixed) and keeps the pair where
the likelihood ratio says so; see ``RefineOptions.split_llr`` in
:mod:`stormfold.localize.refine` and docs/gridnet.md ("Refinement").
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from stormfold.localize.classic.fit import gaussian_model
from stormfold.localize.likelihood import (EMITTER_SLICE, deviance_ratio, fit_regions,
                                          fixed_sigma_model, group_median)

if TYPE_CHECKING:
    from stormfold.localize.refine import Refined

#: Levenberg–Marquardt iterations of the one- and two-emitter fits of the split test.
SPLIT_ITERATIONS = 5
#: A split is kept when the weaker emitter holds at least this fraction of the photons,
#: the two are at least SPLIT_MIN_SEPARATION_PX apart, and both stay within
#: SPLIT_MAX_SHIFT_PX of the single emitter they replace.
SPLIT_MIN_FRACTION = 0.2
SPLIT_MIN_SEPARATION_PX = 0.4
SPLIT_MAX_SHIFT_PX = 2.0
#: The photon evidence of the split test needs this many lone tested emitters in a frame;
#: its spread is their robust one widened by PRIOR_SPREAD_SE/√n of itself (n emitters), and
#: at least PRIOR_MIN_SPREAD of their median photons (see :func:`photon_statistics`).
PRIOR_MIN_EMITTERS = 8
PRIOR_SPREAD_SE = 1.0
PRIOR_MIN_SPREAD = 0.05


def split_pairs(out: Refined, idx: torch.Tensor, gather, total: torch.Tensor, params,
                corners, shape, sigma_px: torch.Tensor, gamma: float, size: int,
                llr_min: float, group: torch.Tensor, n_groups: int,
                photon_prior: bool = True) -> None:
    """Replace emitters of ``idx`` by two where the data say so (writes ``out``).

    Each emitter's region is fitted twice with the other emitters' models held fixed and
    the PSF σ fixed to its ``sigma_px`` (one per emitter, px): one emitter (x, y, N, b)
    from its refined estimate, and two emitters (x₁, y₁, N₁, x₂, y₂, N₂, b) started ± a
    along the principal axis of the residual's second moments (a = √(λ_max − σ²), within
    0.3–1.5 px). Both fits take :data:`SPLIT_ITERATIONS` Levenberg–Marquardt steps, so that
    neither wins by converging further.

    The likelihood ratio is divided by the dispersion φ of the emitter's ``group`` (frame,
    lone or crowded; one of ``n_groups``): the median over the group's tested emitters of
    the one-emitter fit's deviance per degree of freedom, at least 1. A
    noise model that under-states the pixel variance (read noise left out, a wrong gain)
    inflates every likelihood ratio by about φ, and would split single emitters.

    With ``photon_prior``, the photon evidence (:func:`photon_evidence`: the one-emitter fit
    as bright as two of the frame's emitters, each of the pair's as bright as one) is added
    to that ratio, and the pair fit maximises the posterior under a one-sided Gaussian prior
    on each member's photons (the frame's μ ± s; brighter than μ is penalised, dimmer is
    not, as emitters ON for part of a frame are dim). Two emitters about 1 px apart leave
    the likelihood almost flat along N₁ − N₂, and a maximum-likelihood pair often ends
    unbalanced (e.g. 800 and 3,300 photons for two of ~2,200), which gave no evidence; the
    prior keeps the split that the brightness argues for. The likelihood ratio itself
    leaves the prior out.

    The pair is kept when 2·(NLL₁ − NLL₂) / φ (+ the evidence) > ``llr_min``, the weaker
    emitter holds ≥ :data:`SPLIT_MIN_FRACTION` of the photons, the two are ≥
    :data:`SPLIT_MIN_SEPARATION_PX` apart, both are within :data:`SPLIT_MAX_SHIFT_PX` of
    the single estimate and inside the frame, and their Cramér–Rao bounds are finite. Of
    kept pairs whose regions overlap, only the one with the largest strength stays: each
    was fitted with the other's single model fixed, so both could claim one emitter the
    detector missed between them.
    """
    x, y, N, b, sig = params
    c0, r0 = corners
    h, w = shape
    slices = [idx[i:i + EMITTER_SLICE] for i in range(0, idx.numel(), EMITTER_SLICE)]

    def region(sel):
        flat, data, valid, d = gather(sel)
        own, _ = gaussian_model(torch.stack([x[sel], y[sel], N[sel], torch.zeros(sel.numel()),
                                             sig[sel]], 1), size, jacobian=False)
        return data, valid, d, total[flat] - own, sigma_px[sel].float(), \
            flat[:, size // 2, size // 2]

    # One slice (the common case): its regions serve both passes; several: gathered again
    # in each pass, so that memory stays bounded by the slice.
    kept = region(slices[0]) if len(slices) == 1 else None

    def region_of(j):
        return kept if kept is not None else region(slices[j])

    # Pass 1: the one-emitter fits, and each group's dispersion.
    th1_all = torch.empty(idx.numel(), 4)
    nll1_all = torch.empty(idx.numel())
    ratio = torch.empty(idx.numel())
    at = 0
    for j, sel in enumerate(slices):
        _, valid, d, others, sg, _ = region_of(j)
        th1, nll1, _ = fit_regions(torch.stack([x[sel], y[sel], N[sel], b[sel]], 1),
                                   fixed_sigma_model(sg, size), others, valid, d, gamma, [2],
                                   SPLIT_ITERATIONS)
        th1_all[at:at + sel.numel()], nll1_all[at:at + sel.numel()] = th1, nll1
        ratio[at:at + sel.numel()] = deviance_ratio(nll1, d, valid, 4)
        at += sel.numel()
    every = torch.ones(idx.numel(), dtype=torch.bool)
    phi = group_median(ratio, group[idx], every, n_groups).clamp_min(1.0)[group[idx]]
    # Groups are 2·frame (lone) and 2·frame + 1 (crowded): see refine_localizations.
    centre_n, spread_n = photon_statistics(th1_all[:, 2], group[idx] // 2, group[idx] % 2 == 0,
                                           (n_groups + 1) // 2) \
        if photon_prior else (torch.full((idx.numel(),), math.nan),) * 2

    # Pass 2: the two-emitter fits and the test.
    at = 0
    found = []
    for j, sel in enumerate(slices):
        k = sel.numel()
        th1, nll1 = th1_all[at:at + k], nll1_all[at:at + k]
        dispersion = phi[at:at + k]
        mu_n, s_n = centre_n[at:at + k], spread_n[at:at + k]
        at += k
        data, valid, d, others, sg, centre = region_of(j)
        two = _pair_model(sg, size)
        ax, ay, half = _principal_axis((data - others - th1[:, 3, None, None]).clamp_min(0) * valid,
                                       sg)
        start2 = torch.stack([th1[:, 0] + half * ax, th1[:, 1] + half * ay, th1[:, 2] / 2,
                              th1[:, 0] - half * ax, th1[:, 1] - half * ay, th1[:, 2] / 2,
                              th1[:, 3]], 1)
        th2, nll2, info = fit_regions(start2, two, others, valid, d, gamma, [2, 5],
                                      SPLIT_ITERATIONS, prior=_photon_prior(mu_n, s_n))
        inv, err = torch.linalg.inv_ex(info)
        var = torch.diagonal(inv, dim1=1, dim2=2)
        x1, y1 = c0[sel].double() + th2[:, 0].double(), r0[sel].double() + th2[:, 1].double()
        x2, y2 = c0[sel].double() + th2[:, 3].double(), r0[sel].double() + th2[:, 4].double()
        weaker = torch.minimum(th2[:, 2], th2[:, 5]) / (th2[:, 2] + th2[:, 5])
        shift = torch.maximum(torch.hypot(th2[:, 0] - th1[:, 0], th2[:, 1] - th1[:, 1]),
                              torch.hypot(th2[:, 3] - th1[:, 0], th2[:, 4] - th1[:, 1]))
        strength = 2.0 * (nll1 - nll2) / dispersion + \
            photon_evidence(th1[:, 2], th2[:, 2], th2[:, 5], mu_n, s_n)
        keep = (strength > llr_min) & (weaker >= SPLIT_MIN_FRACTION) & \
            (torch.hypot(th2[:, 0] - th2[:, 3], th2[:, 1] - th2[:, 4]) >= SPLIT_MIN_SEPARATION_PX) & \
            (shift <= SPLIT_MAX_SHIFT_PX) & (err == 0) & torch.isfinite(var).all(1) & \
            (var[:, [0, 1, 3, 4]] > 0).all(1) & \
            (x1 >= 0) & (x1 < w) & (y1 >= 0) & (y1 < h) & (x2 >= 0) & (x2 < w) & (y2 >= 0) & (y2 < h)
        found.append((sel[keep], centre[keep], strength[keep], x1[keep], y1[keep], x2[keep],
                      y2[keep], th2[keep], var[keep], sg[keep]))
    rows, centres, strength, x1, y1, x2, y2, th2, var, sg = (torch.cat(f) for f in zip(*found))
    # Two emitters whose regions overlap, each fitted with the other held fixed, could both
    # split onto one emitter the detector missed between them: of splits whose regions
    # overlap (starts within a region's width), only the strongest is kept.
    strongest = _strongest_nearby(centres, strength, total.numel(), w + 2 * size, size - 1)
    rows, x1, y1, x2, y2, th2, var, sg = (t[strongest] for t in (rows, x1, y1, x2, y2, th2, var, sg))
    out.split[rows] = True
    out.x_px[rows], out.y_px[rows] = x1.to(out.x_px), y1.to(out.y_px)
    out.x2_px[rows], out.y2_px[rows] = x2.to(out.x2_px), y2.to(out.y2_px)
    out.counts[rows] = th2[:, 2].to(out.counts)
    out.counts2[rows] = th2[:, 5].to(out.counts2)
    out.bg[rows] = th2[:, 6].to(out.bg)
    out.sigma_px[rows] = sg.to(out.sigma_px)
    out.crlb_x_px2[rows], out.crlb_y_px2[rows] = var[:, 0].to(out.crlb_x_px2), \
        var[:, 1].to(out.crlb_y_px2)
    out.crlb2_x_px2[rows], out.crlb2_y_px2[rows] = var[:, 3].to(out.crlb2_x_px2), \
        var[:, 4].to(out.crlb2_y_px2)


def photon_statistics(counts: torch.Tensor, frame: torch.Tensor, lone: torch.Tensor,
                      n_frames: int):
    """Per emitter, the median μ and a spread s of the one-emitter photon counts of the
    ``lone`` emitters of its ``frame``; μ is NaN in frames with fewer than
    :data:`PRIOR_MIN_EMITTERS` of them.

    s is the robust standard deviation widened for the sample size, 1.4826 · MAD · (1 + c/√n)
    for n emitters with c = :data:`PRIOR_SPREAD_SE` (the MAD's standard error is about
    1.17 s/√n for Gaussian photons), and at least :data:`PRIOR_MIN_SPREAD` · μ. A frame holds
    few emitters at low density, and the MAD of a few can be small by chance (nine emitters
    of 300–5,000 photons gave 435 instead of ~1,400): a spread taken too narrow splits bright
    single emitters. Per frame, so that the statistics do not depend on how frames are
    batched (pooled over the frames of a call, the evidence gained more, but with the
    batching)."""
    lone = lone & torch.isfinite(counts)
    med = group_median(counts, frame, lone, n_frames)
    mad = group_median((counts - med[frame]).abs(), frame, lone, n_frames)
    n = torch.bincount(frame[lone], minlength=n_frames).to(counts.dtype)
    spread = torch.maximum(1.4826 * mad * (1 + PRIOR_SPREAD_SE / n.clamp_min(1).sqrt()),
                           PRIOR_MIN_SPREAD * med)
    med = torch.where(n >= PRIOR_MIN_EMITTERS, med, math.nan)
    return med[frame], spread[frame]


def photon_evidence(single: torch.Tensor, first: torch.Tensor, second: torch.Tensor,
                    centre: torch.Tensor, spread: torch.Tensor) -> torch.Tensor:
    """Evidence (≥ 0, in units of 2·Δlog L) that a spot of ``single`` photons is two
    emitters of ``first`` and ``second``, from the frame's distribution of one emitter's
    photons (Gaussian, ``centre`` ± ``spread``):
    ((N − μ)² − (N₁ − μ)² − (N₂ − μ)²) / s², floored at 0; 0 where μ is NaN.

    It is the log-ratio of the Gaussian exponents only: it rewards a pair whose photons are
    typical of one emitter each while their sum is not, and never counts against a pair
    (emitters ON for part of a frame are dimmer than the distribution says)."""
    term = ((single - centre) ** 2 - (first - centre) ** 2 - (second - centre) ** 2) / spread ** 2
    return torch.where(torch.isfinite(term), term.clamp_min(0.0), torch.zeros_like(term))


def _pair_model(sg: torch.Tensor, size: int):
    """Expected counts (and Jacobian) of two emitters of PSF σ ``sg`` (px) and a background:
    parameters (x₁, y₁, N₁, x₂, y₂, N₂, b)."""
    zero = torch.zeros_like(sg)

    def two(t, jacobian):
        m1, j1 = gaussian_model(torch.stack([t[:, 0], t[:, 1], t[:, 2], zero, sg], 1), size,
                                jacobian=jacobian)
        m2, j2 = gaussian_model(torch.stack([t[:, 3], t[:, 4], t[:, 5], zero, sg], 1), size,
                                jacobian=jacobian)
        mu = m1 + m2 + t[:, 6, None, None]
        if not jacobian:
            return mu, None
        return mu, torch.cat([j1[:, :3], j2[:, :3], torch.ones_like(j1[:, :1])], 1)

    return two


def _photon_prior(centre: torch.Tensor, spread: torch.Tensor):
    """(mean, precision) of the pair fit's one-sided Gaussian prior on each member's photons
    (:func:`~stormfold.localize.likelihood.fit_regions`): the frame's ``centre`` ±
    ``spread``, none (precision 0) where the frame has no statistics."""
    known = torch.isfinite(centre) & torch.isfinite(spread) & (spread > 0)
    one = torch.ones_like(spread)
    return (torch.where(known, centre, torch.zeros_like(centre)),
            torch.where(known, 1.0 / torch.where(known, spread, one) ** 2,
                        torch.zeros_like(spread)))


def _strongest_nearby(centres: torch.Tensor, strength: torch.Tensor, n_pixels: int,
                      padded_width: int, reach: int) -> torch.Tensor:
    """Boolean mask of the emitters whose ``strength`` is the largest among those whose
    start pixel (``centres``: indices into ``n_pixels`` padded-frame pixels of rows
    ``padded_width`` long) lies within ``reach`` pixels (Chebyshev) of theirs. The frames'
    padding must exceed ``reach``."""
    if centres.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    grid = torch.full((n_pixels,), -math.inf, dtype=strength.dtype)
    grid.scatter_reduce_(0, centres, strength, reduce="amax")
    d = torch.arange(-reach, reach + 1)
    window = (d[:, None] * padded_width + d[None, :]).flatten()
    best = grid[centres[:, None] + window[None, :]].amax(1)
    return strength >= best


def _principal_axis(r: torch.Tensor, sigma_px: torch.Tensor):
    """Unit principal axis (x, y) of the second moments of the regions ``r`` (n, S, S) and
    the half-separation (px) of two PSFs of σ ``sigma_px`` that would give its variance."""
    size = r.shape[-1]
    c = torch.arange(size, dtype=r.dtype) + 0.5
    m0 = r.flatten(1).sum(1).clamp_min(1e-6)
    mx = (r.sum(1) * c).sum(1) / m0
    my = (r.sum(2) * c).sum(1) / m0
    dx = c[None, None, :] - mx[:, None, None]
    dy = c[None, :, None] - my[:, None, None]
    cxx = (r * dx * dx).flatten(1).sum(1) / m0
    cyy = (r * dy * dy).flatten(1).sum(1) / m0
    cxy = (r * dx * dy).flatten(1).sum(1) / m0
    l1, ux, uy = principal_axis(cxx, cyy, cxy)
    half = torch.sqrt((l1 - sigma_px ** 2).clamp(min=0.09)).clamp(max=1.5)
    return ux, uy, half


def principal_axis(sxx: torch.Tensor, syy: torch.Tensor, sxy: torch.Tensor):
    """Largest eigenvalue of the 2×2 covariances [[sxx, sxy], [sxy, syy]] and its unit
    eigenvector (x, y); x for a round one."""
    half_trace = 0.5 * (sxx + syy)
    lam = half_trace + torch.sqrt((half_trace ** 2 - (sxx * syy - sxy ** 2)).clamp_min(0))
    # The eigenvector as (λ − syy, sxy) or (sxy, λ − sxx), whichever has the larger
    # well-determined component (λ − syy ≥ sxx − syy when sxx ≥ syy): the other form
    # vanishes, and loses its direction in float32, when the covariance is almost diagonal.
    wide = sxx >= syy
    vx = torch.where(wide, lam - syy, sxy)
    vy = torch.where(wide, sxy, lam - sxx)
    norm = torch.hypot(vx, vy)
    round_ = norm < 1e-12
    vx = torch.where(round_, torch.ones_like(vx), vx)
    norm = torch.where(round_, torch.ones_like(norm), norm)
    return lam, vx / norm, vy / norm
