"""Simulator: known-answer images, camera statistics, presets, kinetics, files and errors."""
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from scipy.special import erf

from stormfold.errors import UserError
from stormfold.simulate import build_config, expected_photons, simulate, simulate_truth
from stormfold.simulate.activation import telegraph_on_fractions
from stormfold.simulate.config import ActivationConfig
from stormfold.table import make_table


def test_single_emitter_equals_analytic_integrated_gaussian():
    cfg = build_config("zerocost", overrides=["background.photons=0", "camera.shot_noise=none"],
                       n_frames=1)
    truth = make_table([0], [3217.0], [2861.5], photons=[5000.0], sigma_nm=[123.0])
    img = expected_photons(cfg, truth, 0, 1)[0]
    # Independent formula over the whole image (no windows, no truncation).
    px = cfg.pixel_size_nm
    edges = np.arange(cfg.n_cols + 1) * px
    s = np.sqrt(2) * 123.0
    fx = 0.5 * (erf((edges[1:] - 3217.0) / s) - erf((edges[:-1] - 3217.0) / s))
    edges_y = np.arange(cfg.n_rows + 1) * px
    fy = 0.5 * (erf((edges_y[1:] - 2861.5) / s) - erf((edges_y[:-1] - 2861.5) / s))
    ref = 5000.0 * fy[:, None] * fx[None, :]
    peak = ref.max()
    assert np.abs(img - ref).max() <= 1e-6 * peak
    assert img.sum() == pytest.approx(5000.0, rel=1e-6)


def test_camera_chain_statistics_in_a_simulated_movie():
    """Flat background only: per-pixel mean and variance of the movie match the camera theory."""
    cfg = build_config("challenge2016", overrides=["activation.density_per_um2=0"], n_frames=30,
                       seed=4)  # 30 × 64 × 64 = 122,880 pixels
    sim = simulate(cfg)
    adu = sim.movie.astype(np.float64)
    photons = cfg.background.photons
    # Above the baseline (a gain error cannot hide behind the offset); bounds ≈ 5 standard
    # errors (measured: signal −0.05 % with SE 0.06 %, variance −0.3 % with SE 0.4 %).
    baseline = cfg.camera.baseline_adu
    assert adu.mean() - baseline == pytest.approx(float(cfg.camera.mean_adu(photons)) - baseline,
                                                  rel=0.003)
    assert adu.var() == pytest.approx(float(cfg.camera.adu_variance(photons)), rel=0.02)


def test_zerocost_preset_counts_and_mean_adu():
    cfg = build_config("zerocost", seed=11)
    sim = simulate(cfg)
    assert sim.movie.shape == (20, 64, 64) and sim.movie.dtype == np.uint16
    per_frame = sim.truth.groupby("frame").size()
    assert len(per_frame) == 20
    # density 6 /µm² × 40.96 µm², std 0 → exactly round(245.76) = 246 emitters per frame.
    assert (per_frame == 246).all()
    # 4920 draws: bounds ≈ 5 standard errors (SE 0.16 % of the mean, 1 % of the std,
    # 0.06 % of the mean σ); measured −0.13 %, −0.6 %, −0.02 %.
    assert sim.truth["photons"].mean() == pytest.approx(2250, rel=0.008)
    assert sim.truth["photons"].std() == pytest.approx(250, rel=0.05)
    assert sim.truth["sigma_nm"].mean() == pytest.approx(110, rel=0.003)
    # Mean ADU above the baseline = photons in the image / pixels (ADC/photon 1, no
    # background); noise SE 0.03 %, measured +0.03 %.
    expected = expected_photons(cfg, sim.truth, 0, 20)
    assert sim.movie.mean() - 50 == pytest.approx(expected.mean(), rel=0.002)
    # Some light falls off the edge: measured −2.6 %.
    assert expected.mean() == pytest.approx(246 * 2250 / 4096 * (1 - 0.026), rel=0.013)


def _normalised(movie, baseline, truth_photons_per_frame):
    signal = movie.astype(np.float64) - baseline
    adu_per_photon = signal.sum((1, 2)).mean() / truth_photons_per_frame
    return signal / adu_per_photon


