"""Calibration: statistics helpers, round trips on simulations, real data, CLI."""
import math

import numpy as np
import pytest
import tifffile
import yaml

from stormfold.calibrate import calibrate
from stormfold.calibrate.estimate import robust_mean_std
from stormfold.calibrate.fluctuation import FluctuationStats, estimate_fluctuation, pixel_overlap
from stormfold.calibrate.scan import half_sample_mode, lower_spread, moments_from_histogram
from stormfold.simulate import build_config, simulate, simulate_to_folder


# ---------------------------------------------------------------------------- helpers
def test_moments_from_histogram():
    v = np.random.default_rng(0).poisson(7.0, 50_000) + 100
    m = moments_from_histogram(np.bincount(v))
    d = v - v.mean()
    assert m["n"] == v.size and m["mean"] == pytest.approx(v.mean())
    assert m["var"] == pytest.approx((d ** 2).mean()) and m["m3"] == pytest.approx((d ** 3).mean())
    assert m["m3"] == pytest.approx(7.0, rel=0.05)  # third cumulant of Poisson(λ) is λ (−3.2 %)


def test_mode_and_lower_spread_ignore_the_bright_side():
    rng = np.random.default_rng(1)
    # 60 % of the pixels carry signal (at least a few photons above the background).
    v = np.concatenate([rng.normal(50, 4, 40_000), 65 + rng.exponential(300, 60_000)])
    assert half_sample_mode(v) == pytest.approx(50, abs=0.2)  # measured 49.89
    assert lower_spread(v) == pytest.approx(4, rel=0.035)  # measured 3.91


def test_robust_mean_std_removes_outliers():
    rng = np.random.default_rng(2)
    core = rng.normal(3000, 500, 5000)
    mean, std, keep = robust_mean_std(np.concatenate([core, rng.uniform(0, 300, 200),
                                                      rng.normal(6000, 700, 300)]))
    # Bounds ≈ 2 standard errors of 5000 draws (SE 0.24 % of the mean, 1 % of the std);
    # measured +0.02 %, +0.3 %.
    assert mean == pytest.approx(3000, rel=0.005) and std == pytest.approx(500, rel=0.02)
    mean, std, _ = robust_mean_std(rng.uniform(700, 900, 20_000))  # nothing clipped
    # Measured 799.85 (SE 0.41) and std +1.7 %.
    assert mean == pytest.approx(800, abs=1.0) and std == pytest.approx(200 / 12 ** 0.5, rel=0.025)


def test_pixel_overlap_against_brute_force():
    """k(t) = overlap of two unit pixels t apart, blurred by the PSF: brute-force Monte Carlo
    of two pixel-integrated Gaussians, and Σ_t k(t) = 1."""
    s = 1.2
    t = np.arange(-8, 9)
    k = pixel_overlap(t, s)
    assert k.sum() == pytest.approx(1.0, abs=1e-6)
    from scipy.special import erf

    z = np.linspace(-12, 13, 20001)  # emitter position along one axis (px)

    def frac(i):
        return 0.5 * (erf((i + 1 - z) / (np.sqrt(2) * s)) - erf((i - z) / (np.sqrt(2) * s)))

    brute = [np.trapezoid(frac(0) * frac(tt), z) for tt in range(4)]
    np.testing.assert_allclose(k[8:12], brute, rtol=1e-4)


def test_fluctuation_estimator_at_high_density():
    """At 6 emitters/µm² (zerocost preset) no spot is isolated, yet the covariance of the
    fluctuations gives σ, photons and density."""
    cfg = build_config("zerocost", n_frames=200, seed=3)
    movie = simulate(cfg).movie
    st = FluctuationStats(shape=movie.shape[1:])
    for a in range(0, 200, 64):
        st.add(movie[a:a + 64])
    cam = cfg.camera
    cv2 = (cfg.emitters.photons_std / cfg.emitters.photons_mean) ** 2
    est = estimate_fluctuation(st, cam.baseline_adu, cv2)
    assert est.ok
    # About 1.5 × the measured errors (−0.5 %, +0.7 %, −3.3 %).
    assert est.sigma_px * cfg.pixel_size_nm == pytest.approx(110, rel=0.008)
    assert est.emitter_adu == pytest.approx(2250, rel=0.012)
    assert est.density_per_px2 * 100 == pytest.approx(6.0, rel=0.05)


