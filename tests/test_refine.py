"""Joint Poisson-MLE refinement of localizations (stormfold.localize.refine).

The expected counts are computed here with scipy's normal CDF and the Fisher information
by finite differences, independently of the torch model the refinement uses.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from stormfold.errors import UserError
from stormfold.localize import likelihood as likelihood_mod
from stormfold.localize import refine as refine_mod
from stormfold.localize import split as split_mod
from stormfold.localize.refine import RefineOptions, refine_localizations


def expected_counts(shape, x_px, y_px, counts, sigma_px, bg):
    """Σ_i N_i ∫pixel Gaussian_i + bg over a (rows, cols) frame (pixel (r, c) spans
    [c, c+1) × [r, r+1))."""
    rows, cols = shape
    cx = np.arange(cols + 1)[None, :] - np.asarray(x_px)[:, None]
    cy = np.arange(rows + 1)[None, :] - np.asarray(y_px)[:, None]
    s = np.asarray(sigma_px, float).reshape(-1, 1) * np.ones((len(x_px), 1))
    ex = np.diff(norm.cdf(cx / s), axis=1)
    ey = np.diff(norm.cdf(cy / s), axis=1)
    return bg + np.einsum("n,nr,nc->rc", np.asarray(counts, float), ey, ex)


def poisson_frames(rng, shape, frame, x_px, y_px, counts, sigma_px, bg):
    """Poisson-noisy frames (n, rows, cols) of the emitters of each ``frame`` index (0 … n−1),
    float32."""
    frame, counts = np.asarray(frame), np.broadcast_to(np.asarray(counts, float), frame.shape)
    return np.stack([rng.poisson(expected_counts(shape, x_px[frame == f], y_px[frame == f],
                                                 counts[frame == f], sigma_px, bg))
                     for f in range(int(frame.max()) + 1)]).astype(np.float32)


def crlb_xy(x, y, counts, sigma, bg, size=15, h=1e-4):
    """√(CRLB_x + CRLB_y) of one emitter alone (x, y, N, b free), Poisson data."""
    theta = np.array([x, y, counts, bg], float)

    def mu(t):
        return expected_counts((size, size), [t[0]], [t[1]], [t[2]], sigma, t[3]).ravel()

    m = mu(theta)
    jac = []
    for k in range(4):
        step = np.zeros(4)
        step[k] = h * max(1.0, abs(theta[k]))
        jac.append((mu(theta + step) - mu(theta - step)) / (2 * step[k]))
    jac = np.array(jac)
    cov = np.linalg.inv((jac / m) @ jac.T)
    return float(np.sqrt(cov[0, 0] + cov[1, 1]))


def _run(frames, frame, x, y, counts, unc, sigma_px=None, **kw):
    opts = RefineOptions(method="mle", **kw)
    t = lambda v, dt=torch.float64: torch.as_tensor(np.asarray(v), dtype=dt)  # noqa: E731
    return refine_localizations(t(frames, torch.float32), t(frame, torch.long), t(x), t(y),
                                t(counts, torch.float32), t(unc), t(unc), 0.0, opts,
                                sigma_px=sigma_px, sigma_range_px=(0.7, 2.0))


def test_isolated_emitters_reach_the_cramer_rao_bound():
    rng = np.random.default_rng(3)
    n_frames, per_frame, size = 40, 9, 48
    sigma, counts, bg = 1.1, 1500.0, 10.0
    # A 3 × 3 grid of emitters 15 px apart per frame, each at a random sub-pixel position.
    gx, gy = np.meshgrid(np.arange(3) * 15 + 9.0, np.arange(3) * 15 + 9.0)
    xt = (gx.ravel()[None] + rng.uniform(0, 1, (n_frames, per_frame))).ravel()
    yt = (gy.ravel()[None] + rng.uniform(0, 1, (n_frames, per_frame))).ravel()
    frame = np.repeat(np.arange(n_frames), per_frame)
    frames = poisson_frames(rng, (size, size), frame, xt, yt, counts, sigma, bg)
    # Starts off by 0.3 px, as a detector's estimate might be.
    x0, y0 = xt + 0.3, yt - 0.2
    for sigma_px in (sigma, None):  # σ known, and fitted per emitter
        res = _run(frames, frame, x0, y0, [1000.0] * len(xt), [0.5] * len(xt), sigma_px)
        assert bool(res.accepted.all())
        err = np.hypot(res.x_px.numpy() - xt, res.y_px.numpy() - yt)
        rmse = float(np.sqrt(np.mean(err ** 2)))
        bound = crlb_xy(7.3, 7.6, counts, sigma, bg)
        assert rmse <= 1.2 * bound, (sigma_px, rmse, bound)
        assert abs(np.mean(res.x_px.numpy() - xt)) < 0.3 * bound
        assert np.median(res.counts.numpy()) == pytest.approx(counts, rel=0.05)
        assert np.median(res.bg.numpy()) == pytest.approx(bg, rel=0.15)
        if sigma_px is None:
            assert np.median(res.sigma_px.numpy()) == pytest.approx(sigma, rel=0.03)


def test_overlapping_pair_is_fitted_jointly():
    # Noise-free data: the maximum likelihood is the truth exactly.
    sigma = 1.0
    xt, yt, nt = np.array([10.3, 12.1]), np.array([10.6, 11.4]), np.array([2000.0, 1500.0])
    frames = expected_counts((24, 24), xt, yt, nt, sigma, 5.0)[None].astype(np.float32)
    x0, y0 = xt + np.array([0.25, -0.2]), yt + np.array([-0.15, 0.2])
    res = _run(frames, [0, 0], x0, y0, [1700.0, 1700.0], [0.5, 0.5], sigma, iterations=60)
    assert np.abs(res.x_px.numpy() - xt).max() < 0.02
    assert np.abs(res.y_px.numpy() - yt).max() < 0.02
    np.testing.assert_allclose(res.counts.numpy(), nt, rtol=0.02)
    # Without its neighbour in the model, the first emitter's fit is pulled towards it.
    alone = _run(frames, [0], x0[:1], y0[:1], [1700.0], [0.5], sigma, iterations=60)
    assert np.hypot(alone.x_px.numpy() - xt[0], alone.y_px.numpy() - yt[0]).max() > 0.1


def test_guard_keeps_the_detector_estimate_when_the_fit_runs_away():
    frames = expected_counts((24, 24), [12.0], [12.0], [2000.0], 1.0, 5.0)[None].astype(np.float32)
    # The detector put an emitter 2.5 px from the only spot, with an uncertainty of 0.1 px:
    # the fit climbs to the spot (25 uncertainties away) and is refused.
    res = _run(frames, [0], [14.5], [12.0], [2000.0], [0.1], 1.0)
    assert not bool(res.accepted[0])
    assert res.x_px.item() == 14.5 and res.y_px.item() == 12.0
    assert res.counts.item() == 2000.0
    # With a large uncertainty the same fit is accepted at the spot.
    res = _run(frames, [0], [13.0], [12.0], [2000.0], [1.0], 1.0, iterations=30)
    assert bool(res.accepted[0]) and abs(res.x_px.item() - 12.0) < 0.02


def test_chunks_of_frames_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(5)
    xt = rng.uniform(4, 28, 30)
    yt = rng.uniform(4, 28, 30)
    frame = np.repeat(np.arange(6), 5)
    frames = poisson_frames(rng, (32, 32), frame, xt, yt, 1500.0, 1.2, 8.0)
    whole = _run(frames, frame, xt + 0.2, yt, [1500.0] * 30, [0.4] * 30)
    monkeypatch.setattr(refine_mod, "REFINE_CHUNK_PIXELS", 1)  # one frame per chunk
    chunked = _run(frames, frame, xt + 0.2, yt, [1500.0] * 30, [0.4] * 30)
    monkeypatch.setattr(refine_mod, "REFINE_CHUNK_PIXELS", 2 ** 22)
    for module in (refine_mod, split_mod):  # emitters of a frame apart
        monkeypatch.setattr(module, "EMITTER_SLICE", 4)
    sliced = _run(frames, frame, xt + 0.2, yt, [1500.0] * 30, [0.4] * 30)
    # Each frame's emitters see only their own frame, and a sweep updates every slice
    # against the same models: chunks and slices change nothing but the float32
    # summation order.
    for other in (chunked, sliced):
        assert torch.equal(other.accepted, whole.accepted)
        for field in ("x_px", "y_px"):
            torch.testing.assert_close(getattr(other, field), getattr(whole, field), rtol=0,
                                       atol=1e-4)
        torch.testing.assert_close(other.counts, whole.counts, rtol=1e-4, atol=0)


def test_an_emitter_without_finite_start_is_left_out_and_does_not_stop_its_neighbour():
    frames = expected_counts((24, 24), [10.3, 12.1], [10.6, 11.4], [2000.0, 1500.0], 1.0,
                             5.0)[None].astype(np.float32)
    res = _run(frames, [0, 0, 0], [10.5, 12.1, np.nan], [10.5, 11.4, 5.0],
               [1700.0, np.nan, 1000.0], [0.5, 0.5, 0.5], 1.0, iterations=30)
    assert res.accepted.tolist() == [True, False, False]
    assert np.isnan(res.counts[1].item()) and np.isnan(res.x_px[2].item())
    # The first emitter is fitted with the second left out of the model: it moves towards
    # the pair's joint centre of mass, not stuck at its start.
    assert abs(res.x_px[0].item() - 10.5) > 0.05


def test_no_localizations_and_method_none_return_the_input():
    frames = np.zeros((2, 16, 16), np.float32)
    empty = _run(frames, [], [], [], [], [])
    assert empty.x_px.numel() == 0
    t = torch.tensor
    res = refine_localizations(torch.zeros(1, 16, 16), t([0]), t([5.5], dtype=torch.float64),
                               t([6.5], dtype=torch.float64), t([100.0]), t([0.1]), t([0.1]),
                               0.0, RefineOptions())
    assert res.x_px.item() == 5.5 and not bool(res.accepted[0])


def _pair_among_singles(split_llr):
    """Eight isolated emitters and, alone in its region, a pair 1.3 px apart started as one
    emitter at its centre of mass (noise-free data)."""
    sigma, bg = 1.1, 5.0
    gx, gy = np.meshgrid([8.3, 20.6, 32.2], [8.7, 20.1, 32.4])
    singles_x, singles_y = gx.ravel()[:8], gy.ravel()[:8]
    pair_x, pair_y, pair_n = np.array([31.7, 32.9]), np.array([32.0, 32.5]), np.array([2000.0, 1500.0])
    xt = np.r_[singles_x, pair_x]
    yt = np.r_[singles_y, pair_y]
    # The singles' photons vary as real emitters' do: with eight identical ones the split
    # test's photon prior (the frame's median ± 5 %) would pull the pair's brighter member.
    nt = np.r_[np.linspace(1500.0, 2200.0, 8), pair_n]
    frames = expected_counts((42, 42), xt, yt, nt, sigma, bg)[None].astype(np.float32)
    centre_x = np.average(pair_x, weights=pair_n)
    centre_y = np.average(pair_y, weights=pair_n)
    x0, y0 = np.r_[singles_x + 0.1, centre_x], np.r_[singles_y - 0.1, centre_y]
    res = _run(frames, [0] * 9, x0, y0, [1800.0] * 8 + [3500.0], [1.0] * 9, None,
               split_llr=split_llr)
    return res, (singles_x, singles_y), (pair_x, pair_y, pair_n)


def test_a_lone_pair_reported_as_one_emitter_is_split():
    res, (sx, sy), (px, py, pn) = _pair_among_singles(30.0)
    assert res.split.tolist() == [False] * 8 + [True]
    np.testing.assert_allclose(res.x_px[:8].numpy(), sx, atol=0.02)
    got = np.array([[res.x_px[8].item(), res.y_px[8].item(), res.counts[8].item()],
                    [res.x2_px[8].item(), res.y2_px[8].item(), res.counts2[8].item()]])
    got = got[np.argsort(got[:, 0])]
    np.testing.assert_allclose(got[:, :2], np.c_[px, py], atol=0.03)
    np.testing.assert_allclose(got[:, 2], pn, rtol=0.03)
    assert np.isfinite(res.crlb2_x_px2[8].item()) and res.crlb2_x_px2[8].item() > 0
    assert np.isnan(res.x2_px[:8].numpy()).all()
    # split_llr = 0 keeps one emitter, pulled between the two.
    res0, _, _ = _pair_among_singles(0.0)
    assert not bool(res0.split.any())
    assert px[0] < res0.x_px[8].item() < px[1]


def test_a_frame_with_too_few_lone_emitters_is_not_tested():
    """A pair alone in its frame would set the frame's σ and dispersion itself."""
    sigma, bg = 1.1, 5.0
    xt, yt, nt = np.array([11.7, 12.9, 30.2]), np.array([12.0, 12.5, 30.4]), [2000.0, 1500.0, 1800.0]
    frames = expected_counts((42, 42), xt, yt, nt, sigma, bg)[None].astype(np.float32)
    starts = ([np.average(xt[:2], weights=nt[:2]), 30.3], [np.average(yt[:2], weights=nt[:2]), 30.3])
    # Even with σ known, one other lone emitter is too few to judge the frame's dispersion.
    res = _run(frames, [0, 0], *starts, [3500.0, 1800.0], [1.0, 1.0], sigma, split_llr=30.0)
    assert bool(res.accepted.all()) and not bool(res.split.any())
    # With two more singles in the frame the same pair is split.
    xt4, yt4 = np.r_[xt, 5.3, 36.6], np.r_[yt, 36.2, 6.1]
    frames = expected_counts((42, 42), xt4, yt4, nt + [1700.0, 1900.0], sigma, bg)[None].astype(np.float32)
    res = _run(frames, [0] * 4, starts[0] + [5.3, 36.6], starts[1] + [36.2, 6.1],
               [3500.0, 1800.0, 1700.0, 1900.0], [1.0] * 4, sigma, split_llr=30.0)
    assert res.split.tolist() == [True, False, False, False]


