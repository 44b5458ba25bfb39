"""Engines warn (one line) on movies outside their model's training domain (review 12, #2 and #5).

Deep-STORM and the unrolled solver check their first batch against the training simulation
recorded in model.yaml (:mod:`stormfold.localize.domain`); gridnet counts refined emitters
whose fitted PSF σ sits at a bound of the model's σ range. The classic MLE and gridnet warn
when their first batch is too crowded for them (review 14, D7).
"""
import dataclasses
import re
import warnings

import numpy as np
import pytest
import yaml

from stormfold.localize.domain import (CLASSIC_DENSITY_ABOVE, MARGINS, DensityCheck,
                                       DomainCheck, MovieStats, SigmaBoundCheck,
                                       TrainingDomain, domain_message, movie_stats)
from stormfold.localize.registry import load_engine
from stormfold.simulate import build_config, simulate

ZEROCOST = TrainingDomain(photons=2250.0, background=0.0, density_per_um2=6.0,
                          preset="zerocost")


def _photons(preset, overrides, n_frames=4, size=32, seed=11):
    cfg = build_config(preset, n_frames=n_frames, seed=seed,
                       overrides=[f"n_rows={size}", f"n_cols={size}", *overrides])
    sim = simulate(cfg)
    return cfg.camera.backward(sim.movie), cfg.pixel_size_nm


def _domain_warnings(engine, photons, pixel_size_nm):
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        if hasattr(engine, "process_with_context"):
            engine.process_with_context(photons, None, None, 0, pixel_size_nm)
        else:
            engine.process(photons, 0, pixel_size_nm)
    return [str(w.message) for w in said if "training domain" in str(w.message)
            or "fitted PSF sigma" in str(w.message)]


# ---------------------------------------------------------------------- measurements
def test_movie_stats_known_answers():
    rng = np.random.default_rng(0)
    frames = rng.poisson(50.0, (3, 40, 40)).astype(np.float32)
    frames[:, 10, 10] += 1000.0  # one 1000-photon "emitter" per frame
    stats = movie_stats(frames, 3, 100.0)
    assert stats.background == pytest.approx(50.0, abs=1.5)
    assert stats.photons == pytest.approx(1000.0, abs=0.05 * 1000 + 1600 * 1.5)
    assert stats.density_per_um2 == pytest.approx(3 / (3 * 16.0))
    assert movie_stats(frames, 0, 100.0).photons == np.inf  # signal, nothing found
    # A negative 10th percentile (read noise, no background) counts as no background.
    noise = rng.normal(0.0, 4.5, (2, 40, 40)).astype(np.float32)
    assert movie_stats(noise, 1, 100.0).background == 0.0


@pytest.mark.parametrize("stats,words", [
    (MovieStats(5.0, 2100.0, 6.0), None),
    (MovieStats(44.0, 760.0, 11.9), None),
    (MovieStats(46.0, 2100.0, 6.0), "background 46 photons/px"),
    (MovieStats(5.0, 700.0, 6.0), "700 photons of signal per localization"),
    (MovieStats(5.0, 6800.0, 6.0), "6800 photons of signal per localization"),
    (MovieStats(5.0, np.inf, 0.0), "no localization"),
    (MovieStats(5.0, 2100.0, 12.5), "12.5 localizations/µm²"),
])
def test_domain_message_margins(stats, words):
    message = domain_message(stats, ZEROCOST)
    if words is None:
        assert message is None
    else:
        assert words in message and "zerocost" in message and "\n" not in message


def test_training_domain_from_the_shipped_models_metadata():
    from stormfold.modelfile import builtin_root

    def meta(name):
        return yaml.safe_load((builtin_root() / name / "model.yaml").read_text())

    assert TrainingDomain.from_meta(meta("deepstorm-zerocost")) == \
        dataclasses.replace(ZEROCOST, sigma_nm=110.0)
    unrolled = TrainingDomain.from_meta(meta("unrolled-isbi2013"))
    assert (unrolled.photons, unrolled.background, unrolled.density_per_um2) == \
        (470.0, 8.8, 4.88)
    assert TrainingDomain.from_meta(meta("gridnet-generalist")) is None
    assert TrainingDomain.from_meta({"training_data": {"source": "movie"}}) is None