# ---------------------------------------------------------------------------- round trips
def _sim(tmp_path, preset, n_frames, overrides=(), seed=11):
    cfg = build_config(preset, n_frames=n_frames, seed=seed, overrides=list(overrides))
    simulate_to_folder(cfg, tmp_path / "sim", progress=False)
    return cfg, tmp_path / "sim" / "movie.tif"


def test_round_trip_low_density(tmp_path):
    cfg, movie = _sim(tmp_path, "zerocost", 400, ["activation.density_per_um2=0.5"])
    r = calibrate(movie)
    cam, em = r.camera, r.emitters
    # The documented targets are baseline ± 2 ADU, read noise ± 10 %, σ ± 5 %, photons ± 10 %;
    # the bounds here are about 1.5 × what this simulation measures (50.002 ADU, 4.4999 ADU,
    # +1.7 %, +0.15 %, −1.1 %, −4 %, −5.4 %), with floors of 0.1 ADU and 0.5 %.
    assert cam.baseline_adu == pytest.approx(50, abs=0.1)
    assert cam.read_noise_adu == pytest.approx(4.5, rel=0.005)
    assert cam.adu_per_e == pytest.approx(1.0, rel=0.025) and r.line.identifiable
    assert em.n_spots >= 200 and em.source.endswith("isolated spots")
    assert em.sigma_nm == pytest.approx(110, rel=0.005)
    assert em.photons_mean == pytest.approx(2250, rel=0.016)
    assert em.photons_std == pytest.approx(250, rel=0.06)
    assert 0.25 <= em.density_counted_per_um2 <= 0.5  # a lower bound, within a factor 2
    assert em.density_per_um2 == pytest.approx(0.5, rel=0.08)
    assert r.simulation["background"]["photons"] < 0.25  # measured 0, README 0.14 (1000 frames)


def test_wide_psf_with_background_reads_the_gain_near_right(tmp_path):
    """Review 20 D1: spots with an undetected neighbour inflated the residual variances and
    the gain came out 15 % low here (e_per_adu 1.70 for 2; background 64 for 100); the
    deviance cut with the lower-quartile spread leaves them out (measured 1.90, 86)."""
    cfg, movie = _sim(tmp_path, "zerocost", 400, [
        "emitters.sigma_nm=180", "emitters.sigma_std_nm=0", "background.photons=100",
        "camera.e_per_adu=2", "camera.readout_e=2", "camera.baseline_adu=100",
        "activation.density_per_um2=0.5"])
    r = calibrate(movie)
    assert r.line.identifiable
    assert r.e_per_adu == pytest.approx(2.0, rel=0.09)
    assert r.simulation["background"]["photons"] == pytest.approx(100, rel=0.25)


@pytest.mark.parametrize("e_per_adu,readout_e,resolved", [(3.6, 0.0, True), (2.0, 1.6, False)])
def test_lattice_scan_on_the_cameras_own_output(e_per_adu, readout_e, resolved):
    """Background of the camera model (an independent generator): with a coarse ADU and no
    read noise the exact rounded-lattice fit recovers the camera; with read noise of an ADU
    no gain stands out and the scan says so (the moments are kept)."""
    from stormfold.calibrate.estimate import LATTICE_MIN_MARGIN, lattice_scan
    from stormfold.physics.camera import Camera

    cam = Camera(e_per_adu=e_per_adu, readout_e=readout_e, baseline_adu=100.0)
    adu = cam.forward(np.full((400, 64, 64), 30.0), np.random.default_rng(5))
    fit = lattice_scan(np.bincount(adu.ravel(), minlength=1024), 1.03 / e_per_adu)
    assert (fit.margin > LATTICE_MIN_MARGIN) == resolved
    if resolved:
        assert fit.adu_per_e == pytest.approx(1 / e_per_adu, rel=0.011)  # measured −0.7 %
        assert fit.baseline_adu == pytest.approx(100.0, abs=0.5)
        assert fit.background_e == pytest.approx(30.0, rel=0.05)
        assert fit.read_noise_adu < 0.3


