"""Pixel binning (``--set bin=B``): b × b super-pixels for PSFs wider than a model's range."""
import numpy as np
import pandas as pd
import pytest

from stormfold.errors import UserError
from stormfold.localize.binning import BinnedEngine, bin_frames, check_bin, with_binning
from stormfold.localize.engine import Engine, EngineOutput
from stormfold.physics.camera import Camera


def test_bin_frames_sums_blocks_and_drops_the_remainder():
    rng = np.random.default_rng(0)
    frames = rng.random((2, 7, 9)).astype(np.float32)
    out = bin_frames(frames, 2)
    assert out.shape == (2, 3, 4) and out.dtype == np.float32
    for t in range(2):  # block by block, written out
        for r in range(3):
            for c in range(4):
                expect = sum(frames[t, 2 * r + i, 2 * c + j] for i in range(2) for j in range(2))
                assert out[t, r, c] == pytest.approx(expect, rel=1e-6)
    assert np.array_equal(bin_frames(frames, 1), frames)
    with pytest.raises(UserError, match="no whole 8 × 8 super-pixel"):
        bin_frames(frames, 8)


@pytest.mark.parametrize("value", [0, -1, 9, 2.5, "two", True, float("nan"), None])
def test_bad_bin_is_refused(value):
    with pytest.raises(UserError, match="bin must be auto or a whole number"):
        check_bin(value)


def test_binned_camera_matches_summed_pixels():
    cam = Camera(qe=0.8, spurious_charge=0.01, em_gain=50.0, readout_e=12.0, e_per_adu=4.0,
                 baseline_adu=100.0)
    b, photons = 3, 40.0
    binned = cam.binned(b)
    assert binned.mean_adu(b * b * photons) == pytest.approx(b * b * cam.mean_adu(photons))
    # Variances add; only the per-pixel rounding (1/12 ADU² each) is not b² times.
    assert binned.adu_variance(b * b * photons) - 1 / 12 == \
        pytest.approx(b * b * (cam.adu_variance(photons) - 1 / 12))
    # Monte Carlo: summed noisy pixels against the binned camera's theory.
    rng = np.random.default_rng(1)
    adu = cam.forward(np.full((20000, b, b), photons), rng).astype(np.float64).sum(axis=(1, 2))
    assert adu.mean() == pytest.approx(binned.mean_adu(b * b * photons), rel=0.01)
    assert adu.var() == pytest.approx(binned.adu_variance(b * b * photons), rel=0.05)
    # The photons recovered from the sums by the binned camera are the summed photons.
    assert binned.backward(adu).mean() == pytest.approx(b * b * photons, rel=0.02)


class _Recorder(Engine):
    """Reports one emitter at the centre of the brightest binned pixel of every frame."""

    name = "recorder"

    def __init__(self):
        self.seen = []
        self.camera = None

    def process(self, photons, first_frame, pixel_size_nm):
        self.seen.append((photons.shape, pixel_size_nm))
        rows = []
        for i, frame in enumerate(photons):
            r, c = np.unravel_index(np.argmax(frame), frame.shape)
            rows.append((first_frame + i, (c + 0.5) * pixel_size_nm, (r + 0.5) * pixel_size_nm))
        return EngineOutput(pd.DataFrame(rows, columns=["frame", "x_nm", "y_nm"]),
                            np.ones((3, 3), np.float32))

    def set_camera(self, camera):
        self.camera = camera

    def training_pixel_size_nm(self):
        return 100.0


