"""Hostile inputs of review 15: each test fails on the defect the review found.

Command-line refusals check what a user meets: exit code 2, one line naming the problem, no
traceback, no file of the folder changed.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from stormfold.errors import UserError
from test_hostile_inputs import _snapshot  # every file's SHA-256 and every folder
from test_hostile_io import refused  # noqa: F401 (a fixture: one line, exit 2, nothing changed)


def _yaml_file(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --------------------------------------------------------------------------- D1: Picasso clashes
def _clashing_picasso(path: Path) -> Path:
    n = 5
    dtype = [("frame", "<u4"), ("x", "<f4"), ("y", "<f4"), ("lpx", "<f4"), ("lpy", "<f4"),
             ("x_nm", "<f4"), ("uncertainty_nm", "<f4"), ("sigma_nm", "<f4")]
    locs = np.zeros(n, dtype)
    locs["frame"] = np.arange(n)
    locs["x"] = 10 + np.arange(n)
    locs["y"] = 20
    locs["lpx"] = locs["lpy"] = 0.1
    locs["x_nm"], locs["uncertainty_nm"], locs["sigma_nm"] = 0, -7, 3
    with h5py.File(path, "w") as fh:
        fh.create_dataset("locs", data=locs)
    path.with_suffix(".yaml").write_text("Pixelsize: 100\nWidth: 64\nHeight: 64\nFrames: 5\n")
    return path


def test_picasso_fields_named_like_computed_columns_never_replace_them(tmp_path):
    from stormfold.io import read_picasso_hdf5

    path = _clashing_picasso(tmp_path / "p.hdf5")
    with pytest.warns(UserWarning, match="x_nm as x_nm_1") as record:
        table, info = read_picasso_hdf5(path)
    assert len(record) == 1
    assert table["x_nm"].tolist() == pytest.approx([1050, 1150, 1250, 1350, 1450])
    assert table["uncertainty_nm"].tolist() == pytest.approx([10.0] * 5)
    assert "sigma_nm" not in table.columns  # no sx/sy: a field must not stand in for them
    assert table["x_nm_1"].tolist() == [0] * 5
    assert table["uncertainty_nm_1"].tolist() == [-7] * 5
    assert table["sigma_nm_1"].tolist() == [3] * 5
    assert set(info["extra_fields"]) == {"x_nm_1", "uncertainty_nm_1", "sigma_nm_1"}


def test_convert_of_clashing_picasso_keeps_the_positions(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _clashing_picasso(tmp_path / "p.hdf5")
    with warnings.catch_warnings(record=True) as said:  # pytest keeps them off stderr
        warnings.simplefilter("always")
        code, _, err = run_cli("convert", "p.hdf5", "p.csv")
    assert code == 0, err
    assert len([w for w in said if "x_nm_1" in str(w.message) or "clash" in str(w.message)
                or "named like" in str(w.message)]) == 1, [str(w.message) for w in said]
    out = pd.read_csv(tmp_path / "p.csv")
    assert out["x [nm]"].tolist() == pytest.approx([1050, 1150, 1250, 1350, 1450])


# --------------------------------------------------------------------------- D6: user's files
def _write_set(folder: Path, files: dict, command: str = "test") -> None:
    from stormfold.io.outputs import OutputFolder

    out = OutputFolder(folder, command, list(files))
    with out:
        for name, text in files.items():
            out.path(name).write_text(text)
        out.commit({"n": len(files)})


def test_a_users_own_file_of_an_output_name_is_never_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "a.csv").write_text("the user's table")
    with pytest.raises(UserError, match=r"did not write: a\.csv; choose another output folder"):
        _write_set(out, {"a.csv": "new\n", "b.csv": "new\n"})
    assert sorted(p.name for p in out.iterdir()) == ["a.csv"]  # refused before any work
    assert (out / "a.csv").read_text() == "the user's table"


def test_a_staged_file_missing_from_the_names_is_checked_at_the_commit(tmp_path):
    from stormfold.io.outputs import OutputFolder

    out = tmp_path / "mine"
    out.mkdir()
    (out / "extra.txt").write_text("the user's notes")
    target = OutputFolder(out, "test", ["a.csv"])
    with pytest.raises(UserError, match="extra.txt"):
        with target:
            target.path("a.csv").write_text("new")
            target.path("extra.txt").write_text("new")
            target.commit()
    assert sorted(p.name for p in out.iterdir()) == ["extra.txt"]
    assert (out / "extra.txt").read_text() == "the user's notes"


def test_files_an_earlier_run_of_the_command_wrote_are_still_replaced(tmp_path):
    out = tmp_path / "out"
    _write_set(out, {"a.csv": "old\n"})
    _write_set(out, {"a.csv": "new\n", "b.csv": "new\n"})
    assert (out / "a.csv").read_text() == "new\n"
    assert not (out / ".stormfold-pending.json").exists()


def test_a_file_of_a_model_whose_history_changed_in_place_stays_stormfolds(tmp_path):
    from stormfold.io.manifest import mark_incomplete

    out = tmp_path / "model"
    _write_set(out, {"weights.safetensors": "w", "model.yaml": "m"}, command="model")
    mark_incomplete(out)  # a new training writes its history: the manifest goes
    mark_incomplete(out)  # and again, epoch after epoch
    _write_set(out, {"weights.safetensors": "w2", "model.yaml": "m2"}, command="model")
    assert (out / "weights.safetensors").read_text() == "w2"


def test_cli_localize_refuses_to_replace_the_users_table(run_cli, tmp_path, monkeypatch):
    from stormfold.io import write_tiff

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    write_tiff(tmp_path / "m.tif", rng.integers(90, 120, (3, 16, 16)).astype(np.uint16))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "localizations.csv").write_text("my ThunderSTORM table\n")
    before = _snapshot(tmp_path)
    code, _, err = run_cli("localize", "m.tif", "--engine", "classic", "--pixel-size", "100",
                           "--baseline", "100", "--out", "mine")
    assert code == 2, err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "localizations.csv" in errors[0] and "--out" in errors[0]
    assert _snapshot(tmp_path) == before


# --------------------------------------------------------------------------- D8: exit 1 → 2
@pytest.mark.parametrize("argv, text, match", [
    (("simulate", "--config", "c.yaml", "--out", "o", "--quiet"), "1: a\nfoo: b\n",
     "unknown configuration key '1'"),
    (("postprocess", "l.csv", "--out", "o", "--config", "c.yaml"), "1: a\nfoo: b\n",
     "unknown post-processing key '1'"),
    (("train", "gridnet", "--config", "c.yaml", "--out", "o", "--steps", "1"),
     "1: a\nfoo: b\n", "unknown configuration key '1'"),
    (("train", "gridnet", "--config", "c.yaml", "--out", "o", "--steps", "1"),
     "schedule: [1, 2]\n", "schedule: expected a mapping"),
    (("train", "gridnet", "--config", "c.yaml", "--out", "o", "--steps", "1"),
     "schedule: abc\n", "schedule: expected a mapping"),
    (("train", "gridnet", "--config", "c.yaml", "--out", "o", "--steps", "1"),
     "schedule: 5\n", "schedule: expected a mapping"),
    (("simulate", "--config", "c.yaml", "--out", "o", "--quiet"), "simulation: 5\n",
     "simulation: expected a mapping"),
    (("simulate", "--set", "emitters.photons_mean=1e30", "--frames", "1", "--out", "o",
      "--quiet"), None, "emitters.photons_mean must be ≤ 1e+09"),
    (("simulate", "--set", "emitters.photons_distribution=uniform",
      "--set", "emitters.photons_max=1e30", "--frames", "1", "--out", "o", "--quiet"), None,
     "emitters.photons_max must be ≤ 1e+09"),
    (("simulate", "--set", "background.photons=1e30", "--frames", "1", "--out", "o",
      "--quiet"), None, "background.photons must be ≤ 1e+09"),
])
def test_user_mistakes_are_one_line_exit_2(tmp_path, refused, argv, text, match):
    pd.DataFrame({"frame": [1, 2], "x [nm]": [100.0, 200.0],
                  "y [nm]": [100.0, 200.0]}).to_csv(tmp_path / "l.csv", index=False)
    if text is not None:
        (tmp_path / "c.yaml").write_text(text)
    refused(*argv, match=match)


@pytest.mark.parametrize("argv", [("render", "in/l.csv", "--out", "loopA/x.tif"),
                                  ("postprocess", "in/l.csv", "--out", "loopA",
                                   "--steps", "render")])
def test_an_output_through_a_symlink_loop_is_one_line(tmp_path, run_cli, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    pd.DataFrame({"frame": [1, 2], "x [nm]": [100.0, 200.0],
                  "y [nm]": [100.0, 200.0]}).to_csv(tmp_path / "in" / "l.csv", index=False)
    (tmp_path / "loopB").symlink_to(tmp_path / "loopA")
    (tmp_path / "loopA").symlink_to(tmp_path / "loopB")
    before = _snapshot(tmp_path / "in")
    code, _, err = run_cli(*argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "symbolic link loop" in lines[0] and "internal error" not in err
    assert _snapshot(tmp_path / "in") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "loopA", "loopB"]


# --------------------------------------------------------------------------- D7: no step ran
def test_a_loop_in_which_no_step_finished_is_refused():
    from stormfold.training import Budget, run_loop

    calls = []
    with pytest.raises(UserError, match="no training epoch finished within 1e-12 min"):
        run_loop(lambda i: calls.append(i) or {"loss": 1.0}, 0, Budget(minutes=1e-12),
                 unit="epoch")
    assert calls == []
    # A resumed run that has nothing left to do is not a zero-step training.
    assert run_loop(lambda i: {"loss": 1.0}, 5, Budget(steps=5)) == 5


def test_train_gridnet_with_no_step_writes_no_model(tmp_path, refused):
    line = refused("train", "gridnet", "--minutes", "1e-9", "--out", "model", "--quiet",
                   match="no training step finished")
    assert "nothing written" in line
    assert not (tmp_path / "model").exists()


# --------------------------------------------------------------------------- D3: filter frames
def _three_frames(tmp_path: Path) -> pd.DataFrame:
    from stormfold.io.tables import write_table

    table = pd.DataFrame({"frame": [0, 1, 2], "x_nm": [100.0, 200.0, 300.0],
                          "y_nm": [100.0, 200.0, 300.0]})
    write_table(tmp_path / "l.csv", table)  # frames 1, 2, 3 in the file
    write_table(tmp_path / "l.hdf5", table, pixel_size_nm=100.0)  # frames 0, 1, 2
    return table


@pytest.mark.parametrize("source, out, expr, kept", [
    ("l.csv", "f.csv", "frame == 1", [1]),           # file frames, as the user reads them
    ("l.csv", "f.csv", "frame in [2, 3]", [2, 3]),
    ("l.hdf5", "f.csv", "frame == 1", [2]),          # Picasso counts from 0
])
def test_filter_expression_frames_are_the_files(tmp_path, run_cli, monkeypatch, source, out,
                                                 expr, kept):
    monkeypatch.chdir(tmp_path)
    _three_frames(tmp_path)
    code, _, err = run_cli("filter", source, "--out", out, "--expr", expr)
    assert code == 0, err
    assert pd.read_csv(tmp_path / out)["frame"].tolist() == kept  # written 1-based


def test_postprocess_chain_filter_frames_are_the_files(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _three_frames(tmp_path)
    _yaml_file(tmp_path / "pp.yaml", {"steps": ["filter"], "filter": {"expr": "frame == 1"}})
    code, _, err = run_cli("postprocess", "l.csv", "--out", "pp", "--config", "pp.yaml")
    assert code == 0, err
    written = [p for p in (tmp_path / "pp").iterdir() if p.suffix == ".csv"]
    assert written and all(pd.read_csv(p)["frame"].tolist() == [1] for p in written), written


def test_run_chain_frame_base_and_the_in_memory_default():
    from stormfold.postprocess import expression_mask
    from stormfold.postprocess.chain import run_chain

    table = pd.DataFrame({"frame": [0, 1, 2], "x_nm": [1.0, 2.0, 3.0], "y_nm": [1.0, 2.0, 3.0]})
    assert expression_mask(table, "frame == 1").tolist() == [False, True, False]
    config = {"filter": {"expr": "frame == 1"}}
    assert run_chain(table, config, ["filter"], frame_base=1).table["frame"].tolist() == [0]


# --------------------------------------------------------------------------- D5: other truth
def _truth_folder(folder: Path, n_frames: int, rows: int, cols: int, px: float = 100.0) -> Path:
    folder.mkdir()
    pd.DataFrame({"frame": [1, 2], "x [nm]": [500.0, 900.0],
                  "y [nm]": [500.0, 900.0]}).to_csv(folder / "truth.csv", index=False)
    _yaml_file(folder / "simulation.yaml", {"n_frames": n_frames, "n_rows": rows,
                                            "n_cols": cols, "pixel_size_nm": px})
    return folder / "truth.csv"


def _locs_folder(folder: Path, run: dict) -> Path:
    folder.mkdir()
    pd.DataFrame({"frame": [1, 2], "x [nm]": [510.0, 910.0],
                  "y [nm]": [500.0, 900.0]}).to_csv(folder / "localizations.csv", index=False)
    _yaml_file(folder / "run.yaml", run)
    return folder / "localizations.csv"


_LOCALIZE_RUN = {"frames": [0, 10], "n_frames": 10, "frame_shape": [64, 64],
                 "pixel_size_nm": 100.0}


@pytest.mark.parametrize("sim, run, match", [
    ((3, 32, 128), _LOCALIZE_RUN, "frame size 32×128 vs 64×64 px, 3 frames vs frames up to 10"),
    ((10, 64, 64, 160.0), _LOCALIZE_RUN, "pixel size 160 vs 100 nm"),
    ((12, 64, 64), {"movie": {"n_frames": 10, "frame_shape": [64, 64], "pixel_size_nm": 100.0,
                              "frames": [0, 10]}}, "12 vs 10 frames"),
])
def test_evaluate_against_the_truth_of_another_movie_is_refused(tmp_path, refused, sim, run,
                                                               match):
    _truth_folder(tmp_path / "sim", *sim)
    _locs_folder(tmp_path / "loc", run)
    line = refused("evaluate", "--truth", "sim/truth.csv", "--locs", "loc/localizations.csv",
                   match=match)
    assert "another movie" in line


@pytest.mark.parametrize("run", [
    _LOCALIZE_RUN,
    {"frames": [2, 5], "n_frames": 3, "frame_shape": [64, 64], "pixel_size_nm": 100.0},
])
def test_evaluate_against_the_truth_of_the_same_movie_runs(tmp_path, run_cli, monkeypatch, run):
    monkeypatch.chdir(tmp_path)
    _truth_folder(tmp_path / "sim", 10, 64, 64)
    _locs_folder(tmp_path / "loc", run)
    code, out, err = run_cli("evaluate", "--truth", "sim/truth.csv",
                             "--locs", "loc/localizations.csv")
    assert code == 0, err


def test_run_refuses_the_truth_of_another_movie_before_any_work(tmp_path, refused):
    from stormfold.io import write_tiff

    rng = np.random.default_rng(0)
    write_tiff(tmp_path / "m.tif", rng.integers(90, 120, (4, 16, 16)).astype(np.uint16),
               pixel_size_nm=100.0)
    _truth_folder(tmp_path / "sim", 4, 32, 16)
    _yaml_file(tmp_path / "run.yaml", {"movie": "m.tif", "output": "out",
                                       "engine": {"engine": "classic"},
                                       "camera": {"baseline_adu": 100, "e_per_adu": 1},
                                       "evaluation": {"truth": "sim/truth.csv"}})
    refused("run", "run.yaml", match="frame size 32×16 vs 16×16 px")


# --------------------------------------------------------------------------- D2: seed-only config
def test_a_seed_only_training_config_is_a_training_config(tmp_path):
    from stormfold.deepstorm.config import build_train_config as deepstorm_config
    from stormfold.gridnet.config import build_train_config as gridnet_config
    from stormfold.sofi.train import load_sofi_train_config
    from stormfold.unrolled.train import load_train_config

    path = _yaml_file(tmp_path / "train.yaml", {"seed": 7})
    g = gridnet_config(config_file=path)
    assert (g.seed, g.init, g.simulation) == (7, "none", None)  # from scratch, not a fine-tune
    u = load_train_config(path, {})
    assert u.seed == 7 and u.data.simulation == {}
    assert load_sofi_train_config(path).seed == 7
    assert deepstorm_config(config_file=path).seed == 7


def test_seed_and_preset_alone_are_refused_as_ambiguous(tmp_path):
    from stormfold.gridnet.config import build_train_config

    path = _yaml_file(tmp_path / "train.yaml", {"seed": 7, "preset": "sofi"})
    with pytest.raises(UserError, match="'seed' and 'preset' alone are ambiguous"):
        build_train_config(config_file=path)


def test_a_simulation_yaml_is_still_training_data(tmp_path):
    from stormfold.gridnet.config import build_train_config

    path = _yaml_file(tmp_path / "simulation.yaml", {"seed": 3, "n_frames": 5, "preset": "sofi"})
    g = build_train_config(config_file=path)
    assert g.simulation is not None and g.simulation.n_frames == 5


# --------------------------------------------------------------------------- D13: repeated header
@pytest.mark.parametrize("header", ['"id","frame","x [nm]","y [nm]","x [nm]"',
                                    'frame,x [nm],y [nm], x [nm] '])
def test_a_csv_that_repeats_a_column_is_refused(tmp_path, refused, header):
    n = header.count(",") + 1
    rows = "\n".join(",".join(str(10 * r + c + 1) for c in range(n)) for r in range(2))
    (tmp_path / "t.csv").write_text(f"{header}\n{rows}\n")
    refused("convert", "t.csv", "t.hdf5", "--pixel-size", "100",
            match="the header repeats the column(s) 'x [nm]'")


def test_a_csv_with_empty_header_cells_is_still_read(tmp_path):
    from stormfold.io.tables import read_table

    (tmp_path / "t.csv").write_text("frame,x [nm],y [nm],,\n1,100,200,,\n")
    assert read_table(tmp_path / "t.csv")["x_nm"].tolist() == [100.0]


# --------------------------------------------------------------------------- D15: the key named
@pytest.mark.parametrize("key", ["background.map", "structure.mask"])
def test_a_missing_image_names_its_own_key(tmp_path, refused, key):
    extra = ["--set", "structure.kind=mask"] if key == "structure.mask" else []
    line = refused("simulate", "--set", f"{key}=/nonexistent.tif", *extra, "--frames", "1",
                   "--out", "o", "--quiet", match=f"{key}: file not found: /nonexistent.tif")
    assert ("structure.mask" in line) == (key == "structure.mask")


# --------------------------------------------------------------------------- D17: empty truth
def test_evaluate_against_an_empty_truth_warns_in_one_line(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"frame": [1, 2], "x [nm]": [100.0, 200.0],
                  "y [nm]": [100.0, 200.0]}).to_csv(tmp_path / "l.csv", index=False)
    (tmp_path / "empty.csv").write_text("frame,x [nm],y [nm]\n")
    with warnings.catch_warnings(record=True) as said:  # pytest keeps them off stderr
        warnings.simplefilter("always")
        code, out, err = run_cli("evaluate", "--truth", "empty.csv", "--locs", "l.csv")
    assert code == 0, err
    warned = [str(w.message) for w in said if "truth has no emitter" in str(w.message)]
    assert len(warned) == 1, [str(w.message) for w in said]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        code, out, err = run_cli("evaluate", "--truth", "l.csv", "--locs", "l.csv")
    assert code == 0 and not [w for w in said if "truth has no emitter" in str(w.message)]


def test_simulation_config_mistakes_left_by_review_15(tmp_path, refused):
    """D12: a negative simulated baseline clipped half the movie; D10: keys beside a
    ``simulation:`` section were dropped without a word."""
    refused("simulate", "--set", "camera.baseline_adu=-100", "--frames", "2", "--out", "o",
            match="camera.baseline_adu must be in [0")
    _yaml_file(tmp_path / "s.yaml", {"preset": "sofi", "n_rows": 16,
                                     "simulation": {"n_frames": 2}})
    refused("simulate", "--config", "s.yaml", "--out", "o",
            match="beside the 'simulation' section (n_rows, preset)")
    _yaml_file(tmp_path / "t.yaml", {"simulation": {"n_frames": 2, "n_rows": 16, "n_cols": 16}})
    from stormfold.simulate import build_config

    assert build_config(config_file=tmp_path / "t.yaml").n_rows == 16
    # A training file's own keys beside its simulation section stay the training's.
    _yaml_file(tmp_path / "u.yaml", {"steps": 10, "simulation": {"n_rows": 16, "n_cols": 16}})
    assert build_config(config_file=tmp_path / "u.yaml").n_rows == 16


def test_a_rendering_of_one_pixel_warns():
    """D17: ``render --pixel-nm 1e9`` wrote a 1 × 1 image without a word."""
    from stormfold.postprocess.render import render
    from stormfold.table import make_table

    table = make_table(np.array([0, 1]), np.array([500.0, 4000.0]), np.array([800.0, 3000.0]))
    with pytest.warns(UserWarning, match="is the pixel size in nm"):
        assert render(table, pixel_nm=1e9).shape == (1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        render(table, pixel_nm=20.0)


def test_manifests_record_the_command_line(tmp_path, run_cli):
    """D16: simulate, postprocess and frc wrote ``command_line: null``."""
    import json

    code, _, err = run_cli("simulate", "--frames", "2", "--set", "n_rows=16", "--set",
                           "n_cols=16", "--out", tmp_path / "sim", "--quiet")
    assert code == 0, err
    manifest = json.loads((tmp_path / "sim" / "manifest.json").read_text())
    # In-process the command line is pytest's own argv; the CLI records sys.argv.
    assert manifest["command_line"][0] == "stormfold" and len(manifest["command_line"]) > 1
    code, _, err = run_cli("postprocess", tmp_path / "sim" / "truth.csv", "--steps", "render",
                           "--out", tmp_path / "pp")
    assert code == 0, err
    manifest = json.loads((tmp_path / "pp" / "manifest.json").read_text())
    assert manifest["command_line"][0] == "stormfold" and len(manifest["command_line"]) > 1


def test_picasso_fields_that_are_no_column_or_a_negative_precision(tmp_path):
    """D14: a negative lpx was read as a negative uncertainty; shaped and text fields were
    dropped or written as b'...' without a word."""
    from stormfold.io.picasso import read_picasso_hdf5

    def write(path, dtype, rows):
        with h5py.File(path, "w") as f:
            f.create_dataset("locs", data=np.array(rows, dtype=dtype))
        path.with_suffix(".yaml").write_text("Pixelsize: 100\nWidth: 64\nHeight: 64\n")
        return path

    base = [("frame", "u4"), ("x", "f4"), ("y", "f4"), ("lpx", "f4"), ("lpy", "f4")]
    bad = write(tmp_path / "neg.hdf5", base, [(0, 1.0, 2.0, -0.1, 0.1), (1, 3.0, 4.0, 0.1, 0.1)])
    with pytest.raises(UserError, match="negative lpx"):
        read_picasso_hdf5(bad)
    odd = write(tmp_path / "odd.hdf5", [*base, ("v", "f4", (3,)), ("s", "S4")],
                [(0, 1.0, 2.0, 0.1, 0.1, (1, 2, 3), b"ab"),
                 (1, 3.0, 4.0, 0.1, 0.1, (4, 5, 6), b"c")])
    with pytest.warns(UserWarning, match="v, s left out"):
        table, _ = read_picasso_hdf5(odd)
    assert "v" not in table.columns and "s" not in table.columns and len(table) == 2


def test_localize_movie_api_types_are_one_line_errors(tmp_path):
    """D9: wrong argument types reached deep AttributeErrors."""
    from stormfold.io.memory import movie_from_array
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    movie = movie_from_array(np.full((2, 16, 16), 100, np.uint16), pixel_size_nm=100.0)
    engine = load_engine(engine="classic")
    for kwargs, match in (({"engine": None}, "engine must be an Engine"),
                          ({"engine": "classic"}, "engine must be an Engine"),
                          ({"camera": {"baseline_adu": 10}}, "camera must be a Camera"),
                          ({"batch_frames": "4"}, "whole number"),
                          ({"batch_frames": 2.5}, "whole number")):
        with pytest.raises(UserError, match=match):
            localize_movie(movie, **{"engine": engine, **kwargs}, progress=False)