def test_round_trip_coarse_adu_without_read_noise(tmp_path):
    """thunderstorm preset (3.6 e⁻/ADU, no read noise, 30 background photons): the lattice
    fit replaces the biased skewness split."""
    cfg, movie = _sim(tmp_path, "thunderstorm", 1000)
    r = calibrate(movie)
    cam, em = r.camera, r.emitters
    assert cam.split_source.startswith("maximum likelihood")
    # About 1.5 × the measured errors (+0.36 ADU, −0.7 %, −3.3 %, +0.6 %, −0.7 %).
    assert cam.baseline_adu == pytest.approx(414, abs=0.55)
    assert cam.adu_per_e == pytest.approx(1 / 3.6, rel=0.011)
    assert r.simulation["background"]["photons"] == pytest.approx(30, rel=0.05)
    assert em.photons_mean == pytest.approx(800, rel=0.01)
    assert em.sigma_nm == pytest.approx(cfg.emitters.sigma_nm, rel=0.011)


def test_read_noise_is_not_taken_for_a_lattice(tmp_path):
    """Review 20 (D0): a CCD of 4 e⁻/ADU and 8 e⁻ read noise. Its smooth background
    histogram also fits a rounded Poisson lattice without read noise, but only with 2.5×
    its third moment: the lattice made the background 112 photons (50) and the read noise
    1.2 e⁻. The slope is used instead, and a note says why."""
    cfg, movie = _sim(tmp_path, "thunderstorm", 300, [
        "n_rows=64", "n_cols=64", "camera.e_per_adu=4", "camera.readout_e=8",
        "camera.baseline_adu=400", "background.photons=50", "emitters.sigma_nm=150",
        "emitters.sigma_std_nm=0", "activation.density_per_um2=0.5",
        "emitters.photons_min=1800", "emitters.photons_max=2200"], seed=44)
    r = calibrate(movie)
    cam = r.camera
    assert not cam.split_source.startswith("maximum likelihood")
    assert any("read noise, not a lattice" in n for n in cam.notes)
    # Measured: baseline 402.1 ADU, read noise 2.10 ADU (8.1 e⁻), background 40 photons
    # (the slope's −4 % gain, review 20 D1, is still in it).
    assert cam.baseline_adu == pytest.approx(400, abs=4)
    assert cam.read_noise_adu * 4 == pytest.approx(8, rel=0.15)
    assert 30 < r.simulation["background"]["photons"] < 60


def test_an_emccd_calibrated_without_emccd_is_a_warning(tmp_path):
    """Review 20 (D4): it was a note on stdout, while the opposite mistake warns."""
    cfg, movie = _sim(tmp_path, "challenge2016", 300)
    with pytest.warns(UserWarning, match="may be an EMCCD .* try --emccd"):
        calibrate(movie)