def test_single_emitters_with_poisson_noise_are_not_split():
    rng = np.random.default_rng(8)
    n_frames, size = 30, 48
    gx, gy = np.meshgrid(np.arange(3) * 15 + 9.0, np.arange(3) * 15 + 9.0)
    xt = (gx.ravel()[None] + rng.uniform(0, 1, (n_frames, 9))).ravel()
    yt = (gy.ravel()[None] + rng.uniform(0, 1, (n_frames, 9))).ravel()
    counts = rng.uniform(300, 5000, xt.size)
    frame = np.repeat(np.arange(n_frames), 9)
    frames = poisson_frames(rng, (size, size), frame, xt, yt, counts, 1.2, 20.0)
    res = _run(frames, frame, xt + 0.2, yt - 0.1, counts, [0.5] * xt.size)
    assert bool(res.accepted.all())
    assert int(res.split.sum()) == 0


def _pairs_next_to_singles(split_neighbours):
    """Four lone single emitters, and three merged pairs (1.3 px apart, started as one
    emitter at the centre of mass) each 2.6 px from a single emitter, so that pair and single
    share their regions (noise-free data, σ known)."""
    sigma, bg = 1.1, 5.0
    lone_x, lone_y = np.array([6.3, 36.2, 6.6, 36.4]), np.array([6.2, 6.7, 36.1, 36.5])
    near_x, near_y = np.array([12.4, 21.2, 24.7]), np.array([14.3, 22.6, 35.8])
    pair_dx, pair_dy = np.array([-0.6, 0.7]), np.array([-0.3, 0.2])
    pair_n = np.array([2000.0, 1500.0])
    cx, cy = near_x + 2.6, near_y + 0.5
    xt = np.r_[lone_x, near_x, (cx[:, None] + pair_dx).ravel()]
    yt = np.r_[lone_y, near_y, (cy[:, None] + pair_dy).ravel()]
    nt = np.r_[[1800.0] * 7, np.tile(pair_n, 3)]
    frames = expected_counts((44, 44), xt, yt, nt, sigma, bg)[None].astype(np.float32)
    mx, my = np.average(pair_dx, weights=pair_n), np.average(pair_dy, weights=pair_n)
    x0 = np.r_[lone_x + 0.1, near_x - 0.1, cx + mx]
    y0 = np.r_[lone_y - 0.1, near_y + 0.1, cy + my]
    return _run(frames, [0] * 10, x0, y0, [1800.0] * 7 + [3500.0] * 3, [1.0] * 10, sigma,
                split_llr=30.0, split_neighbours=split_neighbours)


