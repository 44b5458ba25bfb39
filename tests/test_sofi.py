"""SOFI: streaming cumulants, the variance-domain operator H∘H, the expected-cumulant model,
semi-blind training (σ learned) and the CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stormfold.errors import UserError
from stormfold.physics import BlurDownsample
from stormfold.sofi.data import emitter_cumulants, fine_cumulant_target
from stormfold.physics.operator import SquaredBlurDownsample
from stormfold.sofi.statistics import CumulantAccumulator, movie_statistics, sofi_cumulant
from stormfold.sofi.theory import (estimator_expectation, expected_cumulant,
                                   intensity_autocovariance, noise_offset,
                                   on_fraction_autocovariance, photon_moments)


# --------------------------------------------------------------------------- statistics
def _direct(stack: np.ndarray, lag: int) -> np.ndarray:
    f = stack.astype(np.float64)
    d = f - f.mean(axis=0)
    if lag == 0:
        return (d * d).mean(axis=0)
    return (d[:-1] * d[1:]).sum(axis=0) / (len(f) - 1)


@pytest.mark.parametrize("batch", [1, 2, 5, 7, 36, 37, 100])
def test_streaming_cumulants_match_numpy(batch):
    rng = np.random.default_rng(0)
    stack = rng.poisson(50, (37, 5, 6)).astype(np.uint16)  # 37 frames: uneven batches
    for lag in (0, 1):
        got = sofi_cumulant(stack, lag=lag, batch_frames=batch)
        np.testing.assert_allclose(got, _direct(stack, lag), rtol=1e-12, atol=1e-10)
    stats = movie_statistics(stack, batch_frames=batch)
    np.testing.assert_allclose(stats.mean, stack.mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(stats.variance, stack.astype(float).var(axis=0), rtol=1e-12)


def test_streaming_is_stable_under_a_large_offset():
    # Raw sums of squares would lose every digit here (offset² / variance ≈ 1e16).
    rng = np.random.default_rng(1)
    small = rng.normal(0, 1, (300, 4, 4))
    stack = 1e8 + small
    for lag in (0, 1):
        got = sofi_cumulant(stack, lag=lag, batch_frames=17)
        np.testing.assert_allclose(got, _direct(small, lag), rtol=1e-6, atol=1e-7)


def test_accumulator_merge_of_consecutive_parts():
    rng = np.random.default_rng(2)
    stack = rng.normal(10, 3, (50, 3, 4))
    for cut in (1, 13, 49):
        a = CumulantAccumulator().update(stack[:cut])
        b = CumulantAccumulator()
        for i in range(cut, 50, 6):
            b.update(stack[i:i + 6])
        res = a.merge(b).result()
        np.testing.assert_allclose(res.variance, _direct(stack, 0), rtol=1e-12)
        np.testing.assert_allclose(res.lag1, _direct(stack, 1), rtol=1e-10, atol=1e-12)


def test_accumulator_memory_does_not_grow_with_movie_length():
    def held_bytes(n_frames):
        acc = CumulantAccumulator()
        for _ in range(n_frames // 10):
            acc.update(np.ones((10, 8, 8)))
        return sum(v.nbytes for v in vars(acc).values() if isinstance(v, np.ndarray))
    assert held_bytes(20) == held_bytes(2000) == 7 * 8 * 8 * 8  # seven float64 frames


def test_cumulant_of_a_movie_file_in_photons(tmp_path):
    from stormfold.io import write_tiff
    from stormfold.physics import Camera

    rng = np.random.default_rng(3)
    adu = rng.poisson(200, (40, 6, 7)).astype(np.uint16)
    write_tiff(tmp_path / "m.tif", adu, pixel_size_nm=100.0)
    cam = Camera(baseline_adu=100.0, e_per_adu=2.0, em_gain=1.0, qe=0.5)
    got = sofi_cumulant(tmp_path / "m.tif", lag=1, batch_frames=9, camera=cam)
    np.testing.assert_allclose(got, _direct(cam.backward(adu).astype(np.float64), 1), rtol=1e-5)


def test_only_second_order_lag_0_or_1():
    stack = np.ones((5, 2, 2))
    with pytest.raises(UserError, match="second-order"):
        sofi_cumulant(stack, order=3)
    with pytest.raises(UserError, match="lag"):
        sofi_cumulant(stack, lag=2)


# --------------------------------------------------------------------------- operator
def _explicit(op, m, n):
    """The matrix of op.A, built column by column from unit fine images (float64)."""
    L = op.factor
    eye = torch.eye(L * m * L * n, dtype=torch.float64).reshape(-1, L * m, L * n)
    return op.A(eye).reshape(-1, m * n).T


def test_squared_operator_is_the_elementwise_square_of_h():
    L, m, n, sigma = 3, 5, 4, 1.7
    H = _explicit(BlurDownsample(L, sigma, dtype=torch.float64), m, n)
    G = SquaredBlurDownsample(L, sigma, dtype=torch.float64)
    np.testing.assert_allclose(_explicit(G, m, n).numpy(), (H ** 2).numpy(), atol=1e-15)
    # Exact adjoint, and the explicit transpose.
    x = torch.rand(2, L * m, L * n, dtype=torch.float64)
    r = torch.rand(2, m, n, dtype=torch.float64)
    assert abs(float((G.A(x) * r).sum() - (x * G.A_adjoint(r)).sum())) < 1e-12
    adj = G.A_adjoint(torch.eye(m * n, dtype=torch.float64).reshape(-1, m, n)).reshape(m * n, -1)
    np.testing.assert_allclose(adj.numpy(), (H ** 2).numpy(), atol=1e-15)
    # The squared PSF is narrower: an interior fine pixel's response is more concentrated.
    assert float((H ** 2).sum(0).max()) < float(H.sum(0).max())


def test_squared_operator_norm_bound_is_tight():
    G = SquaredBlurDownsample(4, 3.0, dtype=torch.float64)
    exact_small = torch.linalg.matrix_norm(_explicit(G, 4, 4), 2) ** 2
    assert float(exact_small) <= G.norm_sq
    v = torch.rand(1, 160, 160, dtype=torch.float64)  # power iteration on a larger grid
    for _ in range(60):
        v = G.A_adjoint(G.A(v))
        nrm = v.norm()
        v = v / nrm
    assert float(nrm) <= G.norm_sq * (1 + 1e-9)
    assert float(nrm) > 0.993 * G.norm_sq  # measured 0.9956


def test_squared_operator_gradient_in_sigma():
    G = SquaredBlurDownsample(2, 1.3, learn_sigma=True, dtype=torch.float64)
    x = torch.rand(1, 12, 10, dtype=torch.float64)
    r = torch.rand(1, 6, 5, dtype=torch.float64)
    value = (G.A(x) * r).sum()
    (grad,) = torch.autograd.grad(value, G.sigma_fine_px)
    h = 1e-6
    with torch.no_grad():
        G.sigma_fine_px += h
        up = float((G.A(x) * r).sum())
        G.sigma_fine_px -= 2 * h
        down = float((G.A(x) * r).sum())
    assert float(grad) == pytest.approx((up - down) / (2 * h), rel=1e-6)


# --------------------------------------------------------------------------- theory
def test_estimator_expectation_against_the_covariance_matrix():
    # E[XᵀQX] = tr(QΣ) for the quadratic form Q of each estimator (brute force, T = 12).
    T = 12
    gamma = 3.0 * 0.6 ** np.arange(T) + np.r_[1.5, np.zeros(T - 1)]
    cov = gamma[np.abs(np.subtract.outer(np.arange(T), np.arange(T)))]
    centre = np.eye(T) - 1.0 / T
    q0 = centre.T @ centre / T
    shift = np.eye(T, k=1)
    q1 = centre.T @ shift @ centre / (T - 1)
    assert estimator_expectation(gamma, 0) == pytest.approx(np.trace(q0 @ cov), rel=1e-12)
    assert estimator_expectation(gamma, 1) == pytest.approx(np.trace(q1 @ cov), rel=1e-12)


def test_on_fraction_moments_against_a_fine_time_grid():
    # ∫∫ p(1−p) e^{−k|u−v|} over frame squares, by quadrature on a fine grid.
    t_on, t_off = 3.0, 12.0
    p, cov = on_fraction_autocovariance(t_on, t_off, 4)
    k = 1 / t_on + 1 / t_off
    u = (np.arange(2000) + 0.5) / 2000
    for h in range(4):
        quad = p * (1 - p) * np.exp(-k * np.abs(u[:, None] - (u[None, :] + h))).mean()
        assert cov[h] == pytest.approx(quad, rel=1e-5)


def test_emitter_cumulants_against_dense_series():
    import pandas as pd

    rng = np.random.default_rng(4)
    T, n = 30, 6
    series = rng.uniform(0, 100, (n, T)) * (rng.random((n, T)) < 0.4)
    series[2] = 0.0
    series[2, 0] = 5.0  # a fluorophore ON only in the first frame
    series[3, -1] = 7.0
    e, f = np.nonzero(series)
    truth = pd.DataFrame({"frame": f, "x_nm": 10.0 * e + 1, "y_nm": 5.0 * e + 1,
                          "photons": series[e, f], "emitter_id": e + 100})
    for lag in (0, 1):
        _, _, c = emitter_cumulants(truth, T, lag)
        expected = [_direct(s[:, None, None], lag)[0, 0] for s in series]
        np.testing.assert_allclose(c, expected, rtol=1e-10, atol=1e-9)
    image, per = fine_cumulant_target(truth, T, (40, 70), 1.0, 0)
    assert image.sum() == pytest.approx(per.sum())
    assert image[6, 11] == pytest.approx(per[1])  # emitter 1 at (x, y) = (11, 6) nm


def _z_scores(movie, camera, predicted, lag, blocks=20):
    """z = (Ĝ − prediction) / (sampling s.d. estimated from `blocks` sub-movies)."""
    whole = CumulantAccumulator().update(movie).result().to_photons(camera).cumulant(lag)
    n = len(movie) // blocks
    parts = np.stack([CumulantAccumulator().update(movie[i * n:(i + 1) * n]).result()
                      .to_photons(camera).cumulant(lag) for i in range(blocks)])
    sd = parts.std(axis=0, ddof=1) / np.sqrt(blocks)
    return (whole - predicted) / sd


def _consistent(z):
    return abs(z.mean()) < 0.4 and z.std() < 1.6


def test_simulated_cumulant_matches_the_expected_cumulant():
    """The simulator's blinking movie vs the derivation of stormfold.sofi.theory."""
    from stormfold.simulate import build_config, simulate

    cfg = build_config("sofi", n_frames=800, seed=3, overrides={"n_rows": 20, "n_cols": 20})
    sim = simulate(cfg)
    x, y, _ = emitter_cumulants(sim.truth, cfg.n_frames, 0)
    for lag in (0, 1):
        expected, _ = expected_cumulant(cfg, x, y, lag)
        z = _z_scores(sim.movie, cfg.camera, expected, lag)
        assert _consistent(z), (lag, z.mean(), z.std())
        wrong, _ = expected_cumulant(cfg, x, y, lag, sigma_nm=1.1 * cfg.emitters.sigma_nm)
        assert not _consistent(_z_scores(sim.movie, cfg.camera, wrong, lag))
    no_noise, _ = expected_cumulant(cfg, x, y, 0, include_noise=False)
    assert not _consistent(_z_scores(sim.movie, cfg.camera, no_noise, 0))