def test_round_trip_emccd(tmp_path):
    """challenge2016 camera (EMCCD): baseline and gain from the background's skewness."""
    cfg, movie = _sim(tmp_path, "challenge2016", 800,
                      ["structure.kind=uniform", "activation.density_per_um2=0.3"])
    r = calibrate(movie, emccd=True, qe=0.9)
    cam, em = r.camera, r.emitters
    # About 1.5 × the measured errors (−0.13 %, −0.6 ADU, +0.35 %, −0.02 %, +0.23 %), with
    # floors of 0.5 %; the baseline also within 3 standard errors of its own estimate.
    assert cam.adu_per_e == pytest.approx(300 / 45, rel=0.005)
    assert cam.baseline_adu == pytest.approx(100, abs=1.0)
    assert abs(cam.baseline_adu - 100) < 3 * cam.baseline_se_adu
    assert r.simulation["background"]["photons"] == pytest.approx(50, rel=0.006)
    assert em.sigma_nm == pytest.approx(cfg.emitters.sigma_nm, rel=0.005)
    assert em.photons_mean == pytest.approx(3000, rel=0.005)
    assert r.simulation["camera"]["em_gain"] == 100.0  # the split does not matter
    assert r.e_per_adu == pytest.approx(100 / (300 / 45), rel=0.02)
    assert "e_per_adu 15" in r.summary() and "(EM gain 100)" in r.summary()
    # Without --emccd the gain is the doubled "Poisson" gain (the documentation's correction).
    r2 = calibrate(movie, qe=0.9, start=0, stop=300)
    assert r2.camera.adu_per_e == pytest.approx(2 * 300 / 45, rel=0.04)  # measured +2.5 %
    assert r2.emitters.photons_mean == pytest.approx(1500, rel=0.035)  # measured −2.2 %


def test_round_trip_high_density(tmp_path):
    """zerocost preset (6/µm²): the camera from the gaps, σ/photons/density from the
    fluctuations; the counted density is a (gross) lower bound; the gain cannot be told."""
    cfg, movie = _sim(tmp_path, "zerocost", 300)
    r = calibrate(movie)
    cam, em = r.camera, r.emitters
    # About 1.5 × the measured errors (−0.12 ADU, −2.9 %, −0.75 %, +1.1 %, −3.6 %).
    assert cam.baseline_adu == pytest.approx(50, abs=0.2)
    assert cam.read_noise_adu == pytest.approx(4.5, rel=0.045)
    assert not r.line.identifiable and any("cannot be told" in n for n in r.provenance["notes"])
    assert em.source.startswith("fluctuation")
    assert em.sigma_nm == pytest.approx(110, rel=0.012)
    assert em.photons_mean == pytest.approx(2250, rel=0.016)
    assert em.density_per_um2 == pytest.approx(6.0, rel=0.055)
    assert em.density_counted_per_um2 < 6.0


def test_deepstorm_demo_movie(shared_data, tmp_path):
    """Real third-party movie (ThunderSTORM simulation, ~248 emitters per frame): with the
    gain measured by the lead (2.24 ADU per photon) σ and photons fall in the ranges its
    ground truth lists; the counted density is a gross underestimate."""
    movie = shared_data / "deepstorm-demo1-train" / "ArtificialDataset_demo1.tif"
    r = calibrate(movie, e_per_adu=1 / 2.24)
    em = r.emitters
    assert 106 <= em.sigma_nm <= 115
    assert 2000 <= em.photons_mean <= 2500
    assert em.density_counted_per_um2 < 0.5 * 6.05
    assert em.density_per_um2 == pytest.approx(6.05, rel=0.13)  # measured −8.6 %


