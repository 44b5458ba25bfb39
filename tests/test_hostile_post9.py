"""Hostile inputs to post-processing, evaluation and run (review 9).

A refused command line exits with code 2, prints one line on stderr without a traceback and
leaves its folder byte-for-byte as it was; each check has a guard that ordinary use still
works.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stormfold.errors import UserError
# The refusal check of review 7 (exit 2, one stderr line, the folder unchanged), run here
# against this module's own ``folder``.
from test_hostile_post import _csv, refused  # noqa: F401


def _random_table(n: int, frames: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"frame": np.sort(rng.integers(0, frames, n)),
                         "x_nm": rng.uniform(100, 3100, n), "y_nm": rng.uniform(100, 3100, n),
                         "photons": rng.uniform(500, 3000, n)})


def _beads(n_beads: int, frames: range, noise_nm: float, seed: int) -> pd.DataFrame:
    """Still beads detected in every frame of ``frames`` with Gaussian noise ``noise_nm``."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(500, 2500, (n_beads, 2))
    f = np.repeat(np.asarray(frames), n_beads)
    pos = np.tile(centres, (len(frames), 1)) + rng.normal(0, noise_nm, (len(f), 2))
    return pd.DataFrame({"frame": f, "x_nm": pos[:, 0], "y_nm": pos[:, 1],
                         "photons": np.full(len(f), 5e4)})


@pytest.fixture()
def folder(tmp_path):
    old = Path.cwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


# ---------------------------------------------------------------- 1. fiducial drift
NOISE_NM = 5.0


def _half_covered(folder: Path) -> Path:
    """Four still beads in frames 1–500 of 1000, blinking background in every frame."""
    beads = _beads(4, range(500), NOISE_NM, seed=3)
    background = _random_table(3000, 1000, seed=4)
    background.loc[background.index[-1], "frame"] = 999  # the movie is 1000 frames long
    table = pd.concat([beads, background]).sort_values("frame", kind="stable")
    return _csv(folder / "fid.csv", table.reset_index(drop=True))


def test_fiducial_drift_is_held_not_extrapolated_beyond_the_beads(run_cli, folder):
    _half_covered(folder)
    with pytest.warns(UserWarning, match="no fiducial in frames 501–1000 of 1000"):
        code, out, err = run_cli("drift", "fid.csv", "--method", "fiducials", "--pixel-size",
                                 "100", "--out", "d.csv")
    assert code == 0, err
    drift = pd.read_csv(folder / "d_drift.csv")
    assert len(drift) == 1000
    # The beads do not move: what is applied is their noise, never a slope carried on.
    assert np.abs(drift[["dx_nm", "dy_nm"]].to_numpy()).max() <= 3 * NOISE_NM
    tail = drift[drift["frame"] > 500]
    assert (tail["dx_nm"].nunique(), tail["dy_nm"].nunique()) == (1, 1)
    record = yaml.safe_load((folder / "d.yaml").read_text())
    text = yaml.safe_dump(record)
    assert "uncovered_frames" in text and "501" in text


def test_fiducial_drift_covering_the_movie_gives_no_warning():
    from stormfold.postprocess.drift import estimate_drift_fiducials

    rng = np.random.default_rng(1)
    table = _beads(3, range(200), 3.0, seed=1)
    true = np.cumsum(rng.normal(0, 1.0, (200, 2)), axis=0)
    true -= true[0]
    table[["x_nm", "y_nm"]] += true[table["frame"].to_numpy()]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = estimate_drift_fiducials(table, radius_nm=40)
    assert result.reliability.applied and not result.reliability.uncovered_frames
    error = result.drift[["dx_nm", "dy_nm"]].to_numpy() - true
    assert np.sqrt(np.mean(error ** 2)) < 4.0  # per-frame noise 3/√3 per axis, anchored at 0


