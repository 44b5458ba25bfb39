"""The photon evidence of the split test: a spot as bright as two of the frame's emitters."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stormfold.errors import UserError
from stormfold.localize import split as split_mod
from stormfold.localize.refine import RefineOptions
from stormfold.localize.split import photon_evidence, photon_statistics
from test_refine import _run, expected_counts, poisson_frames


def test_photon_evidence_known_answers():
    t = lambda *v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    mu, s = t(1000.0, 1000.0, 1000.0, math.nan), t(100.0, 100.0, 100.0, 100.0)
    ev = photon_evidence(t(2000.0, 1000.0, 1300.0, 2000.0), t(1000.0, 500.0, 1000.0, 1000.0),
                         t(1000.0, 500.0, 300.0, 1000.0), mu, s)
    # Two typical emitters making a spot twice as bright: ((2000 − 1000)² − 0 − 0) / 100².
    assert ev[0].item() == pytest.approx(100.0)
    # A typical spot cut in halves, or into a typical and a dim part: no evidence (never < 0).
    assert ev[1].item() == 0.0
    assert ev[2].item() == pytest.approx(max(0.0, (300 ** 2 - 0 - 700 ** 2) / 100 ** 2))
    # No distribution for the frame (too few lone emitters): no evidence.
    assert ev[3].item() == 0.0


def test_photon_statistics_match_numpy_per_frame_over_lone_emitters():
    rng = np.random.default_rng(3)
    counts = np.r_[rng.normal(2000, 150, 11), rng.normal(5000, 50, 4),  # frame 0: lone, crowded
                   rng.normal(900, 40, 7)]  # frame 1: too few lone emitters
    frame = np.r_[[0] * 15, [1] * 7]
    lone = np.r_[[True] * 11, [False] * 4, [True] * 7]
    med, spread = photon_statistics(torch.tensor(counts), torch.tensor(frame),
                                    torch.tensor(lone), 2)
    values = np.sort(counts[:11])
    m = values[(values.size - 1) // 2]  # the lower median, as group_median
    dev = np.sort(np.abs(values - m))
    mad_sd = 1.4826 * dev[(dev.size - 1) // 2]
    expect = max(mad_sd * (1 + split_mod.PRIOR_SPREAD_SE / np.sqrt(11)),
                 split_mod.PRIOR_MIN_SPREAD * m)
    assert np.allclose(med[:15].numpy(), m) and np.allclose(spread[:15].numpy(), expect)
    assert torch.isnan(med[15:]).all()  # 7 < PRIOR_MIN_EMITTERS
    # The spread is at least a fixed fraction of the median (identical photons).
    med, spread = photon_statistics(torch.full((10,), 1000.0), torch.zeros(10, dtype=torch.long),
                                    torch.ones(10, dtype=torch.bool), 1)
    assert torch.allclose(spread, torch.full((10,), 50.0))


def _close_pairs(photons_pair, seed=4, split_photons=True, n_frames=3, separation_px=0.7):
    """``n_frames`` 48×48 frames, each with 12 lone emitters of ~2000 photons and four pairs
    ``separation_px`` apart whose members have ``photons_pair`` each, every pair started as
    one emitter at its middle (Poisson noise, σ known). Returns the pairs' split flags."""
    rng = np.random.default_rng(seed)
    sigma, bg = 1.1, 10.0
    gx, gy = np.meshgrid(np.arange(6.0, 44.0, 9.0), np.arange(6.0, 44.0, 9.0))
    frames, frame, x0, y0, singles_split = [], [], [], [], []
    for f in range(n_frames):
        sites = np.c_[gx.ravel(), gy.ravel()] + rng.uniform(0, 1, (gx.size, 2))
        singles, pairs = sites[:12], sites[12:16]
        angle = rng.uniform(0, np.pi, len(pairs))
        half = 0.5 * separation_px * np.c_[np.cos(angle), np.sin(angle)]
        xt = np.r_[singles[:, 0], pairs[:, 0] + half[:, 0], pairs[:, 0] - half[:, 0]]
        yt = np.r_[singles[:, 1], pairs[:, 1] + half[:, 1], pairs[:, 1] - half[:, 1]]
        nt = np.r_[rng.normal(2000, 200, 12), [photons_pair] * 8]
        frames.append(rng.poisson(expected_counts((48, 48), xt, yt, nt, sigma, bg)))
        frame += [f] * 16
        x0 += list(np.r_[singles[:, 0], pairs[:, 0]] + 0.1)
        y0 += list(np.r_[singles[:, 1], pairs[:, 1]] - 0.1)
    res = _run(np.stack(frames).astype(np.float32), frame, x0, y0, [2000.0] * len(x0),
               [1.0] * len(x0), sigma, split_llr=30.0, split_neighbours=2,
               split_photons=split_photons)
    assert bool(res.accepted.all())
    flags = res.split.view(n_frames, 16)
    assert not bool(flags[:, :12].any())  # single emitters stay single
    return flags[:, 12:]