def test_variance_image_equals_the_operator_prediction():
    """Emitters at fine-pixel centres: Ĝ₂ ≈ (H∘H) r + s within sampling error."""
    from stormfold.physics.psf import render_emitters
    from stormfold.simulate import build_config
    from stormfold.simulate.activation import telegraph_on_fractions

    L, rows, T = 4, 20, 800
    cfg = build_config("sofi", n_frames=T, overrides={"n_rows": rows, "n_cols": rows})
    px, sigma_nm = cfg.pixel_size_nm, cfg.emitters.sigma_nm
    rng = np.random.default_rng(5)
    n = 400
    fr, fc = rng.integers(0, rows * L, n), rng.integers(0, rows * L, n)
    emitter, frame, fraction = telegraph_on_fractions(n, T, cfg.activation, rng)
    e = cfg.emitters
    photons = np.maximum(rng.normal(e.photons_mean, e.photons_std, frame.size), 0) * fraction
    expected_photons = render_emitters((T, rows, rows), frame, (fc[emitter] + 0.5) / L,
                                       (fr[emitter] + 0.5) / L, photons, sigma_nm / px)
    movie = cfg.camera.forward(expected_photons + cfg.background.photons, rng)

    count = np.bincount(fr * rows * L + fc, minlength=(rows * L) ** 2).reshape(rows * L, -1)
    gamma = intensity_autocovariance(cfg)
    p_on, _ = on_fraction_autocovariance(cfg.activation.t_on_frames, cfg.activation.t_off_frames, 1)
    mean_intensity = photon_moments(e)[0] * p_on
    H = BlurDownsample(L, sigma_nm / (px / L), dtype=torch.float64)
    G = SquaredBlurDownsample(L, sigma_nm / (px / L), dtype=torch.float64)
    mean = H.A(torch.from_numpy(count * mean_intensity)[None]).numpy()[0] + cfg.background.photons
    for lag in (0, 1):
        r = torch.from_numpy(count * estimator_expectation(gamma, lag))[None]
        predicted = G.A(r).numpy()[0] + noise_offset(cfg.camera, mean, T, lag)
        z = _z_scores(movie, cfg.camera, predicted, lag)
        assert _consistent(z), (lag, z.mean(), z.std())
        wider = SquaredBlurDownsample(L, 1.1 * sigma_nm / (px / L), dtype=torch.float64)
        wrong = wider.A(r).numpy()[0] + noise_offset(cfg.camera, mean, T, lag)
        assert not _consistent(_z_scores(movie, cfg.camera, wrong, lag))