@pytest.mark.parametrize("frames, x", [
    ([0, 1], [1000.0, 1040.0]),           # two detections, 40 nm apart
    ([0], [1000.0]),                       # one localization
    ([0] * 50, list(np.arange(50) * 60.0 + 100)),  # all in one frame
])
def test_too_few_fiducial_frames_refused(refused, folder, frames, x):
    _csv(folder / "few.csv", pd.DataFrame({"frame": frames, "x_nm": x, "y_nm": np.full(len(x), 900.0),
                                           "photons": np.full(len(x), 1e4)}))
    line = refused("drift", "few.csv", "--method", "fiducials", "--pixel-size", "100",
                   "--out", "d.csv")
    assert "fiducials seen in only" in line and "< 10" in line


def test_too_few_fiducial_frames_warn_applies_nothing():
    from stormfold.postprocess.drift import correct_drift

    table = pd.DataFrame({"frame": [0, 1], "x_nm": [1000.0, 1040.0], "y_nm": [900.0, 900.0]})
    with pytest.warns(UserWarning, match="not supported by the data"):
        corrected, _ = correct_drift(table, "fiducials", on_unsupported="warn")
    np.testing.assert_array_equal(corrected["x_nm"], table["x_nm"])
    with pytest.raises(UserError, match="on_unsupported must be one of error, warn"):
        correct_drift(table, "fiducials", on_unsupported="maybe")


# ---------------------------------------------------------------- 2. camera pixel size
@pytest.mark.parametrize("value", ["0.1", "5", "1e5"])
@pytest.mark.parametrize("argv", [
    ["convert", "t.csv", "c.csv"], ["convert", "t.csv", "c.hdf5", "--width", "32", "--height", "32"],
    ["render", "t.csv", "--out", "r.tif"], ["filter", "t.csv", "--out", "f.csv", "--expr", "photons > 0"],
    ["drift", "t.csv", "--out", "d.csv"], ["frc", "t.csv", "--out", "f"],
    ["postprocess", "t.csv", "--out", "p", "--steps", "render"],
])
def test_table_commands_take_the_camera_pixel_bounds(refused, folder, argv, value):
    _csv(folder / "t.csv", _random_table(300, 20))
    line = refused(*argv, "--pixel-size", value)
    assert "--pixel-size" in line and "10–2000 nm" in line


def test_table_command_pixel_size_in_range_still_works(run_cli, folder):
    _csv(folder / "t.csv", _random_table(300, 20))
    code, _, err = run_cli("convert", "t.csv", "c.hdf5", "--pixel-size", "100", "--width", "32",
                           "--height", "32")
    assert code == 0, err


# ---------------------------------------------------------------- 3. FRC
def test_frc_from_too_few_localizations_refused(refused, folder):
    _csv(folder / "three.csv", _random_table(3, 3))
    line = refused("frc", "three.csv", "--out", "f", "--pixel-size", "100", "--pixel-nm", "50")
    assert "too few for a resolution" in line


@pytest.mark.parametrize("kwargs, match", [
    ({"threshold": 2.0}, "threshold"), ({"threshold": float("nan")}, "threshold"),
    ({"threshold": 0.0}, "threshold"), ({"tukey_alpha": 5.0}, "tukey_alpha"),
    ({"tukey_alpha": float("nan")}, "tukey_alpha"), ({"smooth_rings": 0}, "smooth_rings"),
    ({"smooth_rings": 2.5}, "smooth_rings"),
])
def test_frc_api_parameters_checked(kwargs, match):
    from stormfold.postprocess import frc

    with pytest.raises(UserError, match=match):
        frc(_random_table(400, 20), pixel_nm=20.0, **kwargs)


def test_frc_of_enough_localizations_still_works():
    from stormfold.postprocess import frc

    rng = np.random.default_rng(2)
    sites = rng.uniform(0, 3000, (200, 2))
    pos = np.repeat(sites, 8, axis=0) + rng.normal(0, 10, (1600, 2))
    table = pd.DataFrame({"frame": np.arange(1600) % 100, "x_nm": pos[:, 0], "y_nm": pos[:, 1]})
    result = frc(table, pixel_nm=5.0)
    assert result.resolution_nm is not None and 20 < result.resolution_nm < 80


