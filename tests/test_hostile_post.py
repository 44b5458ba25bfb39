"""Hostile inputs to the table commands, post-processing, evaluation and engines (review 7).

Every refused command line exits with code 2, prints one line on stderr without a traceback,
and leaves its folder byte-for-byte as it was (every input, no file added).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stormfold.errors import UserError


def _snapshot(root: Path) -> dict:
    state = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            state[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _table(n: int = 60, seed: int = 0, frames: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"frame": np.arange(n) % frames,
                         "x_nm": rng.uniform(100, 3100, n), "y_nm": rng.uniform(100, 3100, n),
                         "photons": rng.uniform(500, 3000, n)})


def _csv(path: Path, table: pd.DataFrame) -> Path:
    from stormfold.io.thunderstorm import write_thunderstorm_csv

    write_thunderstorm_csv(path, table)
    return path


@pytest.fixture()
def folder(tmp_path):
    """A table ``good.csv`` with the ``simulation.yaml`` that gives its geometry."""
    _csv(tmp_path / "good.csv", _table())
    (tmp_path / "simulation.yaml").write_text(yaml.safe_dump(
        {"pixel_size_nm": 100.0, "n_rows": 32, "n_cols": 32, "n_frames": 10}))
    (tmp_path / "truth.csv").write_bytes((tmp_path / "good.csv").read_bytes())
    old = Path.cwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


@pytest.fixture()
def refused(run_cli, folder):
    """Run a command that must be refused; returns its one stderr line."""

    def _run(*argv: str) -> str:
        before = _snapshot(folder)
        code, _, err = run_cli(*argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, err
        assert len(lines) == 1, err
        assert "Traceback" not in err
        assert "internal error" not in err
        assert _snapshot(folder) == before
        return lines[0]

    return _run


# ---------------------------------------------------------------- 1. inputs never replaced
@pytest.mark.parametrize("argv", [
    ["render", "good.csv", "--out", "simulation.png"],
    ["filter", "good.csv", "--out", "simulation.csv", "--expr", "photons > 0"],
    ["convert", "good.csv", "simulation.hdf5"],
    ["evaluate", "--truth", "truth.csv", "--locs", "good.csv", "--json", "simulation.yaml"],
])
def test_outputs_never_replace_the_geometry_read(refused, argv):
    line = refused(*argv)
    assert "simulation.yaml" in line
    assert "overwrite" in line


def test_convert_api_refuses_the_geometry_as_output(folder):
    from stormfold.io.tables import convert_table

    before = _snapshot(folder)
    with pytest.raises(UserError, match="simulation.yaml"):
        convert_table(folder / "good.csv", folder / "simulation.h5")
    assert _snapshot(folder) == before


# ---------------------------------------------------------------- 2. absurd magnitudes
def test_far_coordinates_refused_naming_the_file_column(refused, folder):
    table = _table()
    table["frame"] += 1
    table.loc[3, "x_nm"] = 1e20
    table.rename(columns={"x_nm": "x [nm]", "y_nm": "y [nm]"}).to_csv(folder / "far.csv",
                                                                      index=False)
    for argv in (["convert", "far.csv", "far.hdf5"], ["drift", "far.csv", "--out", "d.csv"],
                 ["frc", "far.csv", "--out", "f"]):
        line = refused(*argv)
        assert "x [nm]" in line and "1 of 60" in line and "1e+09" in line


def test_missing_value_names_the_file_column(refused, folder):
    (folder / "nan.csv").write_text("frame,x [nm],y [nm]\n1,5,6\n2,,7\n")
    assert "column x [nm] has missing" in refused("render", "nan.csv", "--out", "r.png")


@pytest.mark.parametrize("argv, words", [
    (["evaluate", "--truth", "truth.csv", "--locs", "good.csv", "--tolerance", "1e300"],
     "tolerance"),
    (["link", "good.csv", "--out", "o.csv", "--radius-nm", "1e300", "--weight", "none"],
     "radius_nm"),
    (["frc", "good.csv", "--out", "f", "--pixel-nm", "1e300"], "pixel_nm"),
    (["render", "good.csv", "--out", "r.png", "--pixel-nm", "1e300"], "pixel_nm"),
    (["render", "good.csv", "--out", "r.png", "--method", "gaussian", "--sigma-nm", "1e300"],
     "sigma_nm"),
])
def test_absurd_lengths_refused_with_the_range(refused, argv, words):
    line = refused(*argv)
    assert words in line and "1e+09]" in line


def test_render_sigma_too_wide_for_the_pixel(refused):
    line = refused("render", "good.csv", "--out", "r.png", "--method", "gaussian",
                   "--sigma-nm", "1e8")
    assert "σ" in line and "larger pixel size" in line and "memory" not in line


def test_api_lengths_raise_user_error():
    from stormfold.evaluate import evaluate
    from stormfold.postprocess.render import render

    table = _table()
    with pytest.raises(UserError, match="field-of-view width"):
        render(table, 10, fov_nm=(np.nan, 5))
    with pytest.raises(UserError, match="tolerance"):
        evaluate(table, table, tolerances_nm=[1e300])


def test_picasso_write_never_stores_inf(refused, folder):
    table = _table()
    table.loc[0, "photons"] = 1e300
    _csv(folder / "bright.csv", table)
    line = refused("convert", "bright.csv", "bright.hdf5")
    assert "photons" in line and "float32" in line and "staging" not in line


# ---------------------------------------------------------------- 3. no hangs
def test_link_max_dark_bounded_by_the_frame_span(run_cli, folder):
    from stormfold.postprocess.link import link_groups

    table = _table()
    huge = link_groups(table, 200.0, 10 ** 12)
    assert np.array_equal(huge, link_groups(table, 200.0, 9))
    code, _, err = run_cli("link", "good.csv", "--out", "l.csv", "--max-dark", "1000000000000",
                           "--weight", "none")
    assert code == 0, err


@pytest.mark.parametrize("expr", ["x_nm > 9**9**9", "x_nm > (9**64)**64", "x_nm > 2**1000000",
                                  "x_nm ** (frame * 9**9**9) > 1"])
def test_filter_refuses_unbounded_constant_powers(refused, expr):
    assert "exponent" in refused("filter", "good.csv", "--out", "o.csv", "--expr", expr)


def test_filter_keeps_ordinary_powers():
    from stormfold.postprocess.filters import expression_mask

    table = _table()
    r = np.hypot(table.x_nm, table.y_nm)
    assert np.array_equal(expression_mask(table, "(x_nm**2 + y_nm**2)**0.5 > 10**3"), r > 1000)
    assert np.array_equal(expression_mask(table, "photons > 2**-3 * 1e4"),
                          table.photons > 1250)


# ---------------------------------------------------------------- 4. classic on blank frames
@pytest.mark.parametrize("level", [100.0, 12345.678, 3.3e6])
def test_classic_detects_nothing_on_constant_frames(level):
    import torch

    from stormfold.localize.classic.detect import detect

    for dtype in (torch.float32, torch.float64):
        frames = torch.full((3, 40, 48), level, dtype=dtype)
        frames[1] += 1e-3 * level * torch.finfo(dtype).eps  # below the rounding of the level
        assert len(detect(frames, 1.3, 1.0)) == 0
        spot = frames.clone()
        rr, cc = torch.meshgrid(torch.arange(40.0), torch.arange(48.0), indexing="ij")
        spot[0] += (0.05 * level * torch.exp(-((rr - 20) ** 2 + (cc - 24) ** 2) / 3.4)).to(dtype)
        found = detect(spot, 1.3, 1.0)
        assert len(found) >= 1 and int(found.frame[0]) == 0


# ---------------------------------------------------------------- 5-6. memory, models, warnings
def test_torch_allocation_failure_is_one_line(run_cli, monkeypatch, folder):
    from stormfold.cli import postprocess as cli_pp

    def fail(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 360000000000 bytes.")

    monkeypatch.setattr(cli_pp, "_pp_run", fail)
    code, _, err = run_cli("render", "good.csv", "--out", "r.png")
    assert code == 2 and err.count("\n") == 1
    assert "not enough memory (360 GB asked at once)" in err and "internal" not in err


def test_sofi_sigma_init_bounded():
    from stormfold.sofi.train import SofiSolverConfig

    with pytest.raises(UserError, match=r"sigma_init_nm \(--sigma-init\) must be a PSF σ"):
        SofiSolverConfig(sigma_init_nm=1e9).validate()
    SofiSolverConfig(sigma_init_nm=150.0).validate()


def _copy_model(name: str, dest: Path) -> Path:
    import shutil

    from stormfold.modelfile import builtin_root

    shutil.copytree(builtin_root() / name, dest)
    return dest


@pytest.mark.parametrize("name, edit, words", [
    ("gridnet-generalist", ("architecture", "frame_width", 100000),
     "frame_width must be an integer in 1..256"),
    ("deepstorm-zerocost", ("architecture", "channels", [32, 64, 128, 10 ** 7]),
     "channels must be an integer in 1..2048"),
    ("unrolled-isbi2013", (None, "upsampling", 10 ** 6), "upsampling must be an integer in 1..16"),
])
def test_absurd_architectures_refused_at_load(tmp_path, name, edit, words):
    from stormfold.localize import load_engine

    from safetensors.torch import load_file, save_file

    folder = _copy_model(name, tmp_path / "m")
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    section, key, value = edit
    (meta[section] if section else meta)[key] = value
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    # The weights remember the model.yaml they were trained with: the edit is named.
    with pytest.raises(UserError, match=f"model.yaml gives {section + '.' if section else ''}"
                                        f"{key} = "):
        load_engine(model=str(folder))
    # Weights saved before that record existed: the size bound refuses it in one line.
    weights = folder / "weights.safetensors"
    save_file(load_file(str(weights)), str(weights))
    with pytest.raises(UserError, match=words):
        load_engine(model=str(folder))


@pytest.mark.parametrize("name", ["gridnet-generalist", "unrolled-isbi2013"])
def test_nan_weights_refused_naming_the_tensor(tmp_path, name):
    from safetensors.torch import load_file, save_file

    from stormfold.localize import load_engine

    folder = _copy_model(name, tmp_path / "m")
    tensors = load_file(str(folder / "weights.safetensors"))
    key = sorted(k for k, v in tensors.items() if v.is_floating_point())[0]
    tensors[key] = tensors[key] * float("nan")
    save_file(tensors, str(folder / "weights.safetensors"))
    with pytest.raises(UserError, match=f"weight tensor '{key}' holds NaN"):
        load_engine(model=str(folder))


def test_model_given_as_a_file(refused, folder):
    import tifffile

    tifffile.imwrite(folder / "m.tif", np.full((12, 16, 16), 100, np.uint16),
                     photometric="minisblack")
    assert "good.csv is a file, not a model folder" in refused(
        "localize", "m.tif", "--model", "good.csv", "--out", "o")


def test_render_warns_when_nothing_is_in_the_field(run_cli, folder):
    table = _table()
    table["x_nm"] -= 1e6
    _csv(folder / "left.csv", table)
    with pytest.warns(UserWarning, match="none of the 60 localizations lies inside the "
                                         "rendered field"):
        assert run_cli("render", "left.csv", "--out", "left.png")[0] == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert run_cli("render", "good.csv", "--out", "good.png")[0] == 0


def test_ignored_options_warn(run_cli, folder):
    import tifffile

    rng = np.random.default_rng(0)
    tifffile.imwrite(folder / "m.tif", rng.poisson(100, (30, 16, 16)).astype(np.uint16))
    with pytest.warns(UserWarning, match="--threshold is ignored without --model"):
        code, _, err = run_cli("sofi", "m.tif", "--out", "s", "--threshold", "0.5",
                               "--pixel-size", "100")
    assert code == 0, err
    with pytest.warns(UserWarning, match="--em-gain is ignored without --emccd"):
        run_cli("calibrate", "m.tif", "--out", "c", "--em-gain", "50", "--pixel-size", "100",
                "--quiet")


def test_calibrate_without_estimate_gives_the_reason():
    from stormfold.calibrate.core import _finite

    with pytest.raises(UserError, match=r"could not be estimated from this movie \(no spots\)$"):
        _finite(float("nan"), "the PSF σ", ["no spots"])


def test_frc_pixel_larger_than_the_data_refused(refused):
    line = refused("frc", "good.csv", "--out", "f", "--pixel-nm", "1e6")
    assert "2 × 2 pixels" in line and "at least 16 pixels across" in line


# --------------------------------------------------------------------------- review 8
def test_a_terminal_that_cannot_show_a_character_does_not_fail_the_command(folder):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONIOENCODING="ascii")
    proc = subprocess.run([sys.executable, "-m", "stormfold", "render", "good.csv", "--out",
                           "out/x.png"], cwd=folder, capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "\\xd7" in proc.stdout  # the "×" of "N × M pixels", escaped
    assert (folder / "out" / "x.png").is_file()


@pytest.mark.parametrize("argv,hint,absent", [
    (["localize", "m.tif", "--engine", "classic", "--out", "o"], "--batch-frames", "--batch-size"),
    (["train", "deepstorm", "--out", "o"], "--batch-size", "--batch-frames"),
    (["render", "t.csv", "--out", "o.png"], "a smaller table", "--batch"),
])
def test_the_out_of_memory_hint_names_only_options_of_the_command(capsys, argv, hint, absent):
    from stormfold.cli import _options, _out_of_memory, build_parser

    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"stormfold {argv[0]}"
    assert _out_of_memory(name, _options(parser, args)) == 2
    line = capsys.readouterr().err
    assert line.startswith(f"{name}: error: not enough memory (try ")
    assert hint in line
    assert absent not in line


def test_api_mistakes_are_user_errors_in_one_line():
    from stormfold.evaluate import nrmse, psnr
    from stormfold.io import open_movie, read_table
    from stormfold.postprocess import apply_drift, run_chain
    from stormfold.table import validate_table

    table = _table()
    twice = pd.concat([table, table[["photons"]]], axis=1)
    with pytest.raises(UserError, match=r"column\(s\) photons appear more than once"):
        validate_table(twice)
    with pytest.raises(UserError, match="apply_drift: the drift must be a pandas DataFrame"):
        apply_drift(table, "junk")
    with pytest.raises(UserError, match="movie must be a file path .* got NoneType"):
        open_movie(None)
    with pytest.raises(UserError, match="localization table must be a file path .* got NoneType"):
        read_table(None)
    with pytest.raises(UserError, match=r"YAML file path or a dict .* got list \[1, 2\]"):
        run_chain(table, [1, 2])
    complex_image = np.ones((8, 8), complex)
    for metric in (psnr, nrmse):
        with pytest.raises(UserError, match="the reference image is complex"):
            metric(complex_image, np.ones((8, 8)))
        with pytest.raises(UserError, match="the estimate image is complex"):
            metric(np.ones((8, 8)), complex_image)
    with pytest.raises(UserError, match=r"psnr: the reference image has 64 of 64 pixel\(s\) NaN"):
        psnr(np.full((8, 8), np.nan), np.zeros((8, 8)))


@pytest.mark.parametrize("name,key,match", [
    ("deepstorm-zerocost", "threshold", "threshold must be a positive finite number"),
    ("gridnet-generalist", "threshold", "threshold must be in (0, 1]"),
    ("unrolled-isbi2013", "extraction", "extraction.threshold must be a number ≥ 0"),
])
def test_a_nan_threshold_in_model_yaml_names_the_model(tmp_path, run_cli, name, key, match):
    import shutil

    from stormfold.io import write_tiff
    from stormfold.modelfile import builtin_root

    model = shutil.copytree(builtin_root() / name, tmp_path / "my_model")
    text = (model / "model.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    if key == "threshold":
        lines = ["threshold: .nan" if line.startswith("threshold:") else line for line in lines]
    else:
        lines = ["  threshold: .nan" if line.startswith("  threshold:") else line for line in lines]
    assert lines != text.splitlines()
    (model / "model.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_tiff(tmp_path / "m.tif", np.full((2, 16, 16), 100, np.uint16), pixel_size_nm=100.0)
    code, _, err = run_cli("localize", tmp_path / "m.tif", "--model", model, "--out",
                           tmp_path / "out")
    assert code == 2, err
    assert err.strip().startswith(f"stormfold localize: error: {model}: {match}")
    assert "got nan" in err
    assert not (tmp_path / "out").exists()