def test_a_pair_next_to_another_emitter_is_split_when_crowded_emitters_are_tested():
    res = _pairs_next_to_singles(1)
    assert bool(res.accepted.all())
    assert res.split.tolist() == [False] * 7 + [True] * 3
    # Only lone emitters tested: the same pairs stay one emitter each.
    assert not bool(_pairs_next_to_singles(0).split.any())


def test_two_emitters_do_not_both_split_onto_one_missed_between_them():
    """Triplets A–C–B with C missed by the detector (A–B 2.2–3.6 px apart, Poisson noise):
    each of A and B, fitted with the other held fixed, could split onto C, reporting it
    twice; only the stronger of two splits whose regions overlap is kept."""
    sigma, bg = 1.1, 5.0
    rng = np.random.default_rng(1)
    lone_x, lone_y = np.array([6.3, 36.2, 6.6, 36.4]), np.array([6.2, 6.7, 36.1, 36.5])
    splits = 0
    for _ in range(40):
        xt, yt, nt = list(lone_x), list(lone_y), [1800.0] * 4
        x0, y0 = list(lone_x + 0.1), list(lone_y - 0.1)
        for ax, ay in [(14.2, 14.3), (22.1, 22.6), (14.7, 29.8)]:
            gap, angle = rng.uniform(2.2, 3.6), rng.uniform(0, np.pi)
            bx, by = ax + gap * np.cos(angle), ay + gap * np.sin(angle)
            f = rng.uniform(0.3, 0.7)
            cx, cy = ax + f * (bx - ax) + rng.normal(0, 0.3), ay + f * (by - ay) + rng.normal(0, 0.3)
            xt += [ax, cx, bx]
            yt += [ay, cy, by]
            nt += [1800.0, rng.uniform(800, 2500), 1800.0]
            x0 += [ax, bx]
            y0 += [ay, by]
        frames = rng.poisson(expected_counts((44, 44), xt, yt, nt, sigma, bg))[None].astype(np.float32)
        res = _run(frames, [0] * len(x0), x0, y0, [1800.0] * len(x0), [1.0] * len(x0), sigma,
                   split_llr=30.0, split_neighbours=1)
        pairs = res.split[4:].view(3, 2)
        assert not bool(pairs.all(1).any())
        splits += int(pairs.sum())
    assert splits >= 5  # the test sees splits of missed emitters at all

