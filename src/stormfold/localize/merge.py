"""Two tests of the refinement that remove emitters: the merge test and the PSF-shape test.

Merge test (:func:`merge_copies`), the mirror of the split test
(:mod:`stormfold.localize.split`): a detector trained on dimmer emitters reads one very
bright spot (a fiducial bead, a DNA-PAINT binding event of 30,000 photons) as several
emitters, and the joint refinement moves the copies to within a fraction of a pixel of each
other, each with a share of the photons. Close emitters of one frame are grouped
(:func:`close_groups`), the group's region is fitted once as ONE emitter (started at the
photon-weighted mean position with the summed photons), and the group is replaced by that
emitter unless the group explains the data better by the split test's criterion,
2·(NLL₁ − NLL_group)/φ ≥ ``llr_min`` (:func:`merge_copies`, :func:`merge_rounds`).

PSF-shape test (:func:`spike_statistic`, :func:`narrow_spike`): an sCMOS hot pixel is a
one-pixel spike whose neighbours are at background, which the detector reads as an emitter.
The refined Gaussian emitter's region is compared with a "spike" model: the same background
(and the other emitters) plus a single-pixel excess at the brightest of the 3 × 3 pixels
around the emitter, its amplitude the closed-form Poisson maximum (data − model there). The
emitter is dropped when 2·(NLL_gauss − NLL_spike)/φ ≥ :data:`SPIKE_LLR`, the spike holds
≥ :data:`SPIKE_FRACTION` of its photons, and the spike also beats a Gaussian of
:data:`SPIKE_SIGMA_PX` refitted to the region. A real emitter of σ ≥ 0.7 px puts ≥ 70 % of
its light outside its central pixel, so the spike model is far worse there.

φ is the frame's dispersion, as in the split test: the median over its lone emitters of the
refined fit's deviance per degree of freedom, at least 1 (:func:`frame_dispersion`).
"""
from __future__ import annotations

import math

import torch

from stormfold.localize.classic.fit import gaussian_model
from stormfold.localize.likelihood import (expected_data, fit_regions, fixed_sigma_model,
                                          group_median, poisson_nll)

#: Without a detector's photon range, emitters of a frame closer than MERGE_SEPARATION_SIGMA
#: PSF σ (the mean of the two), at most MERGE_MAX_SEPARATION_PX, are merge-tested. The split
#: test never makes a pair closer than SPLIT_MIN_SEPARATION_PX = 0.4 px, so none of its pairs
#: can be merged back; 0.3 σ is 0.33–0.39 px for σ 1.1–1.3 px.
MERGE_SEPARATION_SIGMA = 0.3
MERGE_MAX_SEPARATION_PX = 0.4
#: With the detector's training maximum (``bright_counts``), only pairs brighter together
#: than it are grouped, up to this many σ, at most MERGE_MAX_SEPARATION_BRIGHT_PX: the
#: detector reads such a spot as several emitters, and the refinement leaves the copies of a
#: 25–35k-photon spot (σ 1.3 px) 0.4–0.6 px apart (review 14's `bright` case: with 0.4 px
#: the remaining false positives were 0.41–0.61 px from another localization). Pairs within
#: the training range are the detector's to resolve: at 2/µm² and σ 0.5 px (220 nm pixels),
#: grouping them within 0.3 σ merged 471 pairs, two true emitters 50–100 nm apart whose fits
#: had collapsed together (JI@100 0.701 → 0.681), and at 10/µm² it cost 0.0005
#: (experiments/gridnet_merge.py cases; README, "Merge test").
MERGE_SEPARATION_BRIGHT_SIGMA = 0.8
MERGE_MAX_SEPARATION_BRIGHT_PX = 1.0
#: Rounds of the merge test: the members of a group that fails it are grouped again with
#: half the reach (a real emitter next to a bright spot's copies makes one emitter fit worse
#: than the group; review 14's beads: JI@100 0.863 with one round, 0.870 with three).
MERGE_ROUNDS = 3
#: Levenberg–Marquardt iterations of the single-emitter fit of a group (and of the narrow
#: Gaussian of the shape test): 40 gave the same statistics on review 14's beads.
MERGE_ITERATIONS = 10
#: An emitter is dropped as a one-pixel spike when 2·(NLL_gauss − NLL_spike)/φ ≥ this.
#: experiments/gridnet_merge.py: isolated hot pixels of +700 to +1,800 ADU give 1,070–4,070,
#: isolated real emitters of the clean controls (σ 0.5–1.1 px) at most −306; 10 rather than
#: 0 leaves emitters without light (N ≈ 1, statistic 0) alone.
SPIKE_LLR = 10.0
#: ... and when the spike's amplitude is at least this fraction of the emitter's photons: a
#: Gaussian of σ ≥ 0.7 px puts ≤ 28 % of its light in one pixel (centred), a hot pixel's
#: fit about all of it.
SPIKE_FRACTION = 0.5
#: A candidate spike must also beat a Gaussian of this σ (px) refitted to its region: a PSF
#: sampled at the Nyquist rate has σ ≈ 0.5 px, and emitters that narrow put ~47 % of their
#: light in one pixel, so against the refinement's σ (≥ 0.7 px for the generalist) the
#: spike won for 8 % of them (σ 0.5 px, 2/µm²: JI@100 0.701 → 0.683).
SPIKE_SIGMA_PX = 0.5


