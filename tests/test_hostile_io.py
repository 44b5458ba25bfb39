"""Hostile inputs to the movie, configuration and file readers (outside review, session 7).

Each command-line case checks what a user meets: exit code 2, one line on stderr naming the
problem, no traceback, and every file of the folder byte-for-byte as before (no output
folder created). The API cases check the exception type and message.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from stormfold.errors import UserError
from stormfold.io import open_movie, write_tiff
from stormfold.io.thunderstorm import write_thunderstorm_csv
from test_hostile_inputs import _snapshot  # every file's SHA-256 and every folder


@pytest.fixture()
def refused(run_cli, tmp_path, monkeypatch):
    """Run a command in ``tmp_path`` that must be refused in one line; returns that line."""
    monkeypatch.chdir(tmp_path)

    def _refused(*argv: str, match: str) -> str:
        before = _snapshot(tmp_path)
        code, out, err = run_cli(*argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (code, err)
        assert len(lines) == 1, err
        assert "Traceback" not in err
        assert "internal error" not in err
        assert "error:" in lines[0]
        assert match in lines[0], lines[0]
        assert _snapshot(tmp_path) == before
        return lines[0]

    return _refused


def _movie(path: Path, frames: int = 4, shape: tuple[int, int] = (16, 16), **kwargs) -> Path:
    rng = np.random.default_rng(0)
    write_tiff(path, rng.integers(90, 120, (frames, *shape)).astype(np.uint16), **kwargs)
    return path


def _yaml_file(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _table(n: int = 5, frame0: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"frame": np.arange(frame0, frame0 + n), "x_nm": 100.0 + np.arange(n),
                         "y_nm": 200.0 + np.arange(n), "photons": np.full(n, 1000.0)})


# --------------------------------------------------------------------------- 1, 9: pixel types
def _picasso_raw(folder: Path, data_type: str, n_bytes: int) -> Path:
    raw = folder / "pic.raw"
    # Non-zero bytes: read into an object array they would be dereferenced as pointers.
    raw.write_bytes(bytes(range(1, 256)) * (n_bytes // 255) + b"\x07" * (n_bytes % 255))
    (folder / "pic.yaml").write_text(f"Byte Order: <\nData Type: {data_type}\nFrames: 2\n"
                                     f"Height: 8\nWidth: 8\nPixelsize: 100\n")
    return raw


@pytest.mark.parametrize("data_type, itemsize, match", [
    ("object", 8, "got dtype object"), ("V4", 4, "got dtype |V4"), ("S4", 4, "got dtype |S4"),
    ("complex64", 8, "complex pixels"), ("bool", 1, "dtype bool"),
])
def test_picasso_raw_of_a_non_numeric_type_is_refused(tmp_path, refused, data_type, itemsize,
                                                      match):
    raw = _picasso_raw(tmp_path, data_type, 2 * 8 * 8 * itemsize)
    line = refused("localize", raw.name, "--engine", "classic", "--out", "out", match=match)
    assert "pic.yaml" in line


@pytest.mark.parametrize("dtype, match", [(np.complex64, "complex pixels"),
                                          (np.bool_, "dtype bool")])
def test_complex_and_bool_tiff_movies_are_refused(tmp_path, refused, dtype, match):
    tifffile.imwrite(tmp_path / "m.tif", np.ones((4, 8, 8), dtype), photometric="minisblack")
    refused("localize", "m.tif", "--engine", "classic", "--pixel-size", "100", "--out", "out",
            match=match)
    with pytest.raises(UserError, match=match):
        open_movie(tmp_path / "m.tif")


# --------------------------------------------------------------------------- 4: not UTF-8
def test_yaml_files_that_are_not_utf8_text_are_refused_everywhere(tmp_path, refused):
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"n_frames: 2\n# pixel 0.1 \xb5m\n")
    binary = tmp_path / "binary.yaml"
    _movie(binary.with_suffix(".tif"))
    binary.write_bytes(binary.with_suffix(".tif").read_bytes())
    _movie(tmp_path / "m.tif")
    refused("simulate", "--config", "latin1.yaml", "--out", "sim", match="latin1.yaml")
    refused("simulate", "--config", "binary.yaml", "--out", "sim", match="not UTF-8 text")
    refused("run", "latin1.yaml", match="latin1.yaml: not a YAML file")
    refused("localize", "m.tif", "--engine", "classic", "--pixel-size", "100", "--camera",
            "binary.yaml", "--out", "out", match="binary.yaml")
    _yaml_file(tmp_path / "run.yaml", {"movie": "m.tif", "pixel_size_nm": 100,
                                       "engine": {"engine": "classic"},
                                       "camera": {"file": "latin1.yaml"}, "output": "out"})
    refused("run", "run.yaml", match="latin1.yaml")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.yaml").write_bytes(b"engine: unrolled\n# \xe9\n")
    (model / "weights.safetensors").write_bytes(b"")
    refused("localize", "m.tif", "--model", "model", "--out", "out", match="model.yaml")


# --------------------------------------------------------------------------- 6: non-finite
@pytest.mark.parametrize("section, key, value", [("emitters", "photons_mean", ".nan"),
                                                 ("background", "photons", ".inf"),
                                                 ("emitters", "sigma_nm", "-.inf")])
def test_non_finite_config_values_are_refused_naming_the_key(tmp_path, refused, section, key,
                                                             value):
    (tmp_path / "c.yaml").write_text(f"{section}:\n  {key}: {value}\n")
    refused("simulate", "--config", "c.yaml", "--out", "sim", match=f"{section}.{key}")
    refused("simulate", "--set", f"{section}.{key}={value}", "--out", "sim",
            match="expected a finite number")
    refused("train", "unrolled", "--preset", "zerocost", "--config", "c.yaml", "--out", "m",
            match=f"{section}.{key}")


def test_bounds_may_be_open_but_not_nan():
    from stormfold.config import from_dict
    from stormfold.unrolled.train import ParamsConfig

    params = from_dict(ParamsConfig, yaml.load("alpha_bounds: [0, .inf]",
                                               Loader=_loader()))
    assert params.alpha_bounds == (0.0, math.inf)
    with pytest.raises(UserError, match=r"rho_bounds\[1\]: expected a finite number"):
        from_dict(ParamsConfig, {"rho_bounds": [0.0, float("nan")]})


def _loader():
    from stormfold.config import Loader

    return Loader


def test_simulation_checks_refuse_nan_given_through_the_api():
    from stormfold.simulate.config import (ActivationConfig, BackgroundConfig, DriftConfig,
                                           EmitterConfig)

    for bad in (EmitterConfig(photons_mean=math.nan), EmitterConfig(sigma_nm=math.nan),
                BackgroundConfig(photons=math.nan), DriftConfig(random_walk_nm=math.nan),
                ActivationConfig(density_per_um2=math.nan)):
        with pytest.raises(UserError):
            bad.validate()


# --------------------------------------------------------------------------- 7, 16: YAML forms
def test_scientific_notation_without_a_dot_is_a_float(tmp_path):
    from stormfold.config import parse_overrides
    from stormfold.simulate import build_config

    assert parse_overrides(["a.lr=1e-3", "b=2E+5", "c='1e-3'", "d=1.0e3"]) == {
        "a": {"lr": 0.001}, "b": 200000.0, "c": "1e-3", "d": 1000.0}
    (tmp_path / "c.yaml").write_text("n_frames: 1e1\nemitters:\n  photons_mean: 2e3\n")
    config = build_config(config_file=tmp_path / "c.yaml", overrides=["background.photons=5e1"])
    assert (config.n_frames, config.emitters.photons_mean, config.background.photons) == (
        10, 2000.0, 50.0)
    # PyYAML's own SafeLoader is not changed for other libraries.
    assert yaml.safe_load("a: 1e3") == {"a": "1e3"}


def test_duplicate_yaml_keys_are_refused_naming_the_key(tmp_path, refused):
    from stormfold.config import parse_overrides

    (tmp_path / "dup.yaml").write_text("n_frames: 5\nemitters:\n  sigma_nm: 100\n"
                                       "  sigma_nm: 120\n")
    refused("simulate", "--config", "dup.yaml", "--out", "sim",
            match="dup.yaml: not valid YAML (line 4: duplicate key 'sigma_nm')")
    with pytest.raises(UserError, match="duplicate key 'x'"):
        parse_overrides(["a={x: 1, x: 2}"])
    # YAML merge keys are not duplicates.
    assert yaml.load("b: &b {x: 1}\nc:\n  <<: *b\n  x: 2\n", Loader=_loader())["c"] == {"x": 2}


# --------------------------------------------------------------------------- 3: memory
@pytest.mark.parametrize("settings, match", [
    (["n_rows=100000", "n_cols=100000", "n_frames=1"], "more than 25% of this machine"),
    (["n_frames=1e15"], "n_frames must be in [1, 2147483647]"),
    (["n_rows=99999999999"], "image size must be 1 to 2147483647 pixels"),
])
def test_simulation_that_cannot_fit_is_refused_before_work(refused, settings, match):
    argv = [a for s in settings for a in ("--set", s)]
    refused("simulate", *argv, "--out", "sim", match=match)


# --------------------------------------------------------------------------- 8: run checks
@pytest.mark.parametrize("setting, match", [
    ("evaluation.tolerances_nm=[.nan]", "evaluation.tolerances_nm[0]"),
    ("evaluation.tolerances_nm=[0]", "evaluation.tolerances_nm[0]: tolerance must be > 0"),
    ("evaluation.tolerances_nm=[]", "evaluation.tolerances_nm: give at least one"),
    ("evaluation.border_nm=.nan", "evaluation.border_nm"),
    ("evaluation.matching=nearest", "evaluation.matching"),
    ("engine.options=[1, 2]", "engine.options: expected a mapping"),
    ("scheduler=garbage", "scheduler: 'garbage' is not a Dask scheduler address"),
    ("scheduler=nope://host:1", "protocol 'nope' is not supported"),
    ("output=", "output: give the folder"),
])
def test_run_config_is_checked_before_any_work(tmp_path, refused, setting, match):
    _movie(tmp_path / "m.tif")
    _yaml_file(tmp_path / "run.yaml", {"movie": "m.tif", "pixel_size_nm": 100,
                                       "engine": {"engine": "classic"}, "output": "out"})
    refused("run", "run.yaml", "--set", setting, match=match)


def test_scheduler_forms_that_dask_takes_are_accepted():
    from stormfold.pipeline.config import check_scheduler_address

    # tls:// and inproc:// are refused since review 9 (tests/test_hostile_post9.py).
    for address in ("tcp://127.0.0.1:8786", "127.0.0.1:8786", "tcp://[::1]:8786"):
        check_scheduler_address(address)


# --------------------------------------------------------------------------- 10: Picasso HDF5
def _picasso_hdf5(path: Path, fields: dict) -> Path:
    dtype = [(name, np.asarray(values).dtype) for name, values in fields.items()]
    records = np.zeros(len(next(iter(fields.values()))), dtype)
    for name, values in fields.items():
        records[name] = values
    with h5py.File(path, "w") as fh:
        fh.create_dataset("locs", data=records)
    path.with_suffix(".yaml").write_text("Width: 32\nHeight: 32\nFrames: 3\nPixelsize: 100\n")
    return path


@pytest.mark.parametrize("fields, match", [
    ({"frame": np.arange(3, dtype=np.uint32), "x": np.array([b"1", b"2", b"3"]),
      "y": np.ones(3, np.float32)}, "field 'x' must hold real numbers, got dtype |S1"),
    ({"frame": np.arange(3, dtype=np.uint32), "x": np.ones(3, np.complex64),
      "y": np.ones(3, np.float32)}, "field 'x' must hold real numbers, got dtype complex64"),
    ({"frame": np.arange(3, dtype=np.uint32), "x": np.ones(3, np.float32),
      "y": np.ones(3, np.float32), "photons": np.ones(3, bool)}, "field 'photons'"),
    ({"frame": np.array([0.0, 0.5, 1.0], np.float32), "x": np.ones(3, np.float32),
      "y": np.ones(3, np.float32)}, "field 'frame' holds non-integer values (row 1: 0.5)"),
])
def test_picasso_hdf5_fields_must_be_real_numbers(tmp_path, refused, fields, match):
    _picasso_hdf5(tmp_path / "l.hdf5", fields)
    refused("convert", "l.hdf5", "o.csv", match=match)


def test_picasso_hdf5_with_whole_float_frames_is_read(tmp_path):
    from stormfold.io import read_picasso_hdf5

    _picasso_hdf5(tmp_path / "l.hdf5", {"frame": np.array([0.0, 1.0, 2.0]),
                                        "x": np.ones(3, np.float32), "y": np.ones(3, np.float32)})
    table, _ = read_picasso_hdf5(tmp_path / "l.hdf5")
    assert table["frame"].tolist() == [0, 1, 2]


# --------------------------------------------------------------------------- 12: several series
def test_tiff_series_of_different_shapes_are_refused(tmp_path, refused):
    with tifffile.TiffWriter(tmp_path / "two.tif") as tif:
        tif.write(np.ones((4, 16, 16), np.uint16), photometric="minisblack")
        tif.write(np.ones((2, 8, 8), np.uint16), photometric="minisblack")
    refused("localize", "two.tif", "--engine", "classic", "--pixel-size", "100", "--out", "out",
            match="holds 2 image series of different shapes (4x16x16 QYX, 2x8x8 QYX)")


def test_tiff_series_of_one_shape_are_read_with_a_warning(tmp_path):
    with tifffile.TiffWriter(tmp_path / "two.tif") as tif:
        tif.write(np.ones((4, 16, 16), np.uint16), photometric="minisblack")
        tif.write(np.full((4, 16, 16), 7, np.uint16), photometric="minisblack")
    with pytest.warns(UserWarning, match=r"holds 2 image series .* reading the first one"):
        movie = open_movie(tmp_path / "two.tif", pixel_size_nm=100)
    with movie:
        assert movie.n_frames == 4
        assert (movie.read(0, 4) == 1).all()


# --------------------------------------------------------------------------- 15, 16: outputs
def test_output_under_a_folder_that_takes_no_files_is_one_line(tmp_path, refused):
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    write_thunderstorm_csv(tmp_path / "t.csv", _table())
    refused("evaluate", "--truth", "t.csv", "--locs", "t.csv", "--json", "/proc/x.json",
            match="cannot write /proc/x.json")


@pytest.mark.parametrize("argv", [
    ("localize", "m.tif", "--engine", "classic", "--pixel-size", "100", "--out", ""),
    ("filter", "t.csv", "--expr", "photons > 0", "--out", ""),
    ("convert", "t.csv", ""),
    ("evaluate", "--truth", "t.csv", "--locs", "t.csv", "--json", " "),
])
def test_an_empty_output_path_is_refused(tmp_path, refused, argv):
    _movie(tmp_path / "m.tif")
    write_thunderstorm_csv(tmp_path / "t.csv", _table())
    refused(*argv, match="empty path")


def test_a_writer_error_names_the_users_path_not_the_staging_one(tmp_path, refused):
    write_thunderstorm_csv(tmp_path / "t.csv", _table(frame0=2**33))
    line = refused("convert", "t.csv", "c.hdf5", "--pixel-size", "100",
                   match="frame index too large")
    assert "staging" not in line
    assert "error: c.hdf5: frame index too large" in line


# --------------------------------------------------------------------------- 17: messages
@pytest.mark.parametrize("value, shown", [("0", "Pixelsize 0"), ("abc", "Pixelsize 'abc'")])
def test_an_invalid_sidecar_pixel_size_is_called_invalid(tmp_path, refused, value, shown):
    _picasso_hdf5(tmp_path / "l.hdf5", {"frame": np.arange(3, dtype=np.uint32),
                                        "x": np.ones(3, np.float32), "y": np.ones(3, np.float32)})
    (tmp_path / "l.yaml").write_text(f"Width: 32\nHeight: 32\nFrames: 3\nPixelsize: {value}\n")
    refused("convert", "l.hdf5", "o.csv", match=f"{shown} in l.yaml is invalid")


def test_one_pixel_frames_are_named_as_such(tmp_path, refused):
    tifffile.imwrite(tmp_path / "p.tif", np.ones((10, 1, 1), np.uint16))
    refused("localize", "p.tif", "--engine", "classic", "--pixel-size", "100", "--out", "out",
            match="frames of 1 x 1 pixels")


def test_a_folder_of_multi_page_files_says_so(tmp_path, refused):
    folder = tmp_path / "frames"
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # tifffile: (3, y, x) stored as RGB
        for i in range(2):
            tifffile.imwrite(folder / f"f{i}.tif", np.ones((3, 8, 8), np.uint16))
    refused("localize", "frames", "--engine", "classic", "--pixel-size", "100", "--out", "out",
            match="holds 3 planes of 8 x 8 pixels")


def test_a_bad_camera_in_the_movie_metadata_names_the_movie(tmp_path, refused):
    _movie(tmp_path / "m.tif", metadata={"camera": {"e_per_adu": -1.0, "baseline_adu": 50.0}})
    refused("localize", "m.tif", "--engine", "classic", "--pixel-size", "100", "--out", "out",
            match="m.tif (the camera in its metadata): camera.e_per_adu must be > 0")


def test_reading_frames_out_of_range_is_a_user_error(tmp_path):
    with open_movie(_movie(tmp_path / "m.tif"), pixel_size_nm=100) as movie:
        with pytest.raises(UserError, match=r"frames 5:2 out of range for a movie of 4 frames"):
            movie.read(5, 2)
        with pytest.raises(UserError, match="out of range"):
            movie.read(0, 5)


def test_an_ome_channel_stack_read_as_time_is_warned(tmp_path):
    import tifffile

    from stormfold.io.movie import open_movie

    path = tmp_path / "channels.ome.tif"
    tifffile.imwrite(path, np.ones((4, 16, 16), np.uint16), ome=True, metadata={"axes": "CYX"})
    with pytest.warns(UserWarning, match="calls the 4 planes channels; they are read as 4 frames"):
        movie = open_movie(path, pixel_size_nm=100)
    assert movie.n_frames == 4
    movie.close()


# --------------------------------------------------------------------------- review 8
def test_dumped_yaml_reads_back_equal_through_the_loader(tmp_path):
    from stormfold.config import Loader, dump_yaml, dump_yaml_all
    from stormfold.io.picasso import write_picasso_hdf5  # noqa: F401  (uses dump_yaml_all)

    data = {"a": "1e3", "b": 1e-3, "c": "-2E+5", "d": ".5e1", "e": 1e20, "f": "text"}
    assert yaml.load(dump_yaml(data), Loader=Loader) == data
    assert "'1e3'" in dump_yaml(data)
    assert list(yaml.load_all(dump_yaml_all([data, {"g": "3e-2"}]), Loader=Loader)) == [
        data, {"g": "3e-2"}]
    # PyYAML's own SafeDumper is not changed for other libraries.
    assert yaml.safe_dump({"a": "1e3"}) == "a: 1e3\n"


@pytest.mark.parametrize("threads", [0, 257, 10**9])
def test_thread_counts_are_bounded(threads):
    from stormfold.gridnet.config import ScheduleConfig
    from stormfold.localize.classic.engine import ClassicOptions

    with pytest.raises(UserError, match=r"schedule.threads must be 1..256, got"):
        ScheduleConfig(threads=threads).validate()
    with pytest.raises(UserError, match=r"classic: threads must be 1..256, got"):
        ClassicOptions(threads=threads).validate()
    ScheduleConfig(threads=256).validate()
    ClassicOptions(threads=256).validate()


@pytest.mark.parametrize("settings,match", [
    (["camera.baseline_adu=65535"], "camera.baseline_adu must be in [0, 65535) ADU"),
    (["camera.baseline_adu=1e6"], "uint16 movie), got 1e+06"),
    (["pixel_size_nm=5"], "pixel_size_nm: camera pixel size 5 nm is outside 10–2000 nm"),
    (["pixel_size_nm=5000"], "camera pixel size 5000 nm is outside 10–2000 nm"),
])
def test_simulation_camera_must_be_one_localize_accepts(refused, settings, match):
    set_args = [arg for s in settings for arg in ("--set", s)]
    refused("simulate", "--out", "sim", *set_args, match=match)


def test_weights_and_checkpoints_get_the_mode_of_every_other_output(tmp_path):
    import stat

    import torch

    from stormfold.checkpoint import save_checkpoint
    from stormfold.io.atomic import usual_file_mode
    from stormfold.modelfile import WEIGHTS, save_model

    def mode(path):
        return stat.S_IMODE(path.stat().st_mode)

    save_model(tmp_path / "m", {"w": torch.zeros(3)}, {"engine": "deepstorm"})
    assert mode(tmp_path / "m" / WEIGHTS) == mode(tmp_path / "m" / "model.yaml")
    assert mode(tmp_path / "m" / WEIGHTS) == usual_file_mode()
    save_checkpoint(tmp_path / "ck", model=torch.nn.Linear(2, 1), state={"step": 1})
    assert {mode(p) for p in (tmp_path / "ck").iterdir()} == {usual_file_mode()}
    old = os.umask(0o077)  # the user's umask is obeyed, not widened
    try:
        assert usual_file_mode() == 0o600
        save_model(tmp_path / "private", {"w": torch.zeros(3)}, {"engine": "deepstorm"})
    finally:
        os.umask(old)
    assert mode(tmp_path / "private" / WEIGHTS) == 0o600
