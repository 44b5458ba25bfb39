"""The refinement's merge test and PSF-shape test (stormfold.localize.merge): copies of a
bright spot become one emitter, a one-pixel spike (an sCMOS hot pixel) is dropped, and real
emitters (close pairs, narrow PSFs) stay."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_refine import expected_counts, poisson_frames

from stormfold.localize.merge import close_groups, spike_statistic
from stormfold.localize.refine import RefineOptions, refine_localizations

#: Eight isolated emitters (px) that give a frame its dispersion and σ.
SINGLES_X = np.array([6.3, 18.6, 30.2, 42.4, 6.7, 18.1, 30.5, 42.2])
SINGLES_Y = np.array([6.4, 6.7, 6.2, 6.5, 42.3, 42.6, 42.1, 42.7])


def _refine(frames, frame, x, y, counts, bright_counts=None, **kw):
    t = lambda v, dt=torch.float64: torch.as_tensor(np.asarray(v), dtype=dt)  # noqa: E731
    unc = np.full(len(x), 0.3)
    return refine_localizations(t(frames, torch.float32), t(frame, torch.long), t(x), t(y),
                                t(counts, torch.float32), t(unc), t(unc), 0.0,
                                RefineOptions(method="mle", **kw), sigma_range_px=(0.7, 2.0),
                                bright_counts=bright_counts)


def _scene(rng, xt, yt, nt, starts, sigma=1.3, bg=30.0, frames=4):
    """Poisson frames of the singles plus (xt, yt, nt), and starts: the singles near their
    truth, then ``starts`` = (x, y, counts) of the tested emitters."""
    sx, sy, sn = starts
    n_single = len(SINGLES_X)
    fx, fy = np.r_[SINGLES_X, xt], np.r_[SINGLES_Y, yt]
    counts = np.r_[np.linspace(1500.0, 2200.0, n_single), nt]
    data = np.concatenate([poisson_frames(rng, (48, 48), np.zeros(len(fx), int), fx, fy, counts,
                                          sigma, bg) for _ in range(frames)])
    one = (np.r_[SINGLES_X + 0.05, sx], np.r_[SINGLES_Y - 0.05, sy],
           np.r_[np.full(n_single, 1800.0), sn])
    frame = np.repeat(np.arange(frames), len(one[0]))
    return data, frame, *(np.tile(v, frames) for v in one)


def test_two_copies_of_a_bright_spot_10_nm_apart_become_one():
    # A 40,000-photon spot reported as two copies of 20,000 photons 0.1 px apart (10 nm at
    # 100 nm pixels), as the detector reports an emitter beyond its training photons.
    rng = np.random.default_rng(3)
    data, frame, x, y, n = _scene(rng, [24.3], [24.6], [40000.0],
                                  ([24.25, 24.35], [24.6, 24.6], [20000.0, 20000.0]))
    res = _refine(data, frame, x, y, n)
    copies = np.tile(np.r_[np.zeros(8, bool), True, True], 4)
    assert not res.dropped[~torch.as_tensor(copies)].any()
    dropped = res.dropped.numpy().reshape(4, 10)[:, 8:]
    assert (dropped.sum(1) == 1).all(), dropped
    kept = torch.as_tensor(copies) & ~res.dropped
    assert res.accepted[kept].all()
    np.testing.assert_allclose(res.counts[kept].numpy(), 40000.0, rtol=0.03)
    np.testing.assert_allclose(res.x_px[kept].numpy(), 24.3, atol=0.03)
    np.testing.assert_allclose(res.y_px[kept].numpy(), 24.6, atol=0.03)
    # Without the test both copies stay.
    off = _refine(data, frame, x, y, n, merge=False)
    assert not off.dropped.any()


def test_a_1500_photon_pair_1_px_apart_stays_two():
    rng = np.random.default_rng(4)
    xt, yt = np.array([23.8, 24.8]), np.array([24.5, 24.5])
    data, frame, x, y, n = _scene(rng, xt, yt, [1500.0, 1500.0],
                                  (xt + 0.05, yt - 0.05, [1500.0, 1500.0]))
    # Too far apart to be grouped (0.3 σ = 0.39 px; or 0.8 σ = 1.04 px → at most 1 px when
    # brighter together than a detector trained up to 2,000 photons).
    for bright in (None, 2000.0):
        res = _refine(data, frame, x, y, n, bright_counts=bright)
        assert not res.dropped.any()


def test_close_groups_known_answers():
    frame = torch.tensor([0, 0, 0, 0, 1, 1, 0])
    x = torch.tensor([1.0, 1.3, 1.6, 5.0, 1.1, 1.9, 5.7], dtype=torch.float64)
    y = torch.zeros(7, dtype=torch.float64)
    counts = torch.tensor([1e3, 1e3, 1e3, 1e3, 1e3, 1e3, 1e4])
    sigma = torch.full((7,), 1.2)
    everyone = torch.ones(7, dtype=torch.bool)
    # Without a photon range: a chain within 0.3 σ = 0.36 px joins; other frames and
    # distant emitters do not.
    assert close_groups(frame, x, y, counts, sigma, everyone).tolist() == [0, 0, 0, 3, 4, 5, 6]
    # Narrower PSFs group closer emitters only (0.3 σ = 0.24 px for σ 0.8 px).
    assert close_groups(frame, x, y, counts, torch.full((7,), 0.8), everyone).tolist() == \
        [0, 1, 2, 3, 4, 5, 6]
    # With a photon range: only pairs brighter together than its maximum, up to 0.8 σ.
    assert close_groups(frame, x, y, counts, sigma, everyone, 5000.0).tolist() == \
        [0, 1, 2, 3, 4, 5, 3]
    assert close_groups(frame, x, y, counts, sigma, everyone, 1500.0).tolist() == \
        [0, 0, 0, 3, 4, 4, 3]
    assert close_groups(frame, x, y, counts, sigma, everyone, 20000.0).tolist() == \
        [0, 1, 2, 3, 4, 5, 6]
    # Non-candidates stay alone.
    some = torch.tensor([True, False, True, True, True, True, True])
    assert close_groups(frame, x, y, counts, sigma, some).tolist() == [0, 1, 2, 3, 4, 5, 6]


def _region(mu_psf, bg, data):
    size = mu_psf.shape[-1]
    mu = torch.as_tensor(mu_psf + bg, dtype=torch.float32)[None]
    d = torch.as_tensor(data, dtype=torch.float32)[None]
    return mu, torch.zeros(1, size, size), torch.tensor([float(bg)]), torch.ones(1, size, size), d


def test_spike_statistic_known_answers():
    size, bg = 9, 30.0
    # A one-pixel spike of 800 counts on the background, fitted by a σ 0.7 px Gaussian
    # (its central pixel holds 27 % of its light): the spike model is exact.
    data = np.full((size, size), bg)
    data[4, 4] += 800.0
    gauss = expected_counts((size, size), [4.5], [4.5], [800.0], 0.7, 0.0)
    mu, others, b, valid, d = _region(gauss, bg, data)
    at = torch.tensor([4.5])
    stat, nll, amplitude = spike_statistic(mu, others, b, at, at, valid, d, 0.0)
    m = mu[0].double().numpy()
    assert nll.item() == pytest.approx((m - data * np.log(m)).sum(), rel=1e-5)
    # NLL_spike is that of the data itself (expected = data): the statistic is the deviance.
    saturated = (data - data * np.log(data)).sum()
    assert stat.item() == pytest.approx(2 * (nll.item() - saturated), rel=1e-4)
    assert stat.item() > 1000
    assert amplitude.item() == pytest.approx(800.0)
    # A σ 0.7 px emitter of 800 photons, noise-free: the spike is far worse.
    data = gauss + bg
    mu, others, b, valid, d = _region(gauss, bg, data)
    stat, _, amplitude = spike_statistic(mu, others, b, at, at, valid, d, 0.0)
    assert stat.item() < -500
    # The central pixel holds 27 % of the light (SPIKE_FRACTION = 0.5 also keeps it).
    assert amplitude.item() == pytest.approx(gauss[4, 4], rel=1e-4) and gauss[4, 4] < 0.28 * 800


def test_a_hot_pixel_is_dropped_and_narrow_emitters_stay():
    rng = np.random.default_rng(5)
    sigma, bg = 0.7, 30.0
    data, frame, x, y, n = _scene(rng, [], [], [], ([24.5], [24.5], [700.0]), sigma=sigma, bg=bg)
    data[:, 24, 24] += 700.0
    res = _refine(data, frame, x, y, n)
    hot = torch.as_tensor(np.tile(np.r_[np.zeros(8, bool), True], 4))
    assert res.dropped[hot].all()
    assert not res.dropped[~hot].any()
    assert res.accepted[~hot].all()
    off = _refine(data, frame, x, y, n, drop_spikes=False)
    assert not off.dropped.any()


@pytest.mark.parametrize("bad", [0, "yes", None])
def test_merge_and_drop_spikes_must_be_booleans(bad):
    from stormfold.errors import UserError

    for name in ("merge", "drop_spikes"):
        with pytest.raises(UserError, match=name):
            RefineOptions(method="mle", **{name: bad}).validate()


def test_the_generalist_reports_one_bright_emitter_and_no_hot_pixel():
    from stormfold.localize.registry import load_engine

    rng = np.random.default_rng(6)
    sx, sy = SINGLES_X, SINGLES_Y
    xt, yt = np.r_[sx, 24.3], np.r_[sy, 24.6]
    counts = np.r_[np.linspace(1500.0, 2200.0, 8), 40000.0]
    frames = np.stack([rng.poisson(expected_counts((48, 48), xt, yt, counts, 1.3, 30.0))
                       for _ in range(4)]).astype(np.float32)
    frames[:, 12, 36] += 1500.0  # a hot pixel, away from the emitters
    locs = {}
    for label, opts in (("off", {"merge": False, "drop_spikes": False}), ("on", {})):
        engine = load_engine(model="builtin:gridnet-generalist", options=opts)
        locs[label] = engine.process(frames, 0, 100.0).locs
    for label, table in locs.items():
        x, y = table["x_nm"].to_numpy() / 100.0, table["y_nm"].to_numpy() / 100.0
        at_bright = np.hypot(x - 24.3, y - 24.6) < 1.0
        at_hot = np.hypot(x - 36.5, y - 12.5) < 1.0
        if label == "off":  # the defects (review 14, D1 and D3)
            assert at_bright.sum() >= 8 and at_hot.sum() >= 2, (at_bright.sum(), at_hot.sum())
        else:
            assert at_bright.sum() == 4 and at_hot.sum() == 0, (at_bright.sum(), at_hot.sum())
            photons = table["photons"].to_numpy()[at_bright]
            np.testing.assert_allclose(photons, 40000.0, rtol=0.05)
            assert len(table) == 4 * 9
