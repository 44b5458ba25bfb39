"""Background level per tile and Deep-STORM's matching to its training background."""
import numpy as np
import pytest

from stormfold.errors import UserError
from stormfold.localize.background import (BackgroundMatch, interpolation_matrix,
                                           background_level, background_map,
                                           training_reference)


def test_background_level_of_poisson_frames():
    rng = np.random.default_rng(0)
    for b in (5.0, 50.0, 200.0):
        frames = rng.poisson(b, (3, 64, 64)).astype(np.float32)
        assert background_level(frames) == pytest.approx(np.full(3, b), rel=0.06, abs=1.0)
    assert np.all(background_level(rng.normal(0, 3, (2, 32, 32))) >= 0)


def test_interpolation_weights():
    w = interpolation_matrix(80, 32)  # tiles 0–31, 32–63, 64–79: centres 15.5, 47.5, 71.5
    assert w.shape == (80, 3) and np.allclose(w.sum(1), 1.0)
    assert np.allclose(w[:16, 0], 1.0) and np.allclose(w[72:, 2], 1.0)
    assert w[31, 0] == pytest.approx((47.5 - 31) / 32) and w[47, 1] == pytest.approx(1 - 0.5 / 32)
    assert np.allclose(interpolation_matrix(20, 32), 1.0)


def test_background_map_follows_a_gradient():
    rng = np.random.default_rng(1)
    truth = np.tile(np.linspace(20.0, 300.0, 128), (128, 1))
    frames = rng.poisson(truth, (2, 128, 128)).astype(np.float32)
    level = background_map(frames)
    assert level.shape == frames.shape
    inner = slice(16, 112)  # between the first and last tile centres the map is linear
    err = level[:, :, inner] - truth[None, :, inner]
    assert np.abs(err).max() < 0.08 * truth.max()
    uniform = rng.poisson(40.0, (1, 70, 50)).astype(np.float32)
    assert background_map(uniform) == pytest.approx(40.0, rel=0.1)


def test_background_map_follows_a_gradient_to_the_edges():
    """Review 17 D11: beyond the outer tile centres the map stayed flat and a tile holding a
    gradient read low, so Deep-STORM's matching left a ramp's excess (0 → 300 photons/px
    across 64 px: JI 0.45). With ``follow_gradient`` it extrapolates and corrects the tiles
    on the residual."""
    rng = np.random.default_rng(3)
    truth = np.tile(np.linspace(0.0, 300.0, 64), (64, 1))
    frames = rng.poisson(truth, (4, 64, 64)).astype(np.float32)
    flat = background_map(frames)
    follows = background_map(frames, follow_gradient=True)
    err_flat = np.median(flat - truth, axis=(0, 1))
    err = np.median(follows - truth, axis=(0, 1))
    assert np.abs(err_flat).max() > 40.0
    # What remains is the 10th percentile's Poisson offset (1.28 SD at ≤ 300 photons: ≤ 22).
    assert np.abs(err).max() < 12.0
    uniform = rng.poisson(40.0, (2, 64, 96)).astype(np.float32)
    np.testing.assert_allclose(background_map(uniform, follow_gradient=True),
                               background_map(uniform), atol=1.5)
    w = interpolation_matrix(80, 32, extrapolate=True)
    values = np.array([3.0, 7.0, 1.0])  # centres 15.5, 47.5, 71.5
    assert w[0] @ values == pytest.approx(3.0 - 15.5 * 4.0 / 32)
    assert w[79] @ values == pytest.approx(1.0 + 7.5 * (1.0 - 7.0) / 24)


def test_match_takes_only_the_excess():
    rng = np.random.default_rng(2)
    match = BackgroundMatch(reference_photons=6.0, tolerance_photons=10.0)
    quiet = rng.poisson(2.0, (2, 64, 64)).astype(np.float32)
    assert np.array_equal(match(quiet), quiet)  # below reference + tolerance: untouched
    bright = rng.poisson(200.0, (2, 64, 64)).astype(np.float32)
    out = match(bright)
    assert np.median(out) == pytest.approx(16.0, abs=4.0)  # the reference + tolerance stay
    assert np.allclose(bright - out, match.excess(bright))


