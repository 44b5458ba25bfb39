"""Tests of stormfold.evaluate.bounds: the joint Cramér–Rao bound against a finite-difference
Fisher information of an independently written model, and the matched-RMSE floor against a
Monte-Carlo draw."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import erf

from stormfold.errors import UserError
from stormfold.evaluate.bounds import joint_crlb, matched_rmse_floor

PX = 100.0


def truth_table(x_px, y_px, photons, sigma_px, frame=None) -> pd.DataFrame:
    n = len(x_px)
    return pd.DataFrame({"frame": np.zeros(n, int) if frame is None else frame,
                         "x_nm": np.asarray(x_px, float) * PX, "y_nm": np.asarray(y_px, float) * PX,
                         "photons": np.broadcast_to(photons, (n,)).astype(float),
                         "sigma_nm": np.broadcast_to(sigma_px, (n,)).astype(float) * PX})


def expected_counts(params, shape, sigma, bg, s):
    """λ of every pixel for params (x1, y1, N1, x2, …, b), written from the erf directly."""
    rows, cols = shape
    lam = np.full(shape, bg * s + params[-1])
    edges_c, edges_r = np.arange(cols + 1.0), np.arange(rows + 1.0)
    for x, y, n in params[:-1].reshape(-1, 3):
        ex = 0.5 * np.diff(erf((edges_c - x) / (math.sqrt(2) * sigma)))
        ey = 0.5 * np.diff(erf((edges_r - y) / (math.sqrt(2) * sigma)))
        lam += n * s * np.outer(ey, ex)
    return lam


def fd_crlb(x, y, photons, sigma, shape, bg, s, gamma):
    """Lateral bound of each emitter from a central-difference Fisher information."""
    p0 = np.r_[np.c_[x, y, photons].ravel(), 0.0]
    steps = np.r_[np.tile([1e-4, 1e-4, 1e-3], len(x)), 1e-4]
    jac = []
    for k, h in enumerate(steps):
        up, down = p0.copy(), p0.copy()
        up[k] += h
        down[k] -= h
        jac.append(((expected_counts(up, shape, sigma, bg, s)
                     - expected_counts(down, shape, sigma, bg, s)) / (2 * h)).ravel())
    jac = np.array(jac)
    # Photon parameters were in photons: rescale their rows to counts (N counts = s·photons),
    # and the background row is already in counts.
    jac[2:-1:3] /= s
    lam = expected_counts(p0, shape, sigma, bg, s).ravel()
    info = (jac / (lam + gamma)) @ jac.T
    var = np.diag(np.linalg.inv(info))[:-1].reshape(-1, 3)
    return np.sqrt(var[:, 0] + var[:, 1]) * PX


def test_joint_bound_matches_finite_difference_fisher_information():
    x = np.array([5.3, 6.4, 11.2])
    y = np.array([7.1, 7.6, 4.4])
    photons = np.array([1500.0, 900.0, 2000.0])
    sigma, bg, s, gamma = 1.2, 20.0, 0.9, 3.0
    got = joint_crlb(truth_table(x, y, photons, sigma), (16, 16), PX, bg, s, gamma)
    want = fd_crlb(x, y, photons, sigma, (16, 16), bg, s, gamma)
    np.testing.assert_allclose(got["crlb_nm"], want, rtol=1e-4)
    # The close pair (1.2 px apart) is far worse than alone; the distant one barely.
    ratio = got["crlb_nm"] / got["crlb_alone_nm"]
    assert ratio[0] > 1.5 and ratio[1] > 1.5
    assert ratio[2] < 1.05


def test_alone_bound_matches_single_emitter_fisher_information():
    got = joint_crlb(truth_table([8.4], [7.7], 1000.0, 1.3), (16, 16), PX, 10.0, 1.0, 0.0)
    want = fd_crlb(np.array([8.4]), np.array([7.7]), np.array([1000.0]), 1.3, (16, 16),
                   10.0, 1.0, 0.0)
    np.testing.assert_allclose(got["crlb_alone_nm"], want, rtol=1e-4)
    np.testing.assert_allclose(got["crlb_nm"], want, rtol=1e-4)
    # The textbook scale: σ/√N ≈ 4.1 nm without background; the background adds to it.
    assert 130.0 / math.sqrt(1000) < got["crlb_nm"].iloc[0] < 2 * 130.0 / math.sqrt(1000)


def test_windows_change_the_bound_little_and_frames_are_independent():
    rng = np.random.default_rng(4)
    n = 60
    x, y = rng.uniform(0, 48, n), rng.uniform(0, 48, n)
    frame = rng.integers(0, 3, n)
    t = truth_table(x, y, rng.uniform(500, 3000, n), 1.1, frame)
    whole = joint_crlb(t, (48, 48), PX, 5.0, window_px=48)
    cut = joint_crlb(t, (48, 48), PX, 5.0, window_px=16)
    finite = np.isfinite(whole["crlb_nm"])
    np.testing.assert_allclose(cut["crlb_nm"][finite], whole["crlb_nm"][finite], rtol=0.03)
    # One frame's emitters do not enter another's bound.
    alone = joint_crlb(t[t.frame == 1], (48, 48), PX, 5.0, window_px=48)
    np.testing.assert_allclose(alone["crlb_nm"], whole["crlb_nm"][t.frame == 1], rtol=1e-9)


def test_coincident_emitters_are_not_identifiable_and_leave_the_others_alone():
    t = truth_table([8.0, 8.0, 40.0], [8.0, 8.0, 8.0], 1000.0, 1.2)
    got = joint_crlb(t, (16, 48), PX, 10.0, window_px=64)
    assert np.isinf(got["crlb_nm"].iloc[:2]).all()
    assert np.isfinite(got["crlb_alone_nm"]).all()
    far = joint_crlb(t.iloc[2:], (16, 48), PX, 10.0, window_px=64)
    assert got["crlb_nm"].iloc[2] == pytest.approx(far["crlb_nm"].iloc[0], rel=1e-6)


def test_no_background_and_no_read_noise_still_give_a_bound():
    # Pixels far from the emitter expect no counts at all: they carry no information.
    got = joint_crlb(truth_table([8.3], [7.6], 1000.0, 1.2), (64, 64), PX, 0.0, 1.0, 0.0)
    assert np.isfinite(got["crlb_nm"]).all() and np.isfinite(got["crlb_alone_nm"]).all()
    # Close to σ/√N (plus the pixelation and the background unknown).
    assert 120.0 / math.sqrt(1000) < got["crlb_nm"].iloc[0] < 1.5 * 120.0 / math.sqrt(1000)


def test_an_emitter_without_photons_has_no_bound_and_changes_no_other():
    two = truth_table([5.0, 6.0], [5.0, 5.5], np.array([1000.0, 0.0]), 1.2)
    got = joint_crlb(two, (12, 12), PX, 10.0)
    one = joint_crlb(two.iloc[:1], (12, 12), PX, 10.0)
    assert np.isinf(got["crlb_nm"].iloc[1]) and np.isinf(got["crlb_alone_nm"].iloc[1])
    assert got["crlb_nm"].iloc[0] == pytest.approx(one["crlb_nm"].iloc[0])


def test_matched_rmse_floor_matches_monte_carlo():
    rng = np.random.default_rng(0)
    bounds = np.r_[rng.uniform(5, 80, 3000), np.inf]
    rmse, within = matched_rmse_floor(bounds, 100.0)
    per_axis = np.where(np.isfinite(bounds), bounds, 1e12) / math.sqrt(2)
    err = np.hypot(rng.normal(size=(200, bounds.size)) * per_axis,
                   rng.normal(size=(200, bounds.size)) * per_axis)
    keep = err < 100.0
    assert rmse == pytest.approx(np.sqrt(np.mean(err[keep] ** 2)), rel=0.01)
    assert within == pytest.approx(keep.mean(), rel=0.01)
    # Without a tolerance it is the RMS of the bounds.
    finite = bounds[np.isfinite(bounds)]
    assert matched_rmse_floor(finite, 1e9)[0] == pytest.approx(np.sqrt(np.mean(finite ** 2)))
    # At a lower recall, the easiest emitters: without a tolerance, the RMS of the smallest.
    easiest = np.sort(finite)[:1500]
    got, reached = matched_rmse_floor(finite, 1e9, recall=1500 / finite.size)
    assert got == pytest.approx(np.sqrt(np.mean(easiest ** 2)))
    assert reached == pytest.approx(1500 / finite.size)
    assert got < matched_rmse_floor(finite, 1e9)[0]
    # More recall than the bounds allow within the tolerance: all that can be matched.
    assert matched_rmse_floor(bounds, 100.0, recall=1.0) == pytest.approx((rmse, within))


def test_bad_inputs_are_refused():
    t = truth_table([4.0], [4.0], 1000.0, 1.2)
    with pytest.raises(UserError, match="sigma_nm"):
        joint_crlb(t.drop(columns="sigma_nm"), (8, 8), PX, 0.0)
    with pytest.raises(UserError, match="photons ≥ 0"):
        joint_crlb(t.assign(photons=-1.0), (8, 8), PX, 0.0)
    with pytest.raises(UserError, match="background"):
        joint_crlb(t, (8, 8), PX, -1.0)
    with pytest.raises(UserError, match="tolerance"):
        matched_rmse_floor([10.0], 0.0)
    with pytest.raises(UserError, match="recall"):
        matched_rmse_floor([10.0], 100.0, recall=1.5)


def test_cli_bound_uses_the_simulation_next_to_the_truth(tmp_path, run_cli):
    import json

    from stormfold.evaluate.bounds import floor_table
    from stormfold.io.tables import read_table
    from stormfold.localize.classic.engine import NoiseModel
    from stormfold.simulate import build_config, simulate_to_folder

    cfg = build_config("zerocost", n_frames=4, seed=2,
                       overrides=["n_rows=24", "n_cols=24", "activation.density_per_um2=3",
                                  "background.photons=20"])
    simulate_to_folder(cfg, tmp_path / "sim", progress=False)
    truth_csv = tmp_path / "sim" / "truth.csv"
    code, out, err = run_cli("evaluate", "--truth", truth_csv, "--locs", truth_csv, "--bound",
                             "--frames", "1:3", "--tolerance", "50,100",
                             "--json", tmp_path / "e.json")
    assert code == 0, err
    assert "joint Cramér–Rao floor" in out
    got = json.loads((tmp_path / "e.json").read_text())["bound"]
    truth = read_table(truth_csv)
    truth = truth[(truth.frame >= 1) & (truth.frame < 3)]
    noise = NoiseModel.from_camera(cfg.camera)
    want = floor_table(joint_crlb(truth, (24, 24), cfg.pixel_size_nm, 20.0,
                                  noise.counts_per_photon, noise.gamma), [50, 100])
    assert [r["tolerance_nm"] for r in got] == [50.0, 100.0]
    np.testing.assert_allclose([r["floor_rmse_nm"] for r in got], want["floor_rmse_nm"])
    np.testing.assert_allclose([r["floor_recall"] for r in got], want["floor_recall"])
    # The localizations are the truth itself: recall 1, so the floor at that recall is the
    # floor over every emitter that can be matched.
    assert [r["recall"] for r in got] == [1.0, 1.0]
    np.testing.assert_allclose([r["floor_rmse_at_recall_nm"] for r in got], want["floor_rmse_nm"])
    # Without the simulation's camera there is no bound: one line, exit 2.
    alone = tmp_path / "truth.csv"
    alone.write_bytes(truth_csv.read_bytes())
    code, out, err = run_cli("evaluate", "--truth", alone, "--locs", alone, "--bound")
    assert code == 2 and "simulation.yaml" in err and len(err.strip().splitlines()) == 1
