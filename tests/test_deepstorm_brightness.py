"""Deep-STORM's brightness matching (``--set brightness=match|none|R``)."""
import numpy as np
import pytest
import yaml

from stormfold.deepstorm.brightness import measure, signal_ratio, spot_height
from stormfold.errors import UserError
from stormfold.evaluate import evaluate
from stormfold.io.tables import read_table
from stormfold.localize import localize_movie
from stormfold.localize.registry import load_engine
from stormfold.simulate import build_config, simulate_to_folder

MODEL = "builtin:deepstorm-zerocost"


def test_spot_height_and_fixed_point_on_a_counting_model():
    """A stand-in network that splits an emitter in two above 1.5× its training
    brightness and loses it below 0.5×: the ratio of emitters 3× too bright is found from
    the spots' height (which the splitting does not change) and the count."""
    frames = np.zeros((2, 40, 40), np.float32)
    centres = [(5, 5), (5, 20), (20, 5), (20, 20), (30, 30)]
    for f in range(2):
        for r, c in centres:
            frames[f, r - 1:r + 2, c - 1:c + 2] = 3 * 1000.0 / 9  # 3× a 1000-photon spot
    from stormfold.localize.background import background_level

    level = background_level(frames)[0]  # the 10th percentile (0) + 1.28·√1
    assert spot_height(frames, np.array([5]), np.array([5]), np.array([0])) == \
        pytest.approx(3000.0 - 9 * level, rel=1e-5)

    def detect(given):
        per_emitter = given[0, 5, 5] * 9 / 1000.0  # brightness over the training one
        copies = 0 if per_emitter < 0.5 else 2 if per_emitter > 1.5 else 1
        rows = [(f, r, c) for f in range(2) for r, c in centres for _ in range(copies)]
        return tuple(np.array(v, np.int64) for v in zip(*rows)) if rows else \
            (np.zeros(0, np.int64),) * 3

    # The training frames: the same emitters at the training brightness.
    reference = measure(frames / 3, detect)
    ratio, steps = signal_ratio(frames, detect, reference)
    assert ratio == pytest.approx(3.0, rel=0.03) and steps >= 1


@pytest.fixture(scope="module")
def bright(tmp_path_factory):
    """8 frames of 64 × 64 at 1/µm², emitters of 5,000 ± 550 photons (the model's: 2,250)."""
    folder = tmp_path_factory.mktemp("bright")
    cfg = build_config("zerocost", n_frames=8, seed=8903, overrides=[
        "emitters.photons_mean=5000", "emitters.photons_std=556",
        "activation.density_per_um2=1"])
    simulate_to_folder(cfg, folder, progress=False)
    return folder / "movie.tif", cfg.camera, read_table(folder / "truth.csv")


def _run(bright, mode):
    import warnings

    movie, camera, truth = bright
    engine = load_engine(model=MODEL, options={} if mode is None else {"brightness": mode})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        locs = localize_movie(movie, engine, camera=camera, progress=False).locs
    said = [str(w.message) for w in caught if "as bright as" in str(w.message)]
    row = evaluate(truth, locs, [100.0]).iloc[0]
    return engine, locs, said, row


def test_bright_emitters_are_matched_by_default(bright):
    none, _, said_none, row_none = _run(bright, "none")
    match, locs, said, row = _run(bright, None)  # the default
    assert none.brightness is None and said_none == []
    # Measured: 589 localizations for 328 emitters, JI@100 0.56, without; 0.98 with.
    assert row_none["n_locs"] > 1.5 * row_none["n_truth"] and row_none["jaccard"] < 0.7
    assert match.brightness.ratio == pytest.approx(5000 / 2250, rel=0.15)
    assert row["jaccard"] > 0.93 and len(said) == 1
    assert match.movie_warnings()[0] == said[0]
    # The photons column is the movie's, not the network's training brightness.
    assert np.median(locs["photons"]) == pytest.approx(5000, rel=0.2)
    assert match.describe()["brightness"]["ratio"] == match.brightness.ratio


def test_a_given_ratio_is_used_and_bad_ones_are_refused(bright):
    given, _, said, row = _run(bright, 2.2)
    assert given.brightness.ratio == 2.2 and said == [] and row["jaccard"] > 0.93
    for bad in (0, -1.0, "bright", True, float("inf")):
        with pytest.raises(UserError, match="brightness must be match, none or a ratio"):
            load_engine(model=MODEL, options={"brightness": bad})


