"""The one-sided photon prior of :func:`stormfold.localize.likelihood.fit_regions` (the
split test's pair fit), against a posterior maximised by scipy on a model written from
the normal CDF."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import norm

from stormfold.localize.classic.fit import gaussian_model
from stormfold.localize.likelihood import fit_regions

SIZE, SIGMA, GAMMA = 9, 1.2, 0.0


def _expected(theta):
    """(x, y, N, b) → expected counts of a SIZE×SIZE region (pixel c spans [c, c+1))."""
    x, y, n, b = theta
    edges = np.arange(SIZE + 1.0)
    ex = np.diff(norm.cdf((edges - x) / SIGMA))
    ey = np.diff(norm.cdf((edges - y) / SIGMA))
    return n * np.outer(ey, ex) + b


def _fit(data, start, prior, iterations=60):
    def model(t, jacobian):
        mu, jac = gaussian_model(torch.cat([t, torch.full((t.shape[0], 1), SIGMA)], 1), SIZE,
                                 jacobian=jacobian)
        return mu, (jac[:, :4] if jacobian else None)

    d = torch.as_tensor(data, dtype=torch.float32)[None]
    theta = torch.tensor([start], dtype=torch.float32)
    prior_t = None if prior is None else (torch.tensor([prior[0]]), torch.tensor([prior[1]]))
    th, nll, _ = fit_regions(theta, model, torch.zeros_like(d), torch.ones_like(d), d, GAMMA,
                             [2], iterations, prior=prior_t)
    return th[0].double().numpy(), float(nll[0])


def _posterior_optimum(data, start, prior):
    mean, precision = prior

    def objective(t):
        m = _expected(t)
        return (m - data * np.log(m)).sum() + 0.5 * precision * max(t[2] - mean, 0.0) ** 2

    return minimize(objective, np.asarray(start, float), method="Nelder-Mead",
                    options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 20000}).x


def test_zero_precision_is_the_maximum_likelihood_fit():
    data = np.random.default_rng(0).poisson(_expected((4.3, 4.6, 3000.0, 5.0)))
    start = [4.5, 4.5, 2500.0, 4.0]
    a, nll_a = _fit(data, start, None)
    b, nll_b = _fit(data, start, (2000.0, 0.0))
    assert np.array_equal(a, b) and nll_a == nll_b


def test_a_spot_brighter_than_the_prior_mean_is_pulled_to_the_posterior_optimum():
    data = np.random.default_rng(1).poisson(_expected((4.3, 4.6, 3000.0, 5.0)))
    start, prior = [4.5, 4.5, 2500.0, 4.0], (2000.0, 1.0 / 100.0 ** 2)
    got, _ = _fit(data, start, prior)
    want = _posterior_optimum(data, start, prior)
    mle, _ = _fit(data, start, None)
    assert got[2] < mle[2] - 100  # the prior matters here, and its optimum is scipy's
    assert abs(got[2] - want[2]) < 1.0 and np.abs(got[:2] - want[:2]).max() < 1e-3
    assert abs(got[3] - want[3]) < 0.05


def test_a_spot_dimmer_than_the_prior_mean_is_not_pulled():
    data = np.random.default_rng(2).poisson(_expected((4.3, 4.6, 1200.0, 5.0)))
    start = [4.5, 4.5, 1000.0, 4.0]
    got, nll = _fit(data, start, (2000.0, 1.0 / 300.0 ** 2))
    mle, nll_mle = _fit(data, start, None)
    assert np.allclose(got, mle) and abs(nll - nll_mle) < 1e-3


def test_the_returned_nll_leaves_the_prior_out():
    data = np.random.default_rng(3).poisson(_expected((4.3, 4.6, 3000.0, 5.0)))
    got, nll = _fit(data, [4.5, 4.5, 2500.0, 4.0], (2000.0, 1.0 / 300.0 ** 2))
    m = _expected(got)
    ref = (m - data * np.log(m)).sum()
    # With the prior included it would be 0.5·(N − 2000)²/300² ≈ 5 larger.
    assert abs(nll - ref) < 1e-5 * abs(ref) + 0.01