def test_binned_engine_positions_are_on_the_movie_frame():
    inner = _Recorder()
    engine = with_binning(inner, 2)
    assert isinstance(engine, BinnedEngine) and with_binning(inner, 1) is inner
    photons = np.zeros((2, 11, 10), np.float32)
    photons[0, 6, 3] = photons[0, 7, 2] = 50.0  # camera pixels (6..7, 2..3): super-pixel (3, 1)
    photons[1, 0, 9] = 80.0  # super-pixel (0, 4)
    out = engine.process(photons, 5, 40.0)
    assert inner.seen == [((2, 5, 5), 80.0)]
    # The centre of super-pixel (R, C) is the centre of camera pixels [2R, 2R+2) × [2C, 2C+2).
    assert out.locs["x_nm"].tolist() == [3 * 40.0, 9 * 40.0]
    assert out.locs["y_nm"].tolist() == [7 * 40.0, 1 * 40.0]
    assert out.locs["frame"].tolist() == [5, 6]
    assert out.superres is None  # the inner image is on the binned grid
    engine.set_camera(Camera(readout_e=3.0, baseline_adu=100.0))
    assert inner.camera.readout_e == 6.0 and inner.camera.baseline_adu == 400.0
    assert engine.training_pixel_size_nm() == 50.0  # 50 nm pixels binned 2 × 2 are 100 nm
    assert engine.describe()["bin"] == 2 and engine.name == "recorder"


def test_gridnet_with_wide_psf_localizes_better_binned(tmp_path, run_cli):
    """σ 2.5 px (65 nm pixels) is above the generalist's range: binned 2 × 2 it is 1.25 px."""
    from stormfold.evaluate.metrics import evaluate
    from stormfold.io.tables import read_table

    sim = tmp_path / "sim"
    code, _, err = run_cli("simulate", "--preset", "thunderstorm", "--frames", "8", "--seed", "4",
                           "--set", "n_rows=64", "--set", "n_cols=64", "--set", "pixel_size_nm=65",
                           "--set", "emitters.sigma_nm=162", "--set", "emitters.sigma_std_nm=0",
                           "--set", "activation.density_per_um2=3",
                           "--set", "emitters.photons_min=1500", "--set",
                           "emitters.photons_max=3000", "--out", sim, "--quiet")
    assert code == 0, err
    truth = read_table(sim / "truth.csv")
    ji = {}
    for b in (1, 2):
        out = tmp_path / f"loc{b}"
        code, _, err = run_cli("localize", sim / "movie.tif", "--model",
                               "builtin:gridnet-generalist", "--set", f"bin={b}", "--out", out,
                               "--quiet")
        assert code == 0, err
        row = evaluate(truth, read_table(out / "localizations.csv"), [100.0]).iloc[0]
        ji[b] = row["jaccard"]
        if b == 2:
            assert abs(row["bias_x_nm"]) < 10 and abs(row["bias_y_nm"]) < 10
    assert ji[2] > 0.75 and ji[2] > ji[1] + 0.1, ji
    # Without --set bin the generalist sees the σ at its bound on the first batch and bins
    # by itself: the same table as bin=2, and run.yaml says why.
    import yaml

    code, _, err = run_cli("localize", sim / "movie.tif", "--model",
                           "builtin:gridnet-generalist", "--out", tmp_path / "auto", "--quiet")
    assert code == 0, err
    pd.testing.assert_frame_equal(read_table(tmp_path / "auto" / "localizations.csv"),
                                  read_table(tmp_path / "loc2" / "localizations.csv"))
    record = yaml.safe_load((tmp_path / "auto" / "run.yaml").read_text())
    assert record["engine"]["bin"] == 2 and record["engine"]["bin_chosen"] == "auto"
    assert any("binned 2 × 2" in w for w in record["engine_warnings"])


def test_bin_from_the_command_line_is_checked(tmp_path, run_cli):
    import tifffile

    movie = tmp_path / "m.tif"
    tifffile.imwrite(movie, np.full((2, 16, 16), 100, np.uint16))
    before = movie.read_bytes()
    for value in ("0", "2.5", "x"):
        code, _, err = run_cli("localize", movie, "--engine", "classic", "--pixel-size", "100",
                               "--set", f"bin={value}", "--out", tmp_path / "o")
        assert code == 2 and err.count("\n") == 1 and "bin must be" in err, err
    code, _, err = run_cli("localize", movie, "--model", "builtin:gridnet-generalist",
                           "--pixel-size", "65", "--set", "sigma_nm=162", "--out", tmp_path / "o")
    assert code == 2 and "--set bin=2" in err, err
    assert movie.read_bytes() == before and not (tmp_path / "o").exists()


