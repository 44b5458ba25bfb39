"""The spot checks (stormfold.localize.spots), on spots from an independent pixel-integrated
elliptical Gaussian written here."""
import warnings

import numpy as np
import pytest
import tifffile
from scipy.special import erf

from stormfold.localize.spots import (AXIS_RATIO_ABOVE, MAX_FRAMES, MIN_SPOTS, SpotCheck,
                                      SpotReference, measure_spots)


def elliptical_frames(q, n_frames=16, density_per_px=0.005, photons=3000.0, bg=20.0,
                      sigma_px=1.2, size=64, seed=0, astigmatic=True):
    """Photons per pixel; σx = σ·√q, σy = σ/√q (half of the spots turned by 90°)."""
    rng = np.random.default_rng(seed)
    edges = np.arange(size + 1, dtype=np.float64)
    out = np.empty((n_frames, size, size))
    for t in range(n_frames):
        n = rng.poisson(density_per_px * size * size)
        x, y = rng.uniform(0, size, n), rng.uniform(0, size, n)
        turn = (rng.random(n) < 0.5) if astigmatic else np.zeros(n, bool)
        sx = np.where(turn, sigma_px / np.sqrt(q), sigma_px * np.sqrt(q))
        sy = np.where(turn, sigma_px * np.sqrt(q), sigma_px / np.sqrt(q))
        ex = np.diff(0.5 * (1 + erf((edges - x[:, None]) / (np.sqrt(2) * sx[:, None]))))
        ey = np.diff(0.5 * (1 + erf((edges - y[:, None]) / (np.sqrt(2) * sy[:, None]))))
        out[t] = rng.poisson(bg + np.einsum("n,nr,nc->rc", np.full(n, photons), ey, ex))
    return out


@pytest.mark.parametrize("q", [1.0, 1.3, 1.6])
def test_axis_ratio_of_isolated_spots(q):
    spots = measure_spots(elliptical_frames(q, seed=int(q * 10)))
    ratios, candidates = spots.axis_ratio[spots.measured], spots.photons.size
    assert ratios.size >= MIN_SPOTS and candidates >= ratios.size
    assert np.median(ratios) == pytest.approx(q, abs=0.06)


def test_one_spot_known_answer():
    # A noiseless spot with σx = 1.8 px, σy = 1.2 px (ratio 1.5) in the middle of a frame.
    edges = np.arange(33, dtype=np.float64)
    ex = np.diff(0.5 * (1 + erf((edges - 16.3) / (np.sqrt(2) * 1.8))))
    ey = np.diff(0.5 * (1 + erf((edges - 15.6) / (np.sqrt(2) * 1.2))))
    frame = 10.0 + 5000.0 * np.outer(ey, ex)
    spots = measure_spots(frame)
    ratios = spots.axis_ratio[spots.measured]
    assert ratios.shape == (1,) and ratios[0] == pytest.approx(1.5, abs=0.03)


def test_check_warns_once_on_elongated_spots_and_not_on_round_ones():
    said = []
    check = SpotCheck("it reports pairs")
    check.reset(warn=said.append)
    for seed in range(8):  # a few frames of each batch are measured
        check(elliptical_frames(1.3, seed=seed))
    assert check.done and len(said) == 1 and said[0] == check.message
    assert "elongated" in said[0] and "it reports pairs" in said[0]
    assert check.axis_ratio > AXIS_RATIO_ABOVE
    check.reset(warn=said.append)
    for seed in range(8):
        check(elliptical_frames(1.0, seed=10 + seed))
    assert check.done and check.message is None and len(said) == 1


def test_undersampled_round_spots_are_not_called_elongated():
    """Review 19 D4: at σ ≲ 0.6 px a spot's moments depend on its sub-pixel position, so
    round spots read as elongated (binned runs of a normal PSF)."""
    check = SpotCheck("x")
    check.reset(warn=lambda m: pytest.fail(m))
    for k in range(16):  # σ 0.9 px summed 2 × 2: about 0.5 px (read 1.17 without the rule)
        raw = elliptical_frames(1.0, n_frames=16, size=128, sigma_px=0.9, density_per_px=0.002,
                                photons=3000.0, bg=10.0, seed=100 + k)
        check(raw.reshape(16, 64, 2, 64, 2).sum(axis=(2, 4)), 200.0)
    assert check.shape_done and check.axis_ratio > AXIS_RATIO_ABOVE