def test_crowded_single_emitters_with_poisson_noise_are_not_split():
    rng = np.random.default_rng(9)
    n_frames, size = 30, 48
    # Per frame: three lone emitters and three couples of single emitters 1.5–3.5 px apart.
    gx = np.array([8.0, 24.0, 40.0, 8.0, 10.5, 24.0, 26.5, 40.0, 42.5]) - 2.0
    gy = np.array([8.0, 8.0, 8.0, 24.0, 24.0, 38.0, 38.0, 24.0, 24.0])
    xt = (gx[None] + rng.uniform(0, 1, (n_frames, 9))).ravel()
    yt = (gy[None] + rng.uniform(0, 1, (n_frames, 9))).ravel()
    counts = rng.uniform(300, 5000, xt.size)
    frame = np.repeat(np.arange(n_frames), 9)
    frames = poisson_frames(rng, (size, size), frame, xt, yt, counts, 1.2, 20.0)
    res = _run(frames, frame, xt + 0.2, yt - 0.1, counts, [0.5] * xt.size, split_neighbours=2)
    assert bool(res.accepted.all())
    assert int(res.split.sum()) == 0


@pytest.mark.parametrize("bad", [{"method": "fit"}, {"iterations": 0}, {"iterations": 2.5},
                                 {"relax": 0.0}, {"relax": 1.5}, {"guard": -1.0},
                                 {"guard": float("inf")}, {"relax": float("nan")},
                                 {"split_llr": -1.0}, {"split_llr": float("nan")},
                                 {"split_llr": True}, {"split_llr": "high"},
                                 {"split_neighbours": -1}, {"split_neighbours": 1.5},
                                 {"split_neighbours": 9}, {"split_neighbours": True}])