def test_pairs_twice_as_bright_as_the_frames_emitters_are_split():
    with_photons = sum(int(_close_pairs(2000.0, seed).sum()) for seed in range(2))
    without = sum(int(_close_pairs(2000.0, seed, split_photons=False).sum()) for seed in range(2))
    # 0.7 px apart the shape alone rarely decides; the brightness does (21 of the 24 pairs
    # with the evidence and the pair fit's photon prior, 13 with the evidence alone, none
    # without, when written).
    assert with_photons >= 18 and without <= 3, (with_photons, without)


def test_pairs_as_bright_as_one_emitter_get_no_photon_evidence():
    # Members of half the photons: the spot is as bright as one emitter, so only the shape
    # can argue for a pair, as without the evidence. 1.3 px apart the shape splits most of
    # them (39 of 48 when written), and the pair fit's photon prior, one-sided, must not
    # pull the dim members up: a two-sided one split 34.
    flags = [(_close_pairs(1000.0, seed, separation_px=1.3),
              _close_pairs(1000.0, seed, split_photons=False, separation_px=1.3))
             for seed in range(4)]
    assert sum(int(a.sum()) for a, _ in flags) >= 30
    for a, b in flags:
        assert torch.equal(a, b)


def test_single_emitters_of_spread_brightness_are_not_split():
    """Lone emitters whose photons vary as in real samples (300–5000): no spurious pairs
    (also with 9 per frame: ``test_refine.test_single_emitters_with_poisson_noise_are_not_split``,
    where a spread without the small-sample bound split one)."""
    rng = np.random.default_rng(9)
    n_frames, size = 20, 48
    gx, gy = np.meshgrid(np.arange(5.0, 44.0, 8.0), np.arange(5.0, 44.0, 8.0))
    n = gx.size
    xt = (gx.ravel()[None] + rng.uniform(0, 1, (n_frames, n))).ravel()
    yt = (gy.ravel()[None] + rng.uniform(0, 1, (n_frames, n))).ravel()
    counts = rng.uniform(300, 5000, xt.size)
    frame = np.repeat(np.arange(n_frames), n)
    frames = poisson_frames(rng, (size, size), frame, xt, yt, counts, 1.2, 20.0)
    res = _run(frames, frame, xt + 0.2, yt - 0.1, counts, [0.5] * xt.size, split_neighbours=2)
    assert bool(res.accepted.all())
    assert int(res.split.sum()) == 0


@pytest.mark.parametrize("bad", [1, 0, "yes", None])
def test_split_photons_must_be_a_boolean(bad):
    with pytest.raises(UserError, match="split_photons"):
        RefineOptions(method="mle", split_photons=bad).validate()


def test_batches_change_at_most_threshold_splits(tmp_path):
    """On a realistic movie where the evidence is active (64×64 frames at 2/µm²: more than 8
    lone emitters per frame), batches of 16 and 5 frames give the same localizations except
    where the network's float32 rounding moves a split decision across the threshold."""
    from scipy.spatial import cKDTree

    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate_to_folder

    cfg = build_config("zerocost", n_frames=24, seed=31,
                       overrides=["activation.density_per_um2=2"])
    simulate_to_folder(cfg, tmp_path / "s", progress=False)

    def run(batch, **opts):
        engine = load_engine(model="builtin:gridnet-generalist", options=opts)
        return localize_movie(tmp_path / "s" / "movie.tif", engine, camera=cfg.camera,
                              batch_frames=batch, progress=False).locs

    a, b = run(16), run(5)
    assert len(run(16, split_photons=False)) < len(a)  # the evidence made splits here
    assert abs(len(a) - len(b)) <= 2
    for one, other in ((a, b), (b, a)):
        same = []
        for f, rows in one.groupby("frame"):
            theirs = other[other.frame == f][["x_nm", "y_nm"]].to_numpy()
            d, _ = cKDTree(theirs).query(rows[["x_nm", "y_nm"]].to_numpy())
            same.append(d < 0.5)
        assert np.concatenate(same).mean() >= 0.995