def test_run_configuration_bins_through_engine_options(tmp_path, run_cli):
    """``stormfold run`` passes ``engine.options.bin`` on; run.yaml records it."""
    import yaml

    from stormfold.io.tables import read_table

    sim = tmp_path / "sim"
    code, _, err = run_cli("simulate", "--preset", "thunderstorm", "--frames", "6", "--seed", "2",
                           "--set", "n_rows=40", "--set", "n_cols=41", "--set", "pixel_size_nm=50",
                           "--set", "activation.density_per_um2=1", "--out", sim, "--quiet")
    assert code == 0, err
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "movie": str(sim / "movie.tif"), "output": str(tmp_path / "run"),
        "engine": {"engine": "classic", "options": {"bin": 2}},
        "postprocess": {"steps": []}, "report": False}))
    code, _, err = run_cli("run", config, "--quiet")
    assert code == 0, err
    run = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert run["engine"]["bin"] == 2
    locs = read_table(tmp_path / "run" / "localizations.csv")
    assert len(locs) > 0
    # 41 columns of 50 nm: the binned frame covers the first 40 (2 000 nm), 20 super-pixels.
    assert locs["x_nm"].max() < 2000.0 + 100.0 and locs["y_nm"].max() < 2000.0 + 100.0


def test_pixel_size_refusal_names_the_bin_that_fits():
    from stormfold.io.memory import movie_from_array
    from stormfold.localize.runner import resolve_geometry

    movie = movie_from_array(np.zeros((1, 20, 20), np.uint16), pixel_size_nm=50.0)
    with pytest.raises(UserError, match="--set bin=2"):
        resolve_geometry(movie, _Recorder())  # trained at 100 nm
    assert resolve_geometry(movie, with_binning(_Recorder(), 2)).pixel_size_nm == 50.0
    odd = movie_from_array(np.zeros((1, 20, 20), np.uint16), pixel_size_nm=70.0)
    with pytest.raises(UserError) as info:
        resolve_geometry(odd, _Recorder())
    assert "bin" not in str(info.value)  # 70 nm: no whole bin gives 100 nm


def test_binned_background_is_per_camera_pixel_and_the_sigma_advice_counts_the_bin():
    """Review 16: ``offset`` came out per super-pixel (×b²) and a binned run was told to bin
    by 2 again."""
    from stormfold.localize.domain import SigmaBoundCheck

    class _Bg(_Recorder):
        def process(self, photons, first_frame, pixel_size_nm):
            out = super().process(photons, first_frame, pixel_size_nm)
            return EngineOutput(out.locs.assign(bg=float(photons.min())), None)

    photons = np.full((1, 12, 12), 20.0, np.float32)
    assert with_binning(_Bg(), 3).process(photons, 0, 50.0).locs["bg"].iloc[0] == 20.0
    inner = _Recorder()
    inner.domain_check = SigmaBoundCheck((0.7, 2.0))
    with_binning(inner, 2)
    inner.domain_check(np.full(60, 2.0))
    assert inner.domain_check.message.endswith("--set bin=4)")


def test_errors_under_binning_say_so():
    """Review 16: errors of the inner engine spoke of the binned frame without saying so, and
    a binned run's pixel-size refusal named no bin."""
    from stormfold.io.memory import movie_from_array
    from stormfold.localize.registry import load_engine
    from stormfold.localize.runner import resolve_geometry

    classic = load_engine(engine="classic", options={"bin": 2})
    with pytest.raises(UserError, match=r"roi_px=7 \(in frames binned 2 × 2\)"):
        classic.process(np.zeros((1, 9, 11), np.float32), 0, 100.0)
    movie = movie_from_array(np.zeros((1, 30, 30), np.uint16), pixel_size_nm=33.4)
    with pytest.raises(UserError, match="--set bin=3"):
        resolve_geometry(movie, with_binning(_Recorder(), 2))  # trained at 100 nm