def test_domain_check_warns_once_through_the_given_channel():
    check = DomainCheck(ZEROCOST)
    said = []
    check.warn = said.append
    frames = np.full((2, 32, 32), 300.0, np.float32)
    check(frames, 10, 100.0)
    check(frames, 10, 100.0)
    assert len(said) == 1 and "background 3" in said[0]
    check.reset(said.append)  # a new movie is checked again
    check(frames, 10, 100.0)
    assert len(said) == 2
    quiet = DomainCheck(None)
    quiet.warn = said.append
    quiet(frames, 10, 100.0)
    assert len(said) == 2 and MARGINS["density_above"] == 2.0


# ---------------------------------------------------------------------- Deep-STORM
@pytest.mark.parametrize("overrides,options,words", [
    ([], {}, None),
    (["emitters.photons_mean=300", "emitters.photons_std=50"], {"brightness": "none"},
     "signal per localization"),
    # Matched to the training brightness (the default), the emitters are in its domain.
    (["emitters.photons_mean=300", "emitters.photons_std=50"], {}, None),
    (["background.photons=300"], {"background": "none"}, "photons/px (trained at 0)"),
    # Matched to the training level (the default), the background is no longer outside it.
    (["background.photons=300"], {}, None),
])
def test_deepstorm_warns_off_its_training_simulation(overrides, options, words):
    photons, px = _photons("zerocost", overrides)
    engine = load_engine(model="builtin:deepstorm-zerocost", options=options)
    said = _domain_warnings(engine, photons, px)
    if words is None:
        assert said == []
    else:
        assert len(said) == 1 and words in said[0], said


# ---------------------------------------------------------------------- unrolled
@pytest.mark.parametrize("overrides,warns", [
    ([], False),
    (["background.photons=300"], True),
])
def test_unrolled_warns_off_its_training_simulation(overrides, warns):
    engine = load_engine(model="builtin:unrolled-isbi2013")
    sim = engine.meta["training"]["data"]["simulation"]
    base = [f"{section}.{key}={value}" for section in ("emitters", "background", "activation")
            for key, value in sim[section].items() if not isinstance(value, (dict, list))
            and value is not None]
    photons, px = _photons(sim["preset"], [*base, *overrides], size=48)
    said = _domain_warnings(engine, photons, px)
    assert len(said) == (1 if warns else 0), said
    if warns:
        assert 280 <= int(re.search(r"background (\d+) photons/px", said[0])[1]) <= 320
        assert "challenge2016" in said[0]


# ---------------------------------------------------------------------- gridnet σ
def test_sigma_bound_check_counts_and_waits_for_enough_emitters():
    check = SigmaBoundCheck((0.7, 2.0))
    said = []
    check.warn = said.append
    check(np.full(30, 2.0))  # 100 % at the bound, but too few emitters yet
    assert said == []
    check(np.r_[np.full(10, 1.99), np.full(40, 1.2)])  # 40 / 80 = 50 % within 2 %
    assert len(said) == 1 and "above the range 0.7–2 px" in said[0]
    check(np.full(100, 2.0))
    assert len(said) == 1
    check.reset()
    assert list(check.counts) == [0, 0, 0] and check.message is None
    low = SigmaBoundCheck((0.7, 2.0))
    low(np.r_[np.full(60, 1.1), np.full(30, 0.71), [np.nan]])  # 33 %: no warning
    assert low.message is None and list(low.counts) == [90, 30, 0]


