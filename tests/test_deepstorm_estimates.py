"""Deep-STORM photons and uncertainty estimates: the pieces against independent computations,
the shipped model's calibration on a fresh simulation, training and the calibration command,
and the files (ThunderSTORM CSV, Picasso HDF5, run.yaml) that carry them."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy.ndimage import uniform_filter

from stormfold.deepstorm.engine import DeepStormEngine
from stormfold.deepstorm.estimates import DeepStormEstimates, monotone_table
from stormfold.deepstorm.model import DeepSTORM
from stormfold.deepstorm.normalization import Normalization
from stormfold.errors import UserError
from stormfold.localize.peaks import find_peaks, window_sum
from stormfold.modelfile import builtin_root

MODEL = "builtin:deepstorm-zerocost"
#: Seed of the shipped model's estimates calibration (recorded in its model.yaml).
CALIBRATION_SEED = 3


def test_window_sum_equals_a_box_filter():
    rng = np.random.default_rng(0)
    maps = torch.from_numpy(rng.random((3, 20, 24)).astype(np.float32))
    peaks = find_peaks(maps, 0.9)
    assert len(peaks) > 5
    for size in (3, 7):
        box = uniform_filter(maps.numpy().astype(np.float64), size=(1, size, size),
                             mode="constant") * size * size
        expected = box[peaks.index, peaks.row, peaks.col]
        np.testing.assert_allclose(window_sum(maps, peaks, size).numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(window_sum(maps, peaks, 3).numpy(), peaks.mass.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="odd"):
        window_sum(maps, peaks, 4)


def test_monotone_table_recovers_a_known_error_curve():
    """Errors drawn with a known standard deviation s(c) = 30 − 40·c: the table of binned
    RMSEs follows s at the bin medians and is non-increasing."""
    rng = np.random.default_rng(1)
    c = rng.uniform(0.0, 0.6, 20000)
    s = 30.0 - 40.0 * c
    sq = rng.normal(0.0, s) ** 2
    table = np.array(monotone_table(c, sq, increasing=False, reduce="mean"))
    assert len(table) == 12 and np.all(np.diff(table[:, 0]) > 0)
    assert np.all(np.diff(table[:, 1]) <= 0)
    np.testing.assert_allclose(np.sqrt(table[:, 1]), 30.0 - 40.0 * table[:, 0], rtol=0.06)
    # too few points for bins: one constant entry
    assert len(monotone_table(c[:30], sq[:30], False, "mean")) == 1


def test_estimates_tables_are_checked():
    good = {"photons": {"window_fine_px": 7, "table": [[0.1, 2000.0], [0.5, 2300.0]]},
            "uncertainty_nm": {"table": [[0.1, 30.0], [0.5, 5.0]]}}
    est = DeepStormEstimates.from_meta(good)
    np.testing.assert_allclose(est.photons([0.0, 0.3, 9.0]), [2000.0, 2150.0, 2300.0])
    np.testing.assert_allclose(est.uncertainty_nm([0.3]), [17.5])
    for bad, match in [({**good, "photons": {**good["photons"], "window_fine_px": 4}}, "odd"),
                       ({**good, "uncertainty_nm": {"table": [[0.5, 5.0], [0.1, 30.0]]}},
                        "increase"),
                       ({**good, "uncertainty_nm": {"table": [[0.1, 0.0]]}}, "> 0"),
                       ({**good, "uncertainty_nm": {"table": "x"}}, "pairs"),
                       ({"photons": {}}, "needs")]:
        with pytest.raises(UserError, match=match):
            DeepStormEstimates.from_meta(bad, "m")


def test_engine_adds_estimate_columns_only_with_calibrated_tables():
    """Hand-made maps through the engine's extraction: photons = table(window sum), uncertainty
    = table(confidence); a model without estimates writes neither column."""

    class MapEngine(DeepStormEngine):
        def predict(self, photons):
            return maps

    maps = torch.zeros(2, 40, 40)
    maps[0, 10, 10], maps[0, 10, 11], maps[0, 12, 10] = 30.0, 10.0, 5.0  # 7×7 holds all three
    maps[1, 30, 20] = 60.0
    est = DeepStormEstimates(7, [[0.2, 1000.0], [0.8, 4000.0]], [[0.2, 20.0], [0.6, 4.0]])
    # threshold 0.06·100: the 5 two pixels away is not a detection, but lies in the 7×7 window
    engine = MapEngine(DeepSTORM([4, 4, 8, 8]).eval(), 8, 100.0, Normalization(), threshold=0.06,
                       estimates=est)
    locs = engine.process(np.zeros((2, 5, 5), np.float32), 0, 100.0).locs
    assert len(locs) == 2
    integrated = np.array([0.45, 0.60])  # (30 + 10 + 5) / 100 and 60 / 100
    np.testing.assert_allclose(locs["photons"], np.interp(integrated, [0.2, 0.8], [1000, 4000]))
    np.testing.assert_allclose(locs["confidence"], [0.40, 0.60])  # 3×3 window misses the 5
    np.testing.assert_allclose(locs["uncertainty_nm"], np.interp([0.40, 0.60], [0.2, 0.6],
                                                                 [20, 4]))
    assert set(engine.describe()["columns_estimated"]) == {"photons", "uncertainty_nm"}
    engine.estimates = None
    plain = engine.process(np.zeros((2, 5, 5), np.float32), 0, 100.0).locs
    assert "photons" not in plain.columns and "uncertainty_nm" not in plain.columns
    assert engine.describe()["columns_estimated"] == {}


def test_shipped_model_estimates_hold_on_a_fresh_simulation():
    """builtin:deepstorm-zerocost on frames it never saw (a seed other than its training and
    calibration seeds): median |photons error| < 20 %, and in every confidence bin the
    estimated uncertainty is within a factor 1.5 of the RMSE measured against the truth."""
    from stormfold.evaluate.matching import match
    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate

    meta = yaml.safe_load((builtin_root() / "deepstorm-zerocost" / "model.yaml").read_text())
    assert meta["estimates"]["seed"] == CALIBRATION_SEED
    assert meta["estimates"]["command"][:4] == ["python", "-m", "stormfold.deepstorm.calibrate",
                                                MODEL]
    seed = 41
    assert seed not in (meta["training"]["seed"], meta["training"]["seed"] + 1, CALIBRATION_SEED)
    cfg = build_config("zerocost", n_frames=10, seed=seed)
    sim = simulate(cfg)
    engine = load_engine(model=MODEL)
    locs = engine.process(cfg.camera.backward(sim.movie), 0, cfg.pixel_size_nm).locs
    assert (locs["photons"] > 0).all() and (locs["uncertainty_nm"] > 0).all()
    m = match(sim.truth, locs, meta["estimates"]["tolerance_nm"])
    matched = locs.iloc[m.locs_index].reset_index(drop=True)
    true_photons = sim.truth["photons"].to_numpy()[m.truth_index]
    rel = np.abs(matched["photons"].to_numpy() - true_photons) / true_photons
    print(f"{len(m)} matches: median |photons error| {100 * np.median(rel):.1f} %")
    assert np.median(rel) < 0.20
    sq_err = 0.5 * (m.dx_nm ** 2 + m.dy_nm ** 2)
    bins = pd.qcut(matched["confidence"], 6, labels=False)
    frame = pd.DataFrame({"bin": bins, "sq": sq_err, "u2": matched["uncertainty_nm"] ** 2})
    per_bin = frame.groupby("bin").mean()
    ratio = np.sqrt(per_bin["u2"] / per_bin["sq"])
    print("estimated / measured RMSE per confidence bin:", np.round(ratio.to_numpy(), 2))
    assert ((ratio > 1 / 1.5) & (ratio < 1.5)).all()


def test_calibration_command_rewrites_only_model_yaml(tmp_path):
    from stormfold.deepstorm.calibrate import main

    folder = tmp_path / "model"
    shutil.copytree(builtin_root() / "deepstorm-zerocost", folder)
    weights = (folder / "weights.safetensors").read_bytes()
    before = yaml.safe_load((folder / "model.yaml").read_text())
    assert main([str(folder), "--frames", "2", "--seed", "9"]) == 0
    after = yaml.safe_load((folder / "model.yaml").read_text())
    assert (folder / "weights.safetensors").read_bytes() == weights
    est = after["estimates"]
    assert est["seed"] == 9 and est["n_frames"] == 2 and est["n_matched"] > 100
    assert est["command"] == ["python", "-m", "stormfold.deepstorm.calibrate", str(folder),
                              "--frames", "2", "--seed", "9"]
    assert {k: v for k, v in after.items() if k != "estimates"} == \
        {k: v for k, v in before.items() if k != "estimates"}
    uncertainty = np.array(est["uncertainty_nm"]["table"])
    assert np.all(np.diff(uncertainty[:, 1]) <= 0) and uncertainty[-1, 1] < uncertainty[0, 1]


@pytest.mark.parametrize("argv, message", [
    (["builtin:unrolled-isbi2013"], "not 'deepstorm'"),
    (["builtin:deepstorm-zerocost", "--window", "4"], "odd"),
    (["builtin:nope"], "unknown built-in model"),
])
def test_calibration_command_refuses_bad_input(argv, message, capsys):
    from stormfold.deepstorm.calibrate import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_training_calibrates_the_estimates(tmp_path):
    """A tiny training run ends with the estimates section; the engine emits the columns
    exactly when the section has tables."""
    from stormfold.deepstorm.train import build_train_config, train_deepstorm

    config = build_train_config(
        preset="zerocost", seed=2, epochs=1, n_patches=40, batch_size=8,
        overrides=["architecture.channels=[4, 4, 8, 8]", "schedule.precision=float32",
                   "simulation.n_frames=6", "calibration.n_frames=2",
                   "calibration.thresholds=[0.001, 0.01, 0.1]"])
    res = train_deepstorm(config, tmp_path / "m", progress=False)
    meta = yaml.safe_load((tmp_path / "m" / "model.yaml").read_text())
    est = meta["estimates"]
    assert est["frames"].startswith("2 simulated frames of the training simulation")
    assert est["threshold"] == meta["threshold"] and est["n_truth"] > 0
    has_tables = "photons" in est
    assert has_tables == (res.engine.estimates is not None)
    assert has_tables == ("note" not in est)
    frames = np.random.default_rng(0).uniform(0, 3000, (1, 16, 16)).astype(np.float32)
    locs = res.engine.process(frames, 0, 100.0).locs
    assert ("photons" in locs.columns) == has_tables


def test_localize_writes_estimates_and_says_so(tmp_path, run_cli):
    """localize → CSV with intensity and uncertainty, run.yaml columns_estimated; convert →
    Picasso HDF5 with photons and lpx from the estimates, no sx/sy/bg, the sidecar naming
    the estimated fields."""
    from stormfold.io.thunderstorm import read_thunderstorm_csv
    from stormfold.simulate import build_config, simulate_to_folder

    simulate_to_folder(build_config("zerocost", n_frames=3, seed=44), tmp_path / "sim",
                       progress=False)
    code, _, err = run_cli("localize", tmp_path / "sim" / "movie.tif", "--model", MODEL,
                           "--out", tmp_path / "loc", "--quiet")
    assert code == 0, err
    header = (tmp_path / "loc" / "localizations.csv").read_text().splitlines()[0]
    assert '"intensity [photon]"' in header and '"uncertainty [nm]"' in header
    assert '"sigma [nm]"' not in header and '"offset [photon]"' not in header
    table = read_thunderstorm_csv(tmp_path / "loc" / "localizations.csv")
    assert (table["photons"] > 0).all() and (table["uncertainty_nm"] > 0).all()
    run = yaml.safe_load((tmp_path / "loc" / "run.yaml").read_text())
    assert set(run["columns_estimated"]) == {"photons", "uncertainty_nm"}
    code, _, err = run_cli("convert", tmp_path / "loc" / "localizations.csv",
                           tmp_path / "loc" / "locs.hdf5")
    assert code == 0, err
    with h5py.File(tmp_path / "loc" / "locs.hdf5") as fh:
        locs = fh["locs"][()]
    assert locs.dtype.names[:6] == ("frame", "x", "y", "photons", "lpx", "lpy")
    assert not {"sx", "sy", "bg"} & set(locs.dtype.names)
    np.testing.assert_allclose(locs["lpx"], table["uncertainty_nm"] / 100.0, rtol=1e-6)
    first = yaml.safe_load_all((tmp_path / "loc" / "locs.yaml").read_text()).__next__()
    assert set(first["Estimated fields"]) == {"photons", "lpx", "lpy"}
    assert "Stand-in fields" not in first


def test_run_writes_estimated_fields_into_the_picasso_sidecar(tmp_path, picasso_keeps):
    """stormfold run with Deep-STORM: localizations.hdf5 has photons and lpx/lpy from the
    estimates (no σ, no background), its sidecar and run.yaml say they are estimates."""
    from stormfold.pipeline import load_run_config, run
    from stormfold.simulate import build_config, simulate_to_folder

    simulate_to_folder(build_config("zerocost", n_frames=2, seed=45), tmp_path / "sim",
                       progress=False)
    config = load_run_config(overrides={"movie": str(tmp_path / "sim" / "movie.tif"),
                                        "output": str(tmp_path / "out"), "report": False,
                                        "engine": {"model": MODEL, "device": "cpu"}})
    run(config, quiet=True)
    meta = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert set(meta["columns_estimated"]) == {"photons", "uncertainty_nm"}
    with h5py.File(tmp_path / "out" / "localizations.hdf5") as fh:
        locs = fh["locs"][()]
    assert locs.dtype.names[:6] == ("frame", "x", "y", "photons", "lpx", "lpy")
    assert not {"sx", "sy", "bg"} & set(locs.dtype.names) and picasso_keeps(locs).all()
    first = next(yaml.safe_load_all((tmp_path / "out" / "localizations.yaml").read_text()))
    assert set(first["Estimated fields"]) == {"photons", "lpx", "lpy"}