def test_unknown_spreads_are_written_as_null_and_simulated_without_spread(tmp_path):
    """A spread calibrate cannot estimate is null in simulation.yaml (not a measured 0);
    the simulator draws it as no spread, exactly as an explicit 0."""
    from stormfold.calibrate.core import simulation_parameters
    from stormfold.calibrate.estimate import CameraEstimate, EmitterEstimate
    from stormfold.config import dump_yaml
    from stormfold.simulate import simulate

    camera = CameraEstimate(baseline_adu=50.0, adu_per_e=1.0, excess_factor=1.0,
                            read_noise_adu=4.5, background_e=0.0, background_mean_adu=50.0,
                            background_std_adu=4.5, gain_source="given", split_source="x")
    emitters = EmitterEstimate(n_spots=3, photons_mean=2000.0, photons_std=math.nan,
                               sigma_nm=110.0, sigma_std_nm=math.nan, density_per_um2=1.0,
                               density_counted_per_um2=0.5, source="fluctuation covariance")
    params = simulation_parameters(camera, emitters, (16, 16), 4, 100.0, 1.0, 100.0)
    assert params["emitters"]["photons_std"] is None
    assert params["emitters"]["sigma_std_nm"] is None
    (tmp_path / "sim.yaml").write_text(dump_yaml(params))
    assert "photons_std: null" in (tmp_path / "sim.yaml").read_text()
    unknown = build_config(config_file=tmp_path / "sim.yaml", seed=5)
    assert unknown.emitters.photons_std is None and unknown.emitters.photons_spread == 0.0
    zero = build_config(config_file=tmp_path / "sim.yaml", seed=5,
                        overrides=["emitters.photons_std=0", "emitters.sigma_std_nm=0"])
    a, b = simulate(unknown), simulate(zero)
    np.testing.assert_array_equal(a.movie, b.movie)
    assert a.truth["photons"].nunique() == 1 and a.truth["photons"].iloc[0] == 2000.0


# ---------------------------------------------------------------------------- CLI
def test_cli_calibrate_then_simulate(tmp_path, run_cli):
    _, movie = _sim(tmp_path, "zerocost", 150, ["activation.density_per_um2=0.5"])
    code, out, err = run_cli("calibrate", movie, "--out", tmp_path / "cal", "--quiet",
                             "--roi", "0,0,48,64", "--frames", "0:150")
    assert code == 0, err
    assert "lower bound" in out
    # one name for the gain everywhere: e_per_adu, as localize --e-per-adu takes it
    assert "e_per_adu 1" in out and "ADU/e" not in out
    meta = yaml.safe_load((tmp_path / "cal" / "simulation.yaml").read_text())
    assert "adu_per_e" not in meta["provenance"]["camera"]
    assert meta["provenance"]["camera"]["e_per_adu"] == meta["camera"]["e_per_adu"]
    assert meta["n_cols"] == 48 and meta["n_rows"] == 64 and "provenance" in meta
    html = (tmp_path / "cal" / "calibration.html").read_text()
    assert "data:image/png;base64," in html and "simulation.yaml" in html
    assert (tmp_path / "cal" / "calibration.png").read_bytes()[:4] == b"\x89PNG"
    cfg = build_config(config_file=tmp_path / "cal" / "simulation.yaml")
    assert cfg.camera.baseline_adu == pytest.approx(50, abs=1.3)  # measured 49.13 (150 frames)
    code, _, err = run_cli("simulate", "--config", tmp_path / "cal" / "simulation.yaml",
                           "--frames", "5", "--out", tmp_path / "resim", "--quiet")
    assert code == 0, err
    assert tifffile.imread(tmp_path / "resim" / "movie.tif").shape == (5, 64, 48)


def test_cli_calibrate_bad_inputs(tmp_path, run_cli):
    _, movie = _sim(tmp_path, "zerocost", 40, ["activation.density_per_um2=0.5"])
    nopx = tmp_path / "nopx.tif"
    tifffile.imwrite(nopx, np.zeros((3, 32, 32), np.uint16), photometric="minisblack")
    cases = [
        (tmp_path / "missing.tif",),
        (movie, "--roi", "0,0,200,64"),
        (movie, "--roi", "a,b"),
        (movie, "--roi", "0,0,10,10"),
        (movie, "--frames", "50:60"),
        (movie, "--frames", "x"),
        (movie, "--qe", "1.5"),
        (movie, "--emccd", "--em-gain", "1"),
        (nopx,),
    ]
    for i, args in enumerate(cases):
        out = tmp_path / f"out{i}"
        code, _, err = run_cli("calibrate", *args, "--out", out, "--quiet")
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and not out.exists(), (args, err)