class _FitsWidth(Engine):
    """Fits one σ per emitter within 0.7–2.0 px as gridnet does (clipped at the bounds):
    ``per_frame`` emitters of PSF σ ``sigma_nm`` per frame, counted by its σ-bound check."""

    name = "fits-width"

    def __init__(self, sigma_nm, per_frame=20):
        from stormfold.localize.domain import SigmaBoundCheck

        self.sigma_nm_true, self.per_frame = sigma_nm, per_frame
        self.domain_check = SigmaBoundCheck((0.7, 2.0))
        self.sigma_nm = None  # not given: fitted, so the width can be judged
        self.seen = []

    def process(self, photons, first_frame, pixel_size_nm):
        self.seen.append((photons.shape, pixel_size_nm))
        n = len(photons) * self.per_frame
        self.domain_check(np.full(n, np.clip(self.sigma_nm_true / pixel_size_nm, 0.7, 2.0)))
        return EngineOutput(pd.DataFrame({"frame": np.repeat(first_frame, n),
                                          "x_nm": np.full(n, 10.0), "y_nm": np.full(n, 10.0)}))


@pytest.mark.parametrize("sigma_nm, per_frame, expected", [
    (100.0, 20, 1),   # 1.5 px at 65 nm: in the range
    (160.0, 20, 2),   # 2.5 px: 1.2 px binned 2 × 2
    (300.0, 20, 3),   # 4.6 px: still at the bound binned 2 × 2, 1.5 px binned 3 × 3
    (900.0, 20, 4),   # the largest bin tried
    (160.0, 2, 1),    # 8 emitters in the first batch: too few to judge
])
def test_auto_bin_chooses_the_smallest_bin_that_leaves_the_bound(sigma_nm, per_frame, expected):
    from stormfold.localize.binning import AutoBinEngine

    inner = _FitsWidth(sigma_nm, per_frame)
    engine = with_binning(inner, None)  # not given: auto for an engine that fits σ
    assert isinstance(engine, AutoBinEngine) and with_binning(inner, "auto").inner is inner
    said = []
    engine.start_movie(said.append)
    photons = np.zeros((4, 64, 64), np.float32)
    out = engine.process(photons, 0, 65.0)
    assert engine.chosen == expected
    # The probes went b = 1, 2, ... up to the choice; the kept pass ran at the choice.
    assert [px for _, px in inner.seen] == [65.0 * b for b in range(1, expected + 1)] \
        + [65.0 * expected]
    assert inner.seen[-1][0] == (4, 64 // expected, 64 // expected)
    # The σ check counts the real pass only, and nothing but the choice was said.
    assert inner.domain_check.counts[0] == 4 * per_frame
    assert len(out.locs) == 4 * per_frame
    if expected > 1:
        assert f"binned {expected} × {expected}" in said[0]
        assert engine.movie_warnings()[0] == said[0] and engine.describe()["bin"] == expected
        # Still too wide at the largest bin: the σ warning of the real pass says so.
        assert len(said) == (2 if sigma_nm == 900.0 else 1)
        assert sigma_nm != 900.0 or "--set bin=8" in said[1]
    else:
        assert said == [] and engine.movie_warnings() == []
    # Later batches keep the choice; a new movie chooses again.
    engine.process(photons, 4, 65.0)
    assert len(inner.seen) == expected + 2 and inner.seen[-1][1] == 65.0 * expected
    engine.start_movie(said.append)
    assert engine.chosen is None and inner.domain_check.bin_factor == 1


def test_auto_bin_only_where_the_width_is_fitted():
    inner = _Recorder()  # no σ-bound check
    assert with_binning(inner, None) is inner
    with pytest.raises(UserError, match="bin=auto needs an engine that fits"):
        with_binning(inner, "auto")
    given = _FitsWidth(160.0)
    given.sigma_nm = 160.0  # a σ given is fixed: nothing to judge
    assert with_binning(given, None) is given


def _wide_psf_movie(folder, frames=16):
    """σ 2.5 px (162 nm at 65 nm pixels), above the generalist's range."""
    from stormfold.simulate import build_config, simulate_to_folder

    cfg = build_config("thunderstorm", n_frames=frames, seed=4, overrides=[
        "n_rows=64", "n_cols=64", "pixel_size_nm=65", "emitters.sigma_nm=162",
        "emitters.sigma_std_nm=0", "activation.density_per_um2=3", "emitters.photons_min=1500",
        "emitters.photons_max=3000"])
    simulate_to_folder(cfg, folder, progress=False)
    return folder / "movie.tif"


def test_run_bins_a_wide_psf_by_itself_and_resumes_alike(tmp_path, monkeypatch):
    """The default engine (the generalist, ``bin`` not given: auto) bins σ 2.5 px 2 × 2 as
    ``bin=2`` does; the choice is made on the run's first batch, also when a crashed run
    resumes later in the movie, and run.yaml records it."""
    import yaml

    import stormfold.localize.runner as runner
    from stormfold.pipeline import load_run_config, run

    movie = _wide_psf_movie(tmp_path / "sim")

    def config(out, **engine):
        return load_run_config(overrides={
            "movie": str(movie), "output": str(tmp_path / out), "chunk_frames": 8,
            "engine": {"batch_frames": 4, **engine}, "postprocess": {}, "report": False})

    reference = run(config("auto"), quiet=True)
    fixed = run(config("two", options={"bin": 2}), quiet=True)
    pd.testing.assert_frame_equal(reference.locs, fixed.locs)
    record = yaml.safe_load((tmp_path / "auto" / "run.yaml").read_text())
    assert record["engine"]["bin"] == 2
    assert any("binned 2 × 2" in w for w in record["warnings"])
    real, crashed = runner.localize_range, []

    def crashing(movie_, engine, camera, geometry, start, stop, batch):
        if start == 8 and not crashed:
            crashed.append(start)
            raise KeyboardInterrupt("simulated crash in the second chunk")
        return real(movie_, engine, camera, geometry, start, stop, batch)

    monkeypatch.setattr(runner, "localize_range", crashing)
    with pytest.raises(KeyboardInterrupt):
        run(config("crashed"), quiet=True)
    # The warnings of the chunks done before the crash are kept for the resumed run's
    # run.yaml (review 22: a warning of the first chunk was lost).
    import json

    state_file = next((tmp_path / "crashed").rglob("state.json"))
    saved = json.loads(state_file.read_text())
    assert any("binned 2 × 2" in w for w in saved["warnings"])
    saved["warnings"].append("a warning found on the first chunk")
    state_file.write_text(json.dumps(saved))
    resumed = run(config("crashed"), resume=True, quiet=True)
    pd.testing.assert_frame_equal(resumed.locs, reference.locs)
    record = yaml.safe_load((tmp_path / "crashed" / "run.yaml").read_text())
    assert "a warning found on the first chunk" in record["warnings"]
    assert sum("binned 2 × 2" in w for w in record["warnings"]) == 1


def test_decision_frames_are_spread_over_the_movie():
    from stormfold.localize.runner import decision_ranges

    assert decision_ranges(0, 100) == [(0, 8), (31, 39), (61, 69), (92, 100)]
    assert decision_ranges(5, 20) == [(5, 20)]  # short: all of it
    assert decision_ranges(10, 43) == [(10, 18), (18, 26), (27, 35), (35, 43)]


def test_auto_bin_does_not_depend_on_the_batch_size(tmp_path):
    """Review 22: with --batch-frames 2 the first batch held fewer than 50 refined emitters
    and the pixels were kept (JI 0.86 instead of 0.95); the decision frames are the same
    whatever the batch. A movie too short to decide says so in run.yaml."""
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    movie = _wide_psf_movie(tmp_path / "sim")
    engine = load_engine(model="builtin:gridnet-generalist")
    localize_movie(movie, engine, batch_frames=1, progress=False)
    assert engine.chosen == 2 and engine.describe()["bin"] == 2
    one = tmp_path / "one.tif"
    import tifffile

    tifffile.imwrite(one, tifffile.imread(movie)[:1])
    engine = load_engine(model="builtin:gridnet-generalist")
    localize_movie(one, engine, pixel_size_nm=65.0, progress=False)
    assert engine.describe()["bin"].startswith("auto: 1 (undecided: ")