def test_check_says_nothing_on_crowded_or_dim_movies():
    check = SpotCheck("x")
    check.reset(warn=lambda m: pytest.fail(m))
    crowded = elliptical_frames(1.5, n_frames=16, density_per_px=0.08, seed=4)
    for _ in range(MAX_FRAMES // 4):
        assert not check.done
        check(crowded)
    assert check.done and check.message is None
    # Dim emitters: the few spots bright enough to measure are mostly blended pairs.
    check.reset(warn=lambda m: pytest.fail(m))
    for seed in range(MAX_FRAMES // 4):
        check(elliptical_frames(1.0, photons=350.0, bg=30.0, density_per_px=0.01, seed=seed))
    assert check.done and check.message is None


def test_localize_warns_and_records_an_elongated_psf(tmp_path, run_cli):
    import yaml

    def localize(name, q, seed):
        adu = (elliptical_frames(q, n_frames=64, seed=seed) + 100).astype(np.uint16)
        tifffile.imwrite(tmp_path / f"{name}.tif", adu)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            code, _, err = run_cli("localize", tmp_path / f"{name}.tif", "--model",
                                   "builtin:gridnet-generalist", "--pixel-size", "100",
                                   "--baseline", "100", "--e-per-adu", "1",
                                   "--out", tmp_path / name, "--quiet")
        assert code == 0, err
        run = yaml.safe_load((tmp_path / name / "run.yaml").read_text())
        return [str(w.message) for w in said] + [err], run["engine_warnings"]

    said, recorded = localize("elongated", 1.4, 5)
    assert any("spots are elongated" in m and "pairs of emitters" in m for m in said)
    assert any("spots are elongated" in m for m in recorded)
    said, recorded = localize("round", 1.0, 6)
    assert not any("elongated" in m for m in said + recorded)


def test_every_learned_engine_has_the_check():
    from stormfold.localize.registry import load_engine

    for model in ("builtin:gridnet-generalist", "builtin:deepstorm-zerocost",
                  "builtin:unrolled-isbi2013"):
        engine = load_engine(model=model)
        assert isinstance(engine.spot_check, SpotCheck)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine.start_movie()
        assert engine.spot_check.frames == 0


def test_width_and_photons_of_isolated_spots():
    spots = measure_spots(elliptical_frames(1.0, sigma_px=1.5, photons=4000.0, seed=7))
    assert spots.measured.sum() >= MIN_SPOTS
    assert np.median(spots.sigma_px[spots.measured]) == pytest.approx(1.5, rel=0.05)
    assert np.median(spots.photons) == pytest.approx(4000.0, rel=0.08)


@pytest.mark.parametrize("sigma_px, photons, said", [
    (1.2, 3000.0, []), (1.6, 3000.0, ["wider than the model's"]),
    (0.8, 3000.0, ["narrower than the model's"]), (1.2, 6000.0, ["brighter than the model's"]),
    (1.2, 1200.0, ["dimmer than the model's"])])
def test_check_compares_width_and_photons_with_the_training_spots(sigma_px, photons, said):
    reference = SpotReference(sigma_nm=120.0, sigma_range=(0.8, 1.15), photons=3000.0,
                              photons_range=(0.5, 1.6), consequence="retrain")
    check = SpotCheck("x", reference)
    lines = []
    check.reset(warn=lines.append)
    for seed in range(4):
        check(elliptical_frames(1.0, sigma_px=sigma_px, photons=photons, seed=10 + seed),
              pixel_size_nm=100.0)
        if check.done:
            break
    assert check.done
    assert len(lines) == len(said) and all(w in l for w, l in zip(said, lines))
    assert all(line.endswith("retrain") for line in lines)