def test_training_reference_of_the_shipped_simulation():
    from stormfold.modelfile import read_model_meta

    meta = read_model_meta("builtin:deepstorm-zerocost")
    ref = training_reference(meta["training_data"]["simulation"])
    # 6/µm² without background: the level is the PSF tails and read noise, a few photons.
    assert 2.0 < ref < 12.0
    assert training_reference({"emitters": {"photons_mean": "many"}}) is None


def test_deepstorm_matches_background_and_can_be_told_not_to():
    from stormfold.evaluate import evaluate
    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate

    engine = load_engine(model="builtin:deepstorm-zerocost")
    off = load_engine(model="builtin:deepstorm-zerocost", options={"background": "none"})
    assert engine.background is not None and off.background is None
    assert engine.describe()["background"]["reference_photons"] > 0
    assert off.describe()["background"] == "none"
    with pytest.raises(UserError, match="background must be match or none"):
        load_engine(model="builtin:deepstorm-zerocost", options={"background": "auto"})
    cfg = build_config("zerocost", n_frames=2, seed=5, overrides=[
        "n_rows=32", "n_cols=32", "activation.density_per_um2=2", "background.photons=200"])
    sim = simulate(cfg)
    photons = cfg.camera.backward(sim.movie)
    ji = {}
    for name, eng in (("match", engine), ("none", off)):
        locs = eng.process(photons, 0, cfg.pixel_size_nm).locs
        ji[name] = float(evaluate(sim.truth, locs, [100.0]).iloc[0]["jaccard"])
    # Measured: 0.18 without matching at 2/µm² and background 200, 0.96 with it (8 frames).
    assert ji["match"] > 0.8 and ji["none"] < 0.5, ji


def test_flatten_structure_takes_away_a_blob_and_leaves_a_flat_frame():
    from stormfold.localize.background import flatten_structure

    rng = np.random.default_rng(3)
    r, c = np.mgrid[:128, :128]
    blob = 30 + 400 * np.exp(-((r - 64) ** 2 + (c - 64) ** 2) / (2 * 20.0 ** 2))
    frames = rng.poisson(blob, (2, 128, 128)).astype(np.float32)
    flat = flatten_structure(frames)
    # The blob's centre loses about two thirds of its excess over the frame's level (tiles of 16 px
    # measure a level a little below a peak).
    before, after = (np.median(x[:, 56:72, 56:72]) - 30 for x in (frames, flat))
    assert before > 350 and after < 0.4 * before, (before, after)
    assert np.array_equal(flat[:, :8, :8], frames[:, :8, :8])  # the dark corner is untouched
    uniform = rng.poisson(30.0, (2, 64, 64)).astype(np.float32)
    assert np.array_equal(flatten_structure(uniform), uniform)
    assert flatten_structure(uniform[0]).shape == (64, 64) and flatten_structure(None) is None


def test_gridnet_flattens_a_bright_background_blob(map_simulation):
    """A cell-like blob of 400 on 30 photons/px floods the unflattened network (review 14)."""
    from stormfold.evaluate import evaluate
    from stormfold.localize.registry import load_engine

    r, c = np.mgrid[:128, :128]
    level = 30 + 400 * np.exp(-((r - 64) ** 2 + (c - 64) ** 2) / (2 * 20.0 ** 2))
    cfg, sim, photons = map_simulation(level, 3, 6, ["activation.density_per_um2=0.5"])
    ji = {}
    for flatten in (True, False):
        engine = load_engine(model="builtin:gridnet-generalist", options={"flatten": flatten})
        assert engine.describe()["flatten"] is flatten
        engine.set_camera(cfg.camera)
        locs = engine.process(photons, 0, cfg.pixel_size_nm).locs
        ji[flatten] = float(evaluate(sim.truth, locs, [100.0]).iloc[0]["jaccard"])
    # experiments/background_flatten.py, the same blob on 12 frames: 0.977 and 0.081.
    assert ji[True] > 0.9 and ji[False] < 0.3, ji