def frame_dispersion(ratio: torch.Tensor, frame: torch.Tensor, lone: torch.Tensor,
                     usable: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Per emitter, the dispersion φ ≥ 1 of its frame: the median of ``ratio`` (deviance
    per degree of freedom of each emitter's region) over the frame's ``lone`` emitters, or
    over all its ``usable`` ones where it has no lone one (as the split test's φ)."""
    lone_phi = group_median(ratio, frame, lone & usable, n_frames)
    any_phi = group_median(ratio, frame, usable, n_frames)
    phi = torch.where(torch.isfinite(lone_phi), lone_phi, any_phi)
    return phi.nan_to_num(1.0).clamp_min(1.0)[frame]


def spike_statistic(mu: torch.Tensor, others: torch.Tensor, bg: torch.Tensor,
                    x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor, d: torch.Tensor,
                    gamma: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """2·(NLL_gauss − NLL_spike) of regions (not divided by φ), the Gaussian's NLL and the
    spike's amplitude (counts).

    Parameters
    ----------
    mu : (n, S, S) tensor
        The emitter's model (PSF + its background ``bg``), counts.
    others : (n, S, S) tensor
        The other emitters' models, counts.
    bg : (n,) tensor
        The emitter's background, counts per pixel.
    x, y : (n,) tensors
        The emitter's position relative to the region's corner, px.
    valid, d : (n, S, S) tensors
        Pixels inside the frame (1/0) and the data shifted by γ (counts).
    gamma : float
        Read-noise variance, counts².
    """
    n, size = mu.shape[0], mu.shape[-1]
    m_gauss = expected_data(mu, others, gamma)
    nll_gauss = poisson_nll(m_gauss, valid, d)
    base = expected_data(bg[:, None, None].expand_as(mu), others, gamma)
    # The brightest excess among the 3 × 3 pixels around the emitter's pixel: a hot pixel
    # lies under the emitter, a neighbour's unmodelled light elsewhere must not count.
    rows = (torch.floor(y).long()[:, None] + torch.arange(-1, 2)[None]).clamp(0, size - 1)
    cols = (torch.floor(x).long()[:, None] + torch.arange(-1, 2)[None]).clamp(0, size - 1)
    flat = (rows[:, :, None] * size + cols[:, None, :]).flatten(1)
    excess = ((d - base) * valid).flatten(1).gather(1, flat)
    best = flat.gather(1, excess.argmax(1, keepdim=True))[:, 0]
    amplitude = excess.amax(1).clamp_min(0.0)
    m_spike = base.flatten(1).clone()
    m_spike[torch.arange(n), best] += amplitude
    nll_spike = poisson_nll(m_spike.view_as(mu), valid, d)
    return 2.0 * (nll_gauss - nll_spike), nll_gauss, amplitude


def close_groups(frame: torch.Tensor, x: torch.Tensor, y: torch.Tensor, counts: torch.Tensor,
                 sigma: torch.Tensor, candidate: torch.Tensor,
                 bright_counts: float | None = None, scale: float = 1.0) -> torch.Tensor:
    """Group label (index of the group's lowest member) of each emitter: connected
    components among ``candidate`` emitters (others are alone) of "same frame, and closer
    than :data:`MERGE_SEPARATION_SIGMA` × their mean σ (at most
    :data:`MERGE_MAX_SEPARATION_PX`)" or, given ``bright_counts``, "closer than
    :data:`MERGE_SEPARATION_BRIGHT_SIGMA` × their mean σ (at most
    :data:`MERGE_MAX_SEPARATION_BRIGHT_PX`) and their ``counts`` summing to more than
    ``bright_counts``".

    Parameters
    ----------
    frame : (n,) int tensor
    x, y : (n,) tensors
        Frame pixel coordinates, px.
    counts : (n,) tensor
        Emitter counts.
    sigma : (n,) tensor
        PSF σ of each emitter, px.
    candidate : (n,) bool tensor
    bright_counts : float, optional
        Counts of the brightest spot the detector was trained on.
    scale : float
        Factor on every distance above.

    Pairs are found by a sweep over emitters sorted by (frame, x), one vectorised step per
    offset in that order, and labels by propagating the minimum."""
    wide = scale * MERGE_MAX_SEPARATION_BRIGHT_PX if bright_counts is not None else 0.0
    reach = max(scale * MERGE_MAX_SEPARATION_PX, wide)  # the sweep's bound on |Δx|
    bright_counts = math.inf if bright_counts is None else float(bright_counts)
    n = frame.numel()
    label = torch.arange(n)
    idx = torch.nonzero(candidate).squeeze(1)
    if idx.numel() < 2:
        return label
    xs = x[idx].double()
    order = torch.argsort(xs, stable=True)
    order = order[torch.argsort(frame[idx][order], stable=True)]
    s = idx[order]
    fs, xs, ys, ns = frame[s], x[s].double(), y[s].double(), counts[s].double()
    ss = sigma[s].double()
    pairs = []
    for k in range(1, s.numel()):
        near_x = (fs[k:] == fs[:-k]) & (xs[k:] - xs[:-k] < reach)
        if not near_x.any():
            break
        dist = torch.hypot(xs[k:] - xs[:-k], ys[k:] - ys[:-k])
        mean_sigma = 0.5 * (ss[k:] + ss[:-k])
        close = dist < scale * (MERGE_SEPARATION_SIGMA * mean_sigma).clamp(
            max=MERGE_MAX_SEPARATION_PX)
        bright = (dist < (scale * MERGE_SEPARATION_BRIGHT_SIGMA * mean_sigma).clamp(max=wide)) & \
            (ns[k:] + ns[:-k] > bright_counts)
        hit = near_x & (bright if math.isfinite(bright_counts) else close)
        i = torch.nonzero(hit).squeeze(1)
        pairs.append(torch.stack([s[i], s[i + k]]))
    if not pairs:
        return label
    a, b = torch.cat(pairs, 1)
    while True:
        low = torch.minimum(label[a], label[b])
        new = label.clone()
        new.scatter_reduce_(0, a, low, reduce="amin")
        new.scatter_reduce_(0, b, low, reduce="amin")
        new = new[new]  # pointer jumping: a label's own label
        if torch.equal(new, label):
            return label
        label = new


def merge_copies(label: torch.Tensor, params, corners, gather, total: torch.Tensor,
                 phi: torch.Tensor, gamma: float, size: int, llr_min: float,
                 sigma_bounds: tuple[float, float], fit_sigma: bool, shape: tuple[int, int]):
    """Merge test of the groups of ``label`` (:func:`close_groups`); updates ``params``
    (x, y, N, b, σ: region coordinates, counts, counts/px, px) and ``total`` (the canvas of
    every emitter's PSF) in place.

    Each group is represented by its brightest member (the anchor): its region, with the
    other emitters' models fixed, is fitted as one emitter (x, y, N, b; σ the members'
    photon-weighted σ, within ``sigma_bounds``) and compared with the group's refined models
    (plus the anchor's background). Where 2·(NLL₁ − NLL_group)/φ < ``llr_min`` (φ: ``phi`` of the
    anchor), the fit lies inside the frame and within MERGE_MAX_SEPARATION_BRIGHT_PX of its
    start, the anchor takes the single fit and the other members are removed.

    Returns
    -------
    dropped : (n,) bool tensor, the members removed
    merged : (n,) bool tensor, the anchors that absorbed a group
    """
    x, y, N, b, sig = params
    c0, r0 = corners
    n = label.numel()
    dropped = torch.zeros(n, dtype=torch.bool)
    merged = torch.zeros(n, dtype=torch.bool)
    sizes = torch.bincount(label, minlength=n)
    member = torch.nonzero(sizes[label] > 1).squeeze(1)
    if member.numel() == 0:
        return dropped, merged
    # Anchor of each group: its brightest member (ties: the lowest index).
    brightest = torch.full((n,), -math.inf).scatter_reduce_(0, label[member], N[member],
                                                            reduce="amax")
    is_top = N[member] >= brightest[label[member]]
    anchor_of = torch.full((n,), n, dtype=torch.long)
    anchor_of.scatter_reduce_(0, label[member[is_top]], member[is_top], reduce="amin")
    anchors = torch.unique(anchor_of[label[member]])
    slot = torch.full((n,), -1, dtype=torch.long)
    slot[anchors] = torch.arange(anchors.numel())
    a_of_m = anchor_of[label[member]]
    g_of_m = slot[a_of_m]
    # The members' models in their anchor's region (positions shifted to its corner).
    mx = x[member] + (c0[member] - c0[a_of_m]).float()
    my = y[member] + (r0[member] - r0[a_of_m]).float()
    zero = torch.zeros(member.numel())
    psf_m, _ = gaussian_model(torch.stack([mx, my, N[member], zero, sig[member]], 1), size,
                              jacobian=False)
    group_psf = torch.zeros(anchors.numel(), size, size).index_add_(0, g_of_m, psf_m)
    own_m, _ = gaussian_model(torch.stack([x[member], y[member], N[member], zero, sig[member]],
                                          1), size, jacobian=False)
    flat_m = gather(member)[0]
    flat, _, valid, d = gather(anchors)
    without = total.clone().index_add_(0, flat_m.flatten(), -own_m.flatten())
    others = without[flat]
    ba = b[anchors]
    nll_group = poisson_nll(expected_data(group_psf + ba[:, None, None], others, gamma), valid, d)
    # Single emitter: photon-weighted mean position, summed photons, σ weighted alike.
    weight = torch.zeros(anchors.numel()).index_add_(0, g_of_m, N[member])
    sx = torch.zeros(anchors.numel()).index_add_(0, g_of_m, N[member] * mx) / weight
    sy = torch.zeros(anchors.numel()).index_add_(0, g_of_m, N[member] * my) / weight
    ss = torch.zeros(anchors.numel()).index_add_(0, g_of_m, N[member] * sig[member]) / weight
    # σ stays the members' (photon-weighted): copies of one spot share it, while a free σ
    # would widen until one emitter covers two real ones 0.9 px apart (review 16: bright
    # pairs merged, recall 0.96 → 0.50).
    start = torch.stack([sx, sy, weight, ba], 1)
    th, nll1, _ = fit_regions(start, fixed_sigma_model(ss, size), others, valid, d, gamma, [2],
                              MERGE_ITERATIONS)
    s1 = ss.clamp(*sigma_bounds) if fit_sigma else ss
    h, w = shape
    xa, ya = c0[anchors].double() + th[:, 0].double(), r0[anchors].double() + th[:, 1].double()
    ok = (2.0 * (nll1 - nll_group) / phi[anchors] < llr_min) & torch.isfinite(th).all(1) & \
        torch.isfinite(nll1) & \
        (torch.hypot(th[:, 0] - sx, th[:, 1] - sy) <= MERGE_MAX_SEPARATION_BRIGHT_PX) & \
        (xa >= 0) & (xa < w) & (ya >= 0) & (ya < h)
    take = anchors[ok]
    gone = member[ok[g_of_m] & (member != a_of_m)]
    dropped[gone] = True
    merged[take] = True
    # The canvas: the merged groups' members out, their single emitters in.
    sel_m = ok[g_of_m]
    total.index_add_(0, flat_m[sel_m].flatten(), -own_m[sel_m].flatten())
    x[take], y[take], N[take], b[take] = th[ok, 0], th[ok, 1], th[ok, 2], th[ok, 3]
    sig[take] = s1[ok]
    new, _ = gaussian_model(torch.stack([x[take], y[take], N[take], torch.zeros(take.numel()),
                                         sig[take]], 1), size, jacobian=False)
    total.index_add_(0, flat[ok].flatten(), new.flatten())
    return dropped, merged


def merge_rounds(frame: torch.Tensor, candidate: torch.Tensor, bright_counts: float | None,
                 params, corners, gather, total: torch.Tensor, phi: torch.Tensor, gamma: float,
                 size: int, llr_min: float, sigma_bounds: tuple[float, float], fit_sigma: bool,
                 shape: tuple[int, int], report=None):
    """:data:`MERGE_ROUNDS` rounds of :func:`close_groups` and :func:`merge_copies` over the
    ``candidate`` emitters: after each, the members of the groups that were not merged are
    grouped again with half the reach and tested again. Emitters are grouped at ``report``
    (x, y in region coordinates, px; default their fitted positions). Arguments otherwise as
    those functions'; returns the masks (dropped, merged)."""
    x, y, N, _, sig = params
    gx, gy = report if report is not None else (x, y)
    c0, r0 = corners
    n = frame.numel()
    dropped = torch.zeros(n, dtype=torch.bool)
    merged = torch.zeros(n, dtype=torch.bool)
    for r in range(MERGE_ROUNDS):
        if candidate.sum() < 2:
            break
        xa, ya = c0.double() + gx.double(), r0.double() + gy.double()
        label = close_groups(frame, xa, ya, N, sig, candidate, bright_counts, 0.5 ** r)
        gone, took = merge_copies(label, params, corners, gather, total, phi, gamma, size,
                                  llr_min, sigma_bounds, fit_sigma, shape)
        dropped |= gone
        merged |= took
        sizes = torch.bincount(label, minlength=n)
        candidate = (sizes[label] > 1) & ~gone & ~took
    return dropped, merged


def narrow_spike(rows: torch.Tensor, params, gather, total: torch.Tensor, gamma: float,
                 size: int, n: int, phi: torch.Tensor) -> torch.Tensor:
    """(n,) mask: the emitters ``rows`` whose region a spike still explains better, by
    2·ΔNLL/φ ≥ :data:`SPIKE_LLR`, than a Gaussian of σ :data:`SPIKE_SIGMA_PX` refitted
    (x, y, N, b; the other emitters fixed) from the emitter's estimate ``params``
    (x, y, N, b, σ: region coordinates, counts, counts/px, px)."""
    out = torch.zeros(n, dtype=torch.bool)
    if rows.numel() == 0:
        return out
    x, y, N, b, sig = params
    flat, _, valid, d = gather(rows)
    zero = torch.zeros(rows.numel())
    own, _ = gaussian_model(torch.stack([x[rows], y[rows], N[rows], zero, sig[rows]], 1), size,
                            jacobian=False)
    others = total[flat] - own
    one = fixed_sigma_model(torch.full((rows.numel(),), SPIKE_SIGMA_PX), size)
    th, _, _ = fit_regions(torch.stack([x[rows], y[rows], N[rows], b[rows]], 1), one, others,
                           valid, d, gamma, [2], MERGE_ITERATIONS)
    mu, _ = one(th, False)
    stat, _, _ = spike_statistic(mu, others, th[:, 3], th[:, 0], th[:, 1], valid, d, gamma)
    out[rows] = stat / phi[rows] >= SPIKE_LLR
    return out