# --------------------------------------------------------------------------- training
def _small_config(sigma_nm: float, init_factor: float, **extra):
    from stormfold.config import merge
    from stormfold.sofi.train import load_sofi_train_config

    # A 1.6 µm field with two copies of one filament (structures ~λ/2 apart or more).
    base = {"seed": 1,
            "data": {"n_patterns": 4, "n_frames": 500, "base_filaments": 1,
                     "simulation": {"n_rows": 16, "n_cols": 16,
                                    "emitters": {"sigma_nm": sigma_nm}}},
            "solver": {"iterations": 50, "sigma_init_nm": init_factor * sigma_nm},
            "optim": {"outer_iterations": 8}}
    return load_sofi_train_config(overrides=merge(base, extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two semi-blind runs: true σ 100 nm from 130 nm, and 140 nm from 98 nm."""
    from stormfold.sofi.train import train_sofi

    runs = {}
    for sigma, factor in ((100.0, 1.3), (140.0, 0.7)):
        out = tmp_path_factory.mktemp(f"sofi{sigma:g}")
        meta = train_sofi(_small_config(sigma, factor), out, progress=False)
        runs[sigma] = (out, meta)
    return runs


def test_learned_sigma_within_10_percent_from_30_percent_off(trained):
    for sigma, (_, meta) in trained.items():
        assert abs(meta["sigma_init_nm"] / sigma - 1) == pytest.approx(0.3)
        # README: σ recovered within 2.3 % (full experiment); here 0.7 % and 3.9 % (smaller
        # training runs).
        assert abs(meta["sigma_nm"] / sigma - 1) < 0.058, (sigma, meta["sigma_nm"])
        assert meta["training"]["final_loss"] < meta["training"]["initial_loss"]


def test_binarised_reconstruction_beats_plain_support(trained):
    from stormfold.evaluate import pixel_jaccard
    from stormfold.sofi.data import build_dataset
    from stormfold.sofi.model import load_sofi_model

    out, _ = trained[140.0]
    model = load_sofi_model(out)
    cfg = _small_config(140.0, 0.7)
    test = build_dataset(cfg.data, cfg.seed, model.upsampling, first_index=50, n_patterns=2)
    x = model.reconstruct(test.cumulants, test.offsets)
    truth = test.targets > 0
    plain = pixel_jaccard(x > 0, truth, radius=1).jaccard
    binary = pixel_jaccard(model.binarise(x) > 0, truth, radius=1).jaccard
    assert binary > plain + 0.04, (plain, binary)  # measured +0.066; README: +0.04–0.17


# --------------------------------------------------------------------------- model file & CLI
@pytest.fixture(scope="module")
def sofi_movie(tmp_path_factory):
    from stormfold.simulate import build_config, simulate_to_folder

    cfg = build_config("sofi", n_frames=120, seed=7, overrides={"n_rows": 16, "n_cols": 16})
    folder = tmp_path_factory.mktemp("sofimovie")
    simulate_to_folder(cfg, folder, progress=False)
    return folder / "movie.tif", cfg


def test_model_file_round_trip(trained, tmp_path):
    import yaml

    from stormfold.sofi.model import load_sofi_model, save_sofi_model

    out, meta = trained[100.0]
    model = load_sofi_model(out)
    assert meta["engine"] == "sofi" and meta["upsampling"] == 4 and meta["lag"] == 0
    assert meta["sigma_nm"] == pytest.approx(meta["sigma_fine_px"] * 25.0)
    assert len(meta["theta"]["alpha"]) == meta["solver"]["iterations"] == 50
    assert {"rho", "tau"} <= set(meta["theta"]) and meta["seed"] == 1
    assert meta["training"]["simulation_sigma_nm"] == [100.0]
    assert model.sigma_nm == pytest.approx(meta["sigma_nm"], rel=1e-6)
    y = np.random.default_rng(0).uniform(0, 5e3, (16, 16))
    again = load_sofi_model(save_sofi_model(tmp_path / "copy", model, {}))
    np.testing.assert_array_equal(model.reconstruct(y, 50.0), again.reconstruct(y, 50.0))
    assert yaml.safe_load((tmp_path / "copy" / "model.yaml").read_text())["engine"] == "sofi"


def test_cli_sofi_writes_the_cumulant_image(run_cli, sofi_movie, tmp_path):
    import yaml

    from stormfold.io import open_movie

    movie, cfg = sofi_movie
    out = tmp_path / "out"
    code, text, err = run_cli("sofi", movie, "--out", out, "--lag", "1", "--batch-frames", "7",
                              "--quiet")
    assert code == 0, err
    with open_movie(out / "sofi.tif") as m:
        image, px = m.read(0, 1)[0], m.pixel_size_nm
    assert px == pytest.approx(100.0)
    expected = sofi_cumulant(movie, lag=1, camera=cfg.camera)
    np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-3)
    record = yaml.safe_load((out / "sofi.yaml").read_text())
    assert record["lag"] == 1 and record["order"] == 2 and record["n_frames"] == 120
    assert record["units"] == "photons^2" and record["camera_source"] == "movie metadata"
    assert "lag-1 cumulant of 120 frames" in text


def test_cli_sofi_units_follow_the_camera_given(run_cli, tmp_path):
    """Review 17 D8: a camera given on the command line gave photons² labelled
    (ADU-equivalent)²; only an assumed (ideal) camera is ADU-equivalent."""
    import tifffile
    import yaml

    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "m.tif", rng.poisson(120, (20, 16, 16)).astype(np.uint16))
    for extra, units in ((["--baseline", "100", "--e-per-adu", "0.5"], "photons^2"),
                         ([], "(ADU-equivalent)^2")):
        out = tmp_path / f"o{len(extra)}"
        code, _, err = run_cli("sofi", tmp_path / "m.tif", "--pixel-size", "100", *extra,
                               "--out", out, "--quiet")
        assert code == 0, err
        assert yaml.safe_load((out / "sofi.yaml").read_text())["units"] == units


def test_cli_sofi_refuses_bad_input(run_cli, sofi_movie, tmp_path):
    movie, _ = sofi_movie
    code, _, err = run_cli("sofi", movie, "--out", tmp_path / "a", "--order", "3")
    assert code == 2 and "second-order" in err and not (tmp_path / "a").exists()
    code, _, err = run_cli("sofi", tmp_path / "missing.tif", "--out", tmp_path / "b")
    assert code == 2 and not (tmp_path / "b").exists()
    code, _, err = run_cli("sofi", movie, "--out", tmp_path / "c", "--frames", "5:6")
    assert code == 2 and "2 frames" in err


def test_cli_train_sofi_reconstruct_and_resume(run_cli, sofi_movie, tmp_path):
    import yaml

    from stormfold.io import open_movie, read_table
    from stormfold.sofi.model import load_sofi_model
    from stormfold.sofi.statistics import movie_statistics
    from stormfold.sofi.theory import noise_offset

    movie, cfg = sofi_movie
    model_dir = tmp_path / "model"
    args = ["train", "sofi", "--out", model_dir, "--patterns", "2", "--frames", "100",
            "--iterations", "10", "--seed", "3", "--set", "data.simulation.n_rows=16",
            "--set", "data.simulation.n_cols=16", "--quiet"]
    code, text, err = run_cli(*args, "--outer-iterations", "2")
    assert code == 0, err
    assert "sigma" in text and (model_dir / "training_log.csv").is_file()
    meta = yaml.safe_load((model_dir / "model.yaml").read_text())
    assert meta["engine"] == "sofi" and isinstance(meta["command"], list) and meta["command"]
    assert meta["training"]["n_patterns"] == 2 and meta["training"]["n_frames"] == 100
    # A second run into the same folder must be a resume.
    code, _, err = run_cli(*args, "--outer-iterations", "3")
    assert code == 2 and "--resume" in err
    code, _, err = run_cli(*args, "--outer-iterations", "3", "--resume")
    assert code == 0, err
    resumed = yaml.safe_load((model_dir / "model.yaml").read_text())["training"]
    assert resumed["outer_iterations_done"] == 3
    assert resumed["initial_loss"] == meta["training"]["initial_loss"]

    out = tmp_path / "recon"
    code, text, err = run_cli("sofi", movie, "--out", out, "--model", model_dir, "--quiet",
                              "--threshold", "0.01")
    assert code == 0, err
    with open_movie(out / "reconstruction.tif") as m:
        recon, fine_px = m.read(0, 1)[0], m.pixel_size_nm
    assert recon.shape == (64, 64) and fine_px == pytest.approx(25.0)
    model = load_sofi_model(model_dir)
    stats = movie_statistics(movie).to_photons(cfg.camera)
    expected = model.reconstruct(stats.variance, noise_offset(cfg.camera, stats.mean, 120, 0))
    np.testing.assert_allclose(recon, expected, rtol=1e-4, atol=1e-2 * expected.max())
    with open_movie(out / "reconstruction_binary.tif") as m:
        binary = m.read(0, 1)[0]
    locs = read_table(out / "localizations.csv")
    from scipy import ndimage

    detected = recon >= 0.01 * model.variance_scale
    np.testing.assert_array_equal(binary, detected & (recon > 0))
    assert len(locs) == ndimage.label(detected, structure=np.ones((3, 3)))[1] > 0
    assert (locs["frame"] == 0).all()
    record = yaml.safe_load((out / "sofi.yaml").read_text())
    assert record["n_localizations"] == len(locs) and record["model"]["lag"] == 0
    # SOFI measures neither photons nor a precision: Picasso gets positions and a named
    # lpx/lpy stand-in, nothing filled with 0
    code, _, err = run_cli("convert", out / "localizations.csv", out / "l.hdf5",
                           "--pixel-size", "100")
    assert code == 0, err
    import h5py

    with h5py.File(out / "l.hdf5") as fh:
        names = fh["locs"].dtype.names
    assert names[:5] == ("frame", "x", "y", "lpx", "lpy") and "confidence" in names
    assert not {"photons", "sx", "sy", "bg"} & set(names)
    assert "Stand-in fields" in yaml.safe_load_all((out / "l.yaml").read_text()).__next__()

    # Review 17 D5: a threshold above every pixel gave "0 localizations" without a word.
    from stormfold.sofi.run import MAX_THRESHOLD

    with pytest.warns(UserWarning, match="no localization: the reconstruction's largest"):
        code, _, err = run_cli("sofi", movie, "--out", tmp_path / "high", "--model", model_dir,
                               "--quiet", "--threshold", str(MAX_THRESHOLD))
    assert code == 0, err
    code, _, err = run_cli("sofi", movie, "--out", tmp_path / "x", "--model", model_dir,
                           "--lag", "1")
    assert code == 2 and "lag-0" in err
    code, _, err = run_cli("localize", movie, "--model", model_dir, "--out", tmp_path / "loc")
    assert code == 2 and "stormfold sofi" in err and not (tmp_path / "loc").exists()


def test_train_config_accepts_a_simulation_yaml(tmp_path):
    """`stormfold train sofi --config` takes the simulation.yaml of `simulate --preset sofi`."""
    from stormfold.simulate import build_config, simulate_to_folder
    from stormfold.sofi.train import load_sofi_train_config

    simulate_to_folder(build_config("sofi", n_frames=4, overrides=["emitters.sigma_nm=140"]),
                       tmp_path, progress=False)
    cfg = load_sofi_train_config(tmp_path / "simulation.yaml", {"data": {"n_patterns": 3}})
    assert cfg.data.preset == "sofi" and cfg.data.n_patterns == 3
    assert cfg.data.simulation["emitters"]["sigma_nm"] == 140.0
    assert "stormfold_version" not in cfg.data.simulation


def test_a_movie_that_does_not_blink_is_said_to(tmp_path):
    """Review 21 (D6): static emitters gave a cumulant at the camera noise's level without a
    word. Measured: 2.6 standard errors at the 99.9th percentile static, 1,759 blinking."""
    import warnings

    import tifffile

    from stormfold.localize.camera import CameraOverrides
    from stormfold.simulate import build_config, simulate_to_folder
    from stormfold.sofi.run import run_sofi

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32]
    image = np.full((32, 32), 20.0)
    for cy, cx in rng.uniform(4, 28, (15, 2)):
        image += 2000 / (2 * np.pi * 1.1 ** 2) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2)
                                                         / (2 * 1.1 ** 2))
    tifffile.imwrite(tmp_path / "static.tif", rng.poisson(image, (200, 32, 32)).astype(np.uint16))
    camera = CameraOverrides(None, 0.0, 1.0)
    with pytest.warns(UserWarning, match="no blinking found"):
        record = run_sofi(tmp_path / "static.tif", tmp_path / "s", camera=camera,
                          pixel_size_nm=100, progress=False)
    assert record["blinking_excess_se"] < 5
    cfg = build_config("zerocost", n_frames=200, seed=3, overrides=[
        "n_rows=32", "n_cols=32", "activation.density_per_um2=8"])
    simulate_to_folder(cfg, tmp_path / "blink", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        record = run_sofi(tmp_path / "blink" / "movie.tif", tmp_path / "b", progress=False)
    assert record["blinking_excess_se"] > 100