# ---------------------------------------------------------------- 4. scheduler addresses
@pytest.mark.parametrize("address, words", [
    ("inproc://x", "protocol 'inproc' is not supported, only tcp"),
    ("tls://127.0.0.1:1", "protocol 'tls' is not supported, only tcp"),
    ("ws://127.0.0.1:1", "protocol 'ws' is not supported"),
])
def test_run_refuses_scheduler_protocols_it_cannot_use(refused, folder, address, words):
    import tifffile

    tifffile.imwrite(folder / "m.tif", np.full((4, 16, 16), 100, np.uint16))
    (folder / "r.yaml").write_text(yaml.safe_dump({"movie": "m.tif", "pixel_size_nm": 100,
                                                   "engine": {"engine": "classic"},
                                                   "output": "out"}))
    line = refused("run", "r.yaml", "--scheduler", address)
    assert words in line


@pytest.mark.parametrize("error", [ValueError("not enough values to unpack"),
                                   TypeError("TLS expects a ssl_context")])
def test_scheduler_client_errors_are_one_line(monkeypatch, error):
    import distributed

    from stormfold.parallel import run_chunks_distributed

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(distributed, "Client", fail)
    with pytest.raises(UserError, match="cannot connect to the Dask scheduler"):
        next(run_chunks_distributed("tcp://127.0.0.1:1", [], None, None, None, None, None))


# ---------------------------------------------------------------- 5. evaluate --bound
def _bound_folder(folder: Path, n_rows: int, x_far: float | None = None) -> None:
    rng = np.random.default_rng(5)
    n = 40
    x = rng.uniform(200, 3800, n)
    if x_far is not None:
        x[3] = x_far
    truth = pd.DataFrame({"frame": np.arange(n) % 10, "x_nm": x, "y_nm": rng.uniform(200, 3800, n),
                          "photons": np.full(n, 1500.0), "sigma_nm": np.full(n, 110.0)})
    _csv(folder / "truth.csv", truth)
    (folder / "simulation.yaml").write_text(yaml.safe_dump(
        {"preset": "zerocost", "n_frames": 10, "n_rows": n_rows, "n_cols": 40,
         "pixel_size_nm": 100.0}))


@pytest.mark.parametrize("n_rows, x_far", [(1, None), (40, 1e8)])
def test_bound_refuses_a_truth_outside_the_simulated_frame(refused, folder, n_rows, x_far):
    _bound_folder(folder, n_rows, x_far)
    line = refused("evaluate", "--truth", "truth.csv", "--locs", "truth.csv", "--bound")
    assert "outside the simulated" in line and "nan" not in line


def test_bound_of_a_matching_truth_still_works(run_cli, folder):
    _bound_folder(folder, 40)
    code, out, err = run_cli("evaluate", "--truth", "truth.csv", "--locs", "truth.csv", "--bound")
    assert code == 0, err
    assert "median bound" in out and "nan" not in out


def test_bound_names_the_truth_header(refused, folder):
    _bound_folder(folder, 40)
    table = pd.read_csv(folder / "truth.csv").drop(columns=["sigma [nm]"])
    table.to_csv(folder / "truth.csv", index=False)
    line = refused("evaluate", "--truth", "truth.csv", "--locs", "truth.csv", "--bound")
    assert "sigma [nm]" in line


# ---------------------------------------------------------------- 6. smaller items
def test_render_of_an_empty_table_warns_and_writes(run_cli, folder):
    _csv(folder / "empty.csv", _random_table(0, 1))
    with pytest.warns(UserWarning, match="holds no localization"):
        code, _, err = run_cli("render", "empty.csv", "--out", "r.tif", "--pixel-size", "100")
    assert code == 0, err
    assert (folder / "r.tif").is_file()


def _movie(path: Path, frames: int) -> Path:
    import tifffile

    rng = np.random.default_rng(0)
    tifffile.imwrite(path, rng.poisson(100, (frames, 16, 16)).astype(np.uint16))
    return path