def test_sigma_bound_check_warns_earlier_above_the_range():
    """Crowded frames with a PSF above the range put only 20–32 % of the emitters at the
    upper bound: a quarter warns there (and names binning); the lower bound keeps 40 %."""
    above = SigmaBoundCheck((0.7, 2.0))
    above(np.r_[np.full(18, 2.0), np.full(42, 1.5)])  # 30 % at the upper bound
    assert above.message is not None and "--set bin=2" in above.message
    below = SigmaBoundCheck((0.7, 2.0))
    below(np.r_[np.full(18, 0.7), np.full(42, 1.5)])  # 30 % at the lower bound: no warning
    assert below.message is None
    near = SigmaBoundCheck((0.7, 2.0))
    near(np.r_[np.full(12, 2.0), np.full(48, 1.5)])  # 20 %: as at σ 1.8 px, no warning
    assert near.message is None


def _gridnet_movie(sigma_px):
    return _photons("zerocost", [f"emitters.sigma_nm={100 * sigma_px}", "emitters.sigma_std_nm=5",
                                 "activation.density_per_um2=0.5"], n_frames=8, size=64, seed=3)


@pytest.mark.parametrize("sigma_px,warns", [(1.1, False), (2.5, True)])
def test_gridnet_warns_when_fitted_sigmas_sit_at_a_bound(sigma_px, warns):
    # bin=1: the pixels as they are (by default the generalist bins such a movie itself).
    engine = load_engine(model="builtin:gridnet-generalist", options={"bin": 1})
    photons, px = _gridnet_movie(sigma_px)
    said = _domain_warnings(engine, photons, px)
    # Measured: 0 of 154 refined emitters at a bound at 1.1 px, 61 of 109 (56 %) at 2.5 px.
    assert len(said) == (1 if warns else 0), said
    if warns:
        assert "above the range 0.7–2 px" in said[0]
    else:
        assert engine.domain_check.counts[0] >= 50
    # By default the wide PSF is binned 2 × 2 instead, and that is what is said.
    default = load_engine(model="builtin:gridnet-generalist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default.process_with_context(photons, None, None, 0, px)
    said = [str(w.message) for w in caught if "sigma" in str(w.message)]
    assert len(said) == (1 if warns else 0), said
    if warns:
        assert "binned 2 × 2" in said[0] and default.chosen == 2


def test_gridnet_skips_the_sigma_check_when_sigma_is_given():
    engine = load_engine(model="builtin:gridnet-generalist", options={"sigma_nm": 200.0})
    photons, px = _gridnet_movie(2.0)
    assert _domain_warnings(engine, photons, px) == []
    assert engine.domain_check.counts[0] == 0


def test_stormfold_run_records_the_domain_warning(tmp_path):
    """Under ``stormfold run`` the warning also reaches run.log, run.yaml and the report."""
    from stormfold.pipeline import load_run_config, run
    from stormfold.simulate import simulate_to_folder

    cfg = build_config("zerocost", n_frames=8, seed=4,
                       overrides=["n_rows=32", "n_cols=32", "background.photons=300"])
    simulate_to_folder(cfg, tmp_path / "sim", progress=False)
    out = tmp_path / "out"
    config = load_run_config(overrides={
        "movie": str(tmp_path / "sim" / "movie.tif"), "output": str(out),
        "engine": {"model": "builtin:deepstorm-zerocost", "options": {"background": "none"}},
        "postprocess": {"steps": []}})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        run(config, quiet=True)
    lines = [str(w.message) for w in said if "training domain" in str(w.message)]
    assert len(lines) == 1
    meta = yaml.safe_load((out / "run.yaml").read_text())
    assert lines[0] in meta["warnings"]
    assert lines[0] in (out / "run.log").read_text()
    # stormfold localize records it in run.yaml too.
    from stormfold.localize import localize_movie

    engine = load_engine(model="builtin:deepstorm-zerocost", options={"background": "none"})
    for folder in ("loc0", "loc"):  # the same engine checks each movie it localizes
        res = localize_movie(tmp_path / "sim" / "movie.tif", engine, out_dir=tmp_path / folder,
                             progress=False)
        assert res.run["engine_warnings"] == [lines[0]]
    assert yaml.safe_load((tmp_path / "loc" / "run.yaml").read_text())["engine_warnings"] == \
        [lines[0]]


# ---------------------------------------------------------------------- density (review 14, D7)
def test_density_check_warns_once_above_its_limit():
    check = DensityCheck(1.0, "too crowded")
    said = []
    check.warn = said.append
    check((4, 50, 50), 100, 100.0)  # 4 frames of 25 µm²: 1.0/µm², not above the limit
    assert said == [] and check.density == pytest.approx(1.0) and check.message is None
    check((4, 50, 50), 1000, 100.0)  # this movie was checked on its first batch
    assert said == []
    check.reset(said.append)
    check((50, 50), 26, 100.0)  # a single frame
    check((4, 50, 50), 1000, 100.0)
    assert said == ["first frames hold 1.0 localizations/µm² per frame (more than 1): "
                    "too crowded"] and check.message == said[0]


def _density_warnings(engine, photons, pixel_size_nm):
    engine.start_movie()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for _ in range(2):  # a second batch of the same movie does not warn again
            engine.process_with_context(photons, None, None, 0, pixel_size_nm)
    return [str(w.message) for w in said if "localizations/µm²" in str(w.message)]


@pytest.mark.parametrize("spec,density,warns", [
    # experiments/density_warning.py: the classic engine reports 0.27 at a true 0.3/µm²
    # and 1.63 at 3 (JI@100 0.40); gridnet 0.99 at 1 and 17.0 at 20 (JI@100 0.69).
    ({"engine": "classic"}, 0.3, False),
    ({"engine": "classic"}, 3.0, True),
    ({"model": "builtin:gridnet-generalist"}, 1.0, False),
    ({"model": "builtin:gridnet-generalist"}, 20.0, True),
])
def test_crowded_movies_warn_once(spec, density, warns):
    engine = load_engine(**spec)
    photons, px = _photons("zerocost", [f"activation.density_per_um2={density}"],
                           n_frames=4, size=64, seed=21)
    said = _density_warnings(engine, photons, px)
    assert len(said) == (1 if warns else 0), said
    assert engine.movie_warnings() == said
    if not warns:
        return
    value = float(re.search(r"hold ([\d.]+) localizations", said[0])[1])
    if "engine" in spec:
        assert value > CLASSIC_DENSITY_ABOVE and "builtin:gridnet-generalist" in said[0]
    else:
        assert 12.0 < value < 20.0 and "10/µm² builtin:gridnet-generalist was trained" in said[0]
        assert engine.domain_check.message is None  # the σ check is still there, silent


def test_stormfold_localize_records_the_density_warning(tmp_path, run_cli):
    sim = tmp_path / "sim"
    code, _, err = run_cli("simulate", "--preset", "zerocost", "--frames", "4", "--seed", "5",
                           "--set", "activation.density_per_um2=3", "--out", sim, "--quiet")
    assert code == 0, err
    code, _, err = run_cli("localize", sim / "movie.tif", "--engine", "classic",
                           "--out", tmp_path / "loc", "--quiet")
    assert code == 0, err
    recorded = yaml.safe_load((tmp_path / "loc" / "run.yaml").read_text())["engine_warnings"]
    assert len(recorded) == 1 and "too crowded for the classic" in recorded[0]
    # stormfold run gives it through its own warn (run.yaml's warnings and run.log).
    from stormfold.pipeline import load_run_config, run

    out = tmp_path / "run"
    config = load_run_config(overrides={"movie": str(sim / "movie.tif"), "output": str(out),
                                        "engine": {"engine": "classic"},
                                        "postprocess": {"steps": []}})
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        run(config, quiet=True)
    assert recorded[0] in yaml.safe_load((out / "run.yaml").read_text())["warnings"]
    assert recorded[0] in (out / "run.log").read_text()
