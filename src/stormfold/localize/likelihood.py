"""Poisson likelihood of emitters in square regions, shared by the refinement and the
split test: the expected data with the other emitters' models and the read-noise shift,
the negative log-likelihood, the Fisher information, a damped Fisher-scoring step, a
Levenberg–Marquardt fit, and a median per group.

Data are *counts* (Poisson units) with Gaussian read noise of variance γ handled as in
:mod:`stormfold.localize.classic.fit` (the data and the model are both shifted by γ).
"""
from __future__ import annotations

import math

import torch

from stormfold.localize.classic.fit import gaussian_model

#: Emitters whose regions are gathered and fitted at once (bounds the per-emitter tensors,
#: about 10 kB each, whatever the number of emitters in a frame).
EMITTER_SLICE = 2 ** 14


def expected_data(mu, others, gamma):
    """Expected data of regions: the emitter's model, the others' and the γ shift (counts)."""
    return (mu + others + gamma).clamp_min(1e-6)


def poisson_nll(m, valid, d):
    """Poisson negative log-likelihood of each region (up to a constant), m = expected."""
    return (valid * (m - d * torch.log(m))).flatten(1).sum(1)


def region_information(jac, m, valid):
    """Fisher information Σ ∂μ ∂μᵀ / m of each region (n, p, p), with the flattened
    Jacobian (n, p, pixels) and the weights valid / m (n, pixels) it was built from."""
    jf = jac.flatten(2)
    wgt = (valid / m).flatten(1)
    return jf, wgt, torch.bmm(jf * wgt[:, None, :], jf.transpose(1, 2))


def scoring_step(jf, wgt, info, d, m, lam, prior_grad=None):
    """Damped Fisher-scoring (Levenberg–Marquardt) step of each region (n, p). With a prior,
    ``prior_grad`` (n, p), its log-density's gradient, is added to the likelihood's, and
    ``info`` holds the prior's curvature too (the caller adds it)."""
    grad = torch.bmm(jf, (wgt * (d - m).flatten(1))[:, :, None])[:, :, 0]
    if prior_grad is not None:
        grad = grad + prior_grad
    diag = torch.diagonal(info, dim1=1, dim2=2)
    step, _ = torch.linalg.solve_ex(info + torch.diag_embed(lam[:, None] * diag + 1e-9),
                                    grad[:, :, None])
    return step[:, :, 0]


def group_median(values: torch.Tensor, group: torch.Tensor, mask: torch.Tensor,
                 n_groups: int) -> torch.Tensor:
    """Lower median of ``values[mask]`` in each group (e.g. a frame; NaN for a group
    without any)."""
    v, f = values[mask], group[mask]
    out = torch.full((n_groups,), math.nan, dtype=values.dtype)
    if v.numel() == 0:
        return out
    order = torch.argsort(v, stable=True)
    order = order[torch.argsort(f[order], stable=True)]  # by group, then by value
    counts = torch.bincount(f, minlength=n_groups)
    starts = torch.cumsum(counts, 0) - counts
    has = counts > 0
    out[has] = v[order][starts[has] + (counts[has] - 1) // 2]
    return out


def fit_regions(theta, model, others, valid, d, gamma, counts_at, iterations, prior=None):
    """Levenberg–Marquardt (Fisher scoring) of ``model`` on regions; returns the estimate,
    its negative log-likelihood and its Fisher information.

    ``prior`` = (mean, precision), tensors (n,): a one-sided Gaussian prior on every
    parameter of ``counts_at`` (the photons), penalising ½·precision·(N − mean)² where
    N > mean, so that the fit maximises the posterior; dimmer is not penalised (precision
    0: no prior). The returned negative log-likelihood and information are the
    likelihood's alone.
    """
    prec = torch.zeros_like(theta)
    mean = torch.zeros_like(theta)
    if prior is not None:
        mean[:, counts_at] = prior[0][:, None].to(theta)
        prec[:, counts_at] = prior[1][:, None].to(theta)

    def excess(t):
        return (t - mean).clamp_min(0.0)

    def penalty(t):
        return 0.5 * (prec * excess(t) ** 2).sum(1)

    def nll(mu):
        m = expected_data(mu, others, gamma)
        return poisson_nll(m, valid, d), m

    mu, jac = model(theta, True)
    cur, m = nll(mu)
    cur = cur + penalty(theta)
    lam = torch.full((theta.shape[0],), 1e-2)
    for _ in range(iterations):
        jf, wgt, info = region_information(jac, m, valid)
        curvature = torch.where(theta > mean, prec, torch.zeros_like(prec))
        step = scoring_step(jf, wgt, info + torch.diag_embed(curvature), d, m, lam,
                            -prec * excess(theta))
        trial = theta + step
        trial[:, counts_at] = trial[:, counts_at].clamp_min(1.0)
        mu_t, jac_t = model(trial, True)
        new, m_t = nll(mu_t)
        new = new + penalty(trial)
        ok = torch.isfinite(new) & torch.isfinite(trial).all(1) & (new <= cur)
        theta = torch.where(ok[:, None], trial, theta)
        jac = torch.where(ok[:, None, None, None], jac_t, jac)
        m = torch.where(ok[:, None, None], m_t, m)
        cur = torch.where(ok, new, cur)
        lam = torch.where(ok, lam * 0.3, lam * 10.0).clamp(1e-6, 1e6)
    return theta, cur - penalty(theta), region_information(jac, m, valid)[2]


def fixed_sigma_model(sigma_px: torch.Tensor, size: int):
    """The model of :func:`fit_regions` for one emitter per region fitted in (x, y, N, b)
    with its σ held at ``sigma_px`` (one per region, px)."""
    def one(t, jacobian):
        mu, jac = gaussian_model(torch.cat([t, sigma_px[:, None]], 1), size, jacobian=jacobian)
        return mu, (jac[:, :4] if jacobian else None)
    return one


def deviance_ratio(nll: torch.Tensor, d: torch.Tensor, valid: torch.Tensor,
                   n_par: int) -> torch.Tensor:
    """Deviance per degree of freedom of regions: 2·(NLL − NLL_saturated)/(pixels − n_par),
    the saturated model being expected = data (0·log 0 = 0)."""
    saturated = (valid * (d - torch.xlogy(d, d))).flatten(1).sum(1)
    dof = (valid.flatten(1).sum(1) - n_par).clamp_min(1)
    return 2.0 * (nll - saturated) / dof