def test_sofi_on_few_frames_warns(run_cli, folder):
    _movie(folder / "m.tif", 30)
    with pytest.warns(UserWarning, match="SOFI from 30 frames: a cumulant needs at least 100"):
        code, _, err = run_cli("sofi", "m.tif", "--out", "s", "--pixel-size", "100")
    assert code == 0, err


@pytest.mark.parametrize("value", ["1e38", "inf", "-1"])
def test_sofi_threshold_bounded(refused, folder, value):
    _movie(folder / "m.tif", 30)
    line = refused("sofi", "m.tif", "--out", "s", "--pixel-size", "100", "--model", "nowhere",
                   "--threshold", value)
    assert "--threshold must be a number in [0, 1e+06]" in line


def test_cluster_out_of_memory_hint_names_eps_and_the_table(capsys):
    from stormfold.cli import _options, _out_of_memory, build_parser

    parser = build_parser()
    args = parser.parse_args(["cluster", "t.csv", "--out", "c.csv", "--eps-nm", "1e9",
                              "--min-samples", "3"])
    assert _out_of_memory("stormfold cluster", _options(parser, args)) == 2
    line = capsys.readouterr().err
    assert "--eps-nm" in line and "a smaller table" in line and "movie" not in line


def _run_yaml(folder: Path, **extra) -> None:
    _movie(folder / "m.tif", 16)
    (folder / "r.yaml").write_text(yaml.safe_dump(
        {"movie": "m.tif", "pixel_size_nm": 100, "output": "out", "report": False,
         "postprocess": {}, **extra}))


def test_run_records_the_chunk_size_that_ran(run_cli, folder):
    _run_yaml(folder, chunk_frames=4, engine={"engine": "classic", "batch_frames": 8})
    code, _, err = run_cli("run", "r.yaml", "--quiet")
    assert code == 0, err
    record = yaml.safe_load((folder / "out" / "run.yaml").read_text())
    assert record["config"]["chunk_frames"] == 4  # as given
    assert record["chunks"] == {"frames_per_chunk": 8, "count": 2, "batch_frames": 8}


@pytest.mark.parametrize("sums, partial", [(64, True), (90, False)])
def test_run_resume_refuses_an_inconsistent_state(refused, folder, sums, partial):
    import json

    from stormfold.pipeline.config import load_run_config
    from stormfold.pipeline.state import config_fingerprint

    _run_yaml(folder, engine={"engine": "classic"})
    state = folder / "out" / ".stormfold-run"
    state.mkdir(parents=True)
    (state / "state.json").write_text(json.dumps(
        {"fingerprint": config_fingerprint(load_run_config(folder / "r.yaml")),
         "chunks_done": 90, "csv_bytes": 10, "n_locs": 0, "engine_s": 0}))
    np.savez(state / f"sums.{sums}.npz", superres=np.zeros(1), widefield=np.zeros(1))
    if partial:
        (state / "localizations.partial.csv").write_text("frame\n")
    line = refused("run", "r.yaml", "--resume")
    assert "damaged or inconsistent" in line and "without --resume" in line


def test_drift_api_parameters_checked():
    from stormfold.postprocess import run_chain
    from stormfold.postprocess.drift import estimate_drift_rcc

    table = _random_table(2000, 100)
    for kwargs, match in (({"field_nm": 0}, "field_nm"), ({"blur_nm": 0}, "blur_nm"),
                          ({"max_shift_nm": float("nan")}, "max_shift_nm"),
                          ({"max_drift_fraction": -1}, "max_drift_fraction")):
        with pytest.raises(UserError, match=match):
            estimate_drift_rcc(table, **kwargs)
    for px in (float("nan"), -5.0, 0.1):
        with pytest.raises(UserError, match="pixel_size_nm"):
            run_chain(table, steps=[], pixel_size_nm=px)
    assert run_chain(table, steps=[], pixel_size_nm=100.0) is not None