def _autocorrelation(images):
    centred = images - images.mean((1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2
    ac = np.fft.ifft2(power).real.mean(0)
    return ac / ac[0, 0]


def test_zerocost_looks_like_the_deepstorm_demo_movie(shared_data):
    """Same structure of values as the real ThunderSTORM-made demo-1 movie.

    The demo movie has a different camera (baseline ≈ 100 ADU, ≈ 2.24 ADU per photon, read
    from its own frame sums against its truth), so both movies are converted to photons with
    their own baseline and gain. Then the quantiles of the pixel values and the spatial
    autocorrelation (PSF width and emitter density together) must agree.
    """
    folder = shared_data / "deepstorm-demo1-train"
    demo = tifffile.imread(folder / "ArtificialDataset_demo1.tif")
    truth = pd.read_csv(folder / "positions_demo1.csv")
    demo_photons = truth.groupby("frame")["intensity [photon]"].sum().mean()
    demo_n = _normalised(demo, 100.0, demo_photons)
    cfg = build_config("zerocost", seed=3)
    sim = simulate(cfg)
    ours_n = _normalised(sim.movie, cfg.camera.baseline_adu, sim.truth.groupby("frame")["photons"].sum().mean())
    # About 1.5 × the measured differences: emitters per frame −0.7 %, percentiles within
    # 2.0–5.9 %, autocorrelations within 0.0073.
    assert len(sim.truth) / 20 == pytest.approx(len(truth) / 20, rel=0.011)
    for q in (50, 75, 95, 99):
        assert np.percentile(ours_n, q) == pytest.approx(np.percentile(demo_n, q), rel=0.09)
    ac_demo, ac_ours = _autocorrelation(demo_n), _autocorrelation(ours_n)
    np.testing.assert_allclose(ac_ours[0, 1:4], ac_demo[0, 1:4], atol=0.011)
    np.testing.assert_allclose(ac_ours[1:4, 0], ac_demo[1:4, 0], atol=0.011)


def test_same_seed_same_movie_and_different_seed_differs():
    a = simulate(build_config("zerocost", seed=5, n_frames=3))
    b = simulate(build_config("zerocost", seed=5, n_frames=3))
    c = simulate(build_config("zerocost", seed=6, n_frames=3))
    np.testing.assert_array_equal(a.movie, b.movie)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert not np.array_equal(a.movie, c.movie)


def test_telegraph_kinetics_statistics():
    cfg = ActivationConfig(model="kinetics", t_on_frames=3.0, t_off_frames=27.0)
    rng = np.random.default_rng(2)
    n, frames = 2000, 600
    fluo, frame, frac = telegraph_on_fractions(n, frames, cfg, rng)
    assert frac.min() > 0 and frac.max() <= 1.0
    # Stationary ON probability = t_on / (t_on + t_off) = 0.1 of the time; ~2.4 × 10⁵
    # independent samples (ON times of 3 frames): SE 0.6 %, bound 2 SE (measured +0.19 %).
    assert frac.sum() / (n * frames) == pytest.approx(0.1, rel=0.012)
    # No duplicate (fluorophore, frame) pairs.
    assert len(np.unique(fluo * frames + frame)) == len(fluo)


def test_bleaching_removes_emitters_over_time():
    cfg = ActivationConfig(model="kinetics", t_on_frames=2.0, t_off_frames=8.0, t_bleach_frames=100.0)
    fluo, frame, frac = telegraph_on_fractions(3000, 400, cfg, np.random.default_rng(3))
    on_early = frac[frame < 20].sum() / 20
    on_late = frac[(frame >= 200) & (frame < 220)].sum() / 20
    # Survival exp(-t/100): about e^-2.1 ≈ 0.12 of the early level at t ≈ 210.
    assert on_late / on_early == pytest.approx(np.exp(-2.0), rel=0.07)  # measured +4.6 %


def test_kinetics_truth_has_persistent_emitters():
    cfg = build_config("sofi", n_frames=100, seed=1)
    truth, _ = simulate_truth(cfg)
    per_emitter = truth.groupby("emitter_id")
    # A fluorophore keeps its position across frames.
    assert per_emitter["x_nm"].std().max() < 1e-9
    assert per_emitter.size().max() > 1


def test_filaments_concentrate_labels_on_curves():
    cfg = build_config("challenge2016", n_frames=100, seed=2,
                       overrides=["structure.label_spread_nm=10", "activation.density_per_um2=10"])
    truth, _ = simulate_truth(cfg)
    # Render the truth at 100 nm: most pixels stay empty for filaments (not for uniform).
    h, _, _ = np.histogram2d(truth["y_nm"], truth["x_nm"], bins=64, range=[[0, 6400], [0, 6400]])
    assert (h > 0).mean() < 0.2  # measured 0.13 (uniform: 1.0)
    cfg_u = build_config("challenge2016", n_frames=100, seed=2,
                         overrides=["structure.kind=uniform", "activation.density_per_um2=10"])
    tu, _ = simulate_truth(cfg_u)
    hu, _, _ = np.histogram2d(tu["y_nm"], tu["x_nm"], bins=64, range=[[0, 6400], [0, 6400]])
    assert (hu > 0).mean() > 0.9


def test_mask_structure_follows_the_image(tmp_path):
    mask = np.zeros((8, 8), np.float32)
    mask[:, :2] = 1.0  # only the left quarter
    mask[:, 6:] = 3.0  # right quarter, three times denser
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, mask)
    cfg = build_config("zerocost", n_frames=20, overrides=["structure.kind=mask", f"structure.mask={path}"])
    truth, _ = simulate_truth(cfg)
    x = truth["x_nm"].to_numpy()
    assert np.all((x < 1600) | (x >= 4800))
    assert (x >= 4800).sum() / (x < 1600).sum() == pytest.approx(3.0, rel=0.1)


def test_drift_is_applied_to_truth_positions():
    base = build_config("sofi", n_frames=50, seed=7)
    drifted = build_config("sofi", n_frames=50, seed=7,
                           overrides=["drift.velocity_nm_per_frame=[2.0, -1.0]"])
    t0, _ = simulate_truth(base)
    t1, drift = simulate_truth(drifted)
    assert drift["dx_nm"].iloc[-1] == pytest.approx(98.0)
    merged = t0.merge(t1, on=["frame", "emitter_id"], suffixes=("", "_d"))
    assert len(merged) > 100
    np.testing.assert_allclose(merged["x_nm_d"] - merged["x_nm"], 2.0 * merged["frame"], atol=1e-9)
    np.testing.assert_allclose(merged["y_nm_d"] - merged["y_nm"], -1.0 * merged["frame"], atol=1e-9)


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(UserError, match="unknown preset"):
        build_config("nope")
    with pytest.raises(UserError, match="camera.gain"):
        build_config("zerocost", overrides=["camera.gain=3"])
    with pytest.raises(UserError, match="n_frames"):
        build_config("zerocost", overrides=["n_frames=abc"])
    with pytest.raises(UserError, match="camera.gain"):
        path = tmp_path / "c.yaml"
        path.write_text("camera:\n  gain: 3\n")
        build_config(config_file=path)
    with pytest.raises(UserError, match="qe"):
        build_config("zerocost", overrides=["camera.qe=2"])


def test_cli_simulate_writes_movie_truth_and_parameters(tmp_path, run_cli):
    out = tmp_path / "sim"
    code, stdout, err = run_cli("simulate", "--preset", "zerocost", "--frames", "4", "--seed", "9",
                                "--set", "emitters.photons_mean=3000", "--out", out, "--quiet")
    assert code == 0, err
    with tifffile.TiffFile(out / "movie.tif") as tif:
        movie = tif.asarray()
        xres = tif.pages[0].tags["XResolution"].value
    assert movie.shape == (4, 64, 64) and movie.dtype == np.uint16
    assert xres[0] / xres[1] == pytest.approx(10.0)  # 10 pixels per µm = 100 nm pixels
    header = (out / "truth.csv").read_text().splitlines()[0]
    assert header.startswith('"id","frame","x [nm]","y [nm]"')
    truth = pd.read_csv(out / "truth.csv")
    assert truth["frame"].min() == 1 and truth["frame"].max() == 4
    meta = yaml.safe_load((out / "simulation.yaml").read_text())
    assert meta["seed"] == 9 and meta["emitters"]["photons_mean"] == 3000
    assert meta["stormfold_version"]
    # The same parameters reproduce the same movie through --config.
    out2 = tmp_path / "again"
    code, _, err = run_cli("simulate", "--config", out / "simulation.yaml", "--out", out2, "--quiet")
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(out2 / "movie.tif"), movie)


@pytest.mark.parametrize("args,message", [
    (["--preset", "bogus"], "unknown preset"),
    (["--set", "camera.nonsense=1"], "camera.nonsense"),
    (["--set", "noequals"], "key=value"),
    (["--config", "missing.yaml"], "not found"),
])
def test_cli_simulate_bad_input_exits_2_and_writes_nothing(tmp_path, run_cli, args, message):
    out = tmp_path / "never"
    code, _, err = run_cli("simulate", *args, "--out", out, "--quiet")
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