def test_bad_options_are_refused(bad):
    with pytest.raises(UserError):
        RefineOptions(**{"method": "mle", **bad}).validate()


def test_generalist_refinement_reproduces_picassos_mle_on_its_test_movie(shared_data):
    """Picasso's own MLE localizations of its test movie are an independent implementation
    of the same fit: the refined gridnet positions agree with them to a fraction of a nm,
    the network's own positions only to several nm."""
    import warnings

    from stormfold.evaluate import match
    from stormfold.io.tables import read_table
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    folder = shared_data / "picasso-testdata"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the HDF5 reader's pixel-size note
        picasso = read_table(folder / "testdata_locs.hdf5")
    picasso = picasso[picasso["frame"] < 100]  # the frames of the 100-frame movie
    median = {}
    for method in ("none", "mle"):
        engine = load_engine(model="builtin:gridnet-generalist", options={"refine": method})
        locs = localize_movie(folder / "testdata.raw", engine, progress=False).locs
        m = match(picasso, locs, 100.0)
        assert len(m.distance_nm) == len(picasso) >= 20
        median[method] = float(np.median(m.distance_nm))
    assert median["mle"] < 1.0 and median["none"] > 2.0, median


def test_frame_median_is_the_lower_median_of_each_frame():
    rng = np.random.default_rng(2)
    values = torch.tensor(rng.uniform(0.7, 2.0, 40))
    frame = torch.tensor(rng.integers(0, 5, 40))
    mask = torch.tensor(rng.uniform(size=40) < 0.7)
    got = likelihood_mod.group_median(values, frame, mask, 6)
    for f in range(6):
        v = np.sort(values[mask & (frame == f)].numpy())
        if v.size:
            assert got[f].item() == v[(v.size - 1) // 2]
        else:
            assert np.isnan(got[f].item())