def test_training_brightness_is_left_as_it_is(tmp_path):
    """Movies of the training brightness keep the ratio 1: the same table as without."""
    cfg = build_config("zerocost", n_frames=8, seed=8906, overrides=[
        "activation.density_per_um2=6"])
    simulate_to_folder(cfg, tmp_path, progress=False)
    tables = []
    for mode in ("none", "match"):
        engine = load_engine(model=MODEL, options={"brightness": mode})
        tables.append(localize_movie(tmp_path / "movie.tif", engine, camera=cfg.camera,
                                     progress=False).locs)
    assert engine.brightness.ratio == 1.0
    np.testing.assert_array_equal(tables[0][["x_nm", "y_nm"]].to_numpy(),
                                  tables[1][["x_nm", "y_nm"]].to_numpy())


def test_run_records_the_ratio(bright, tmp_path, run_cli):
    movie, _, _ = bright
    out = tmp_path / "loc"
    code, _, err = run_cli("localize", movie, "--model", MODEL, "--out", out, "--quiet")
    assert code == 0, err
    record = yaml.safe_load((out / "run.yaml").read_text())
    assert record["engine"]["brightness"]["ratio"] == pytest.approx(5000 / 2250, rel=0.15)
    assert any("as bright as" in w for w in record["engine_warnings"])


def test_nothing_found_leaves_the_ratio_unmeasured():
    """Review 22: frames without emitters (a dark start) were 'measured' at the floor 1/8
    by halving s until something was found; now a few halvings at most, then NaN."""
    frames = np.random.default_rng(0).poisson(2.0, (4, 32, 32)).astype(np.float32)
    seen = []

    def nothing(given):
        seen.append(float(given.mean()))
        return (np.zeros(0, np.int64),) * 3

    ratio, steps = signal_ratio(frames, nothing, (2000.0, 2400.0))
    assert np.isnan(ratio) and steps == 3
    assert seen[-1] == pytest.approx(4 * seen[1], rel=1e-5)  # looked at up to 4× brighter

    def few(given):  # fewer than MIN_DETECTIONS detections is no measure either
        return (np.zeros(3, np.int64), np.full(3, 5), np.full(3, 5))

    assert np.isnan(signal_ratio(frames, few, (2000.0, 2400.0))[0])
    from stormfold.deepstorm.brightness import BrightnessMatch

    match = BrightnessMatch({}, reference=(2000.0, 2400.0))
    assert match.choose(frames, nothing, None) == 1.0 and match.measured is None


def test_a_dark_start_does_not_decide_the_brightness(tmp_path):
    """12 background-only frames, then emitters of the training brightness: the ratio is
    measured on frames spread over the movie (it was 0.125 from the dark first frames, and
    the movie scored JI 0.16)."""
    import tifffile

    from stormfold.simulate import simulate

    cfg = build_config("zerocost", n_frames=24, seed=8911, overrides=[
        "activation.density_per_um2=2", "n_rows=32", "n_cols=32"])
    sim = simulate(cfg)
    movie = sim.movie.copy()
    rng = np.random.default_rng(1)
    movie[:12] = rng.poisson(2.0, movie[:12].shape) + cfg.camera.baseline_adu
    tifffile.imwrite(tmp_path / "dark_start.tif", movie.astype(np.uint16))
    engine = load_engine(model=MODEL)
    locs = localize_movie(tmp_path / "dark_start.tif", engine, camera=cfg.camera,
                          pixel_size_nm=100.0, batch_frames=4, progress=False).locs
    assert engine.brightness.measured is not None and engine.brightness.ratio == 1.0
    truth = sim.truth[sim.truth["frame"] >= 12]
    row = evaluate(truth, locs[locs["frame"] >= 12], [100.0]).iloc[0]
    assert row["jaccard"] > 0.85
    # All dark: nothing to measure, said in one line, frames used as they are.
    tifffile.imwrite(tmp_path / "dark.tif", movie[:12].astype(np.uint16))
    engine = load_engine(model=MODEL)
    with pytest.warns(UserWarning, match="the brightness could not be measured"):
        localize_movie(tmp_path / "dark.tif", engine, camera=cfg.camera, pixel_size_nm=100.0,
                       progress=False)
    assert engine.brightness.ratio == 1.0 and engine.brightness.measured is None


@pytest.mark.parametrize("bad", [1e30, 1e-30, 1e300, 1e-300, 9.0, 0.1])
def test_a_given_ratio_outside_the_measured_range_is_refused(bad):
    with pytest.raises(UserError, match="a ratio from 0.125 to 8"):
        load_engine(model=MODEL, options={"brightness": bad})
