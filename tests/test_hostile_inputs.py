"""Hostile inputs, the way a new user meets them, against every command.

Each case runs the command line (in-process, a few as real subprocesses) in a folder that
holds a small simulated movie, its truth, a set of damaged files and a complete earlier
output. For every case: the exit code, one line on stderr, no traceback, and the whole
folder byte-for-byte as before (SHA-256 of every file, and no file or folder added or
removed): the inputs are untouched, a refused output folder is not created and an earlier
output is not changed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from stormfold.io import write_tiff
from stormfold.modelfile import builtin_root

MODEL = "unrolled-isbi2013"  # the smallest shipped model


def _snapshot(root: Path) -> dict:
    """Every file (SHA-256) and folder under ``root``."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            state[os.path.relpath(os.path.join(dirpath, name), root)] = "folder"
        for name in filenames:
            path = os.path.join(dirpath, name)
            state[os.path.relpath(path, root)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return state


def _yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The folder every case runs in (paths relative to it)."""
    from stormfold.cli import main
    from stormfold.simulate import build_config, simulate_to_folder

    w = tmp_path_factory.mktemp("world")
    cfg = build_config("thunderstorm", n_frames=20, seed=1,
                       overrides=["n_rows=24", "n_cols=24", "activation.density_per_um2=0.5"])
    simulate_to_folder(cfg, w / "sim", progress=False)
    movie = tifffile.imread(w / "sim" / "movie.tif")
    assert movie.shape == (20, 24, 24)
    # A complete earlier output of each kind: a failed command must leave it as it is.
    assert main(["localize", str(w / "sim" / "movie.tif"), "--engine", "classic",
                 "--out", str(w / "old_loc"), "--quiet"]) == 0
    run_settings = {"movie": str(w / "sim" / "movie.tif"), "engine": {"engine": "classic"},
                    "postprocess": {}, "report": False, "chunk_frames": 8}
    _yaml(w / "run_ok.yaml", {**run_settings, "output": str(w / "old_run")})
    assert main(["run", str(w / "run_ok.yaml"), "--quiet"]) == 0
    shutil.copy(w / "old_loc" / "localizations.csv", w / "locs.csv")

    # Damaged movies.
    data = movie.astype(np.uint16)
    raw = (w / "sim" / "movie.tif").read_bytes()
    (w / "cut.tif").write_bytes(raw[:len(raw) // 2])
    (w / "empty.tif").write_bytes(b"")
    (w / "not_a_tiff.tif").write_text("this is a text file\n")
    nan = data.astype(np.float32)
    nan[3, 5, 5] = np.nan
    nan[7, 1, 2] = np.inf
    write_tiff(w / "nan.tif", nan, pixel_size_nm=100.0)
    tifffile.imwrite(w / "tzyx.tif", np.stack([data, data], axis=1), photometric="minisblack")
    tifffile.imwrite(w / "rgb.tif", np.stack([data[0]] * 3, axis=-1).astype(np.uint8),
                     photometric="rgb")
    tifffile.imwrite(w / "int8.tif", (data // 1000).astype(np.int8), photometric="minisblack")
    (w / "empty_dir").mkdir()
    # The movie where the outputs go: inside the output folder, under an output's name.
    (w / "inside").mkdir()
    shutil.copy(w / "sim" / "movie.tif", w / "inside" / "widefield.tif")
    shutil.copy(w / "sim" / "truth.csv", w / "inside" / "localizations.csv")
    (w / "a_file.txt").write_text("not a folder\n")

    # Tables.
    (w / "wrong_columns.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")
    (w / "empty.csv").write_text("")
    (w / "header_only.csv").write_text((w / "locs.csv").read_text().splitlines()[0] + "\n")

    # Configurations.
    (w / "bad.yaml").write_text("movie: [unclosed\n  output: : :\n")
    _yaml(w / "run_badkey.yaml", {**run_settings, "output": str(w / "old_run"), "moovie": 1})
    _yaml(w / "run_bins.yaml", {**run_settings, "output": str(w / "old_run"), "frames": [0, 5],
                                "postprocess": {"steps": ["drift"], "drift": {"bins": 10}}})
    _yaml(w / "run_inside.yaml", {**run_settings, "movie": str(w / "inside" / "widefield.tif"),
                                  "output": str(w / "inside")})
    _yaml(w / "run_truth_inside.yaml", {**run_settings, "output": str(w / "inside"),
                                        "evaluation": {"truth": str(w / "inside" /
                                                                    "localizations.csv")}})
    _yaml(w / "run_outfile.yaml", {**run_settings, "output": str(w / "a_file.txt")})
    _yaml(w / "run_missing_movie.yaml", {**run_settings, "movie": str(w / "nope.tif"),
                                         "output": str(w / "new_run")})
    _yaml(w / "run_frames.yaml", {**run_settings, "frames": [100, 200],
                                  "output": str(w / "old_run")})

    # Models: one without weights, one whose model.yaml names another engine, one whose
    # model.yaml is not YAML.
    src = builtin_root() / MODEL
    for name in ("model_noweights", "model_mismatch", "model_badyaml"):
        shutil.copytree(src, w / name)
    (w / "model_noweights" / "weights.safetensors").unlink()
    meta = yaml.safe_load((w / "model_mismatch" / "model.yaml").read_text())
    meta["engine"] = "deepstorm"
    _yaml(w / "model_mismatch" / "model.yaml", meta)
    (w / "model_badyaml" / "model.yaml").write_text("engine: [unrolled\n")
    return w


LOC = ["localize", "sim/movie.tif", "--engine", "classic", "--quiet"]

#: (id, argv, exit code). Paths are relative to the world folder; ``old_loc`` and
#: ``old_run`` are complete earlier outputs, ``new`` does not exist.
CASES = [
    # --- movies
    ("missing movie", ["localize", "nope.tif", "--engine", "classic", "--out", "new"], 2),
    ("empty folder as movie", ["localize", "empty_dir", "--engine", "classic", "--out", "new"], 2),
    ("empty file", ["localize", "empty.tif", "--engine", "classic", "--out", "new"], 2),
    ("text file as TIFF", ["localize", "not_a_tiff.tif", "--engine", "classic", "--out", "new"], 2),
    ("TIFF cut in half", ["localize", "cut.tif", "--engine", "classic", "--out", "old_loc"], 2),
    ("NaN/Inf pixels", ["localize", "nan.tif", "--engine", "classic", "--camera",
                        "sim/simulation.yaml", "--out", "old_loc"], 2),
    ("4-D without --axes", ["localize", "tzyx.tif", "--engine", "classic", "--out", "new"], 2),
    ("--axes without the plane", ["localize", "tzyx.tif", "--engine", "classic", "--axes",
                                  "TZYX", "--out", "new"], 2),
    ("RGB", ["localize", "rgb.tif", "--engine", "classic", "--out", "new"], 2),
    ("int8", ["localize", "int8.tif", "--engine", "classic", "--out", "new"], 2),
    ("pixel size 5 nm", [*LOC, "--pixel-size", "5", "--out", "new"], 2),
    ("pixel size 5000 nm", [*LOC, "--pixel-size", "5000", "--out", "new"], 2),
    ("baseline above the 99th percentile", [*LOC, "--baseline", "60000", "--out", "old_loc"], 2),
    ("infinite baseline", [*LOC, "--baseline", "inf", "--out", "new"], 2),
    ("negative baseline", [*LOC, "--baseline", "-5", "--out", "new"], 2),
    ("infinite threshold", [*LOC, "--threshold", "inf", "--out", "old_loc"], 2),
    ("negative threshold", [*LOC, "--threshold", "-1", "--out", "new"], 2),
    ("NaN threshold", [*LOC, "--threshold", "nan", "--out", "new"], 2),
    ("bad --set key", [*LOC, "--set", "no_such_option=1", "--out", "new"], 2),
    ("frames beyond the movie", [*LOC, "--frames", "100:200", "--out", "old_loc"], 2),
    ("negative frames", [*LOC, "--frames=-5:3", "--out", "new"], 2),
    ("empty frame range", [*LOC, "--frames", "5:5", "--out", "new"], 2),
    ("malformed frame range", [*LOC, "--frames", "1-5", "--out", "new"], 2),
    ("zero batch", [*LOC, "--batch-frames", "0", "--out", "new"], 2),
    ("output is the movie", [*LOC, "--out", "sim/movie.tif"], 2),
    ("output is a file", [*LOC, "--out", "a_file.txt"], 2),
    ("output under a file", [*LOC, "--out", "a_file.txt/sub"], 2),
    ("movie in the output folder under an output's name",
     ["localize", "inside/widefield.tif", "--engine", "classic", "--out", "inside"], 2),
    ("camera file missing", [*LOC, "--camera", "nope.yaml", "--out", "new"], 2),
    ("camera file not YAML", [*LOC, "--camera", "bad.yaml", "--out", "new"], 2),
    # --- models
    ("model folder missing", ["localize", "sim/movie.tif", "--model", "no_model", "--out", "new"], 2),
    ("model without weights", ["localize", "sim/movie.tif", "--model", "model_noweights",
                               "--out", "new"], 2),
    ("model.yaml of another engine", ["localize", "sim/movie.tif", "--model", "model_mismatch",
                                      "--out", "old_loc"], 2),
    ("model.yaml not YAML", ["localize", "sim/movie.tif", "--model", "model_badyaml",
                             "--out", "new"], 2),
    ("unknown built-in model", ["localize", "sim/movie.tif", "--model", "builtin:nope",
                                "--out", "new"], 2),
    ("unknown engine", ["localize", "sim/movie.tif", "--engine", "nope", "--out", "new"], 2),
    ("gridnet: unknown decoder", ["localize", "sim/movie.tif", "--model",
                                  "builtin:gridnet-generalist", "--set", "decoder=fit",
                                  "--out", "new"], 2),
    ("gridnet: cluster radius 5 px", ["localize", "sim/movie.tif", "--model",
                                      "builtin:gridnet-generalist", "--set", "radius_px=5",
                                      "--out", "old_loc"], 2),
    ("gridnet: unknown refinement", ["localize", "sim/movie.tif", "--model",
                                     "builtin:gridnet-generalist", "--set", "refine=exact",
                                     "--out", "new"], 2),
    ("gridnet: negative split threshold", ["localize", "sim/movie.tif", "--model",
                                           "builtin:gridnet-generalist", "--set",
                                           "split_llr=-5", "--out", "new"], 2),
    # --- run
    ("run: config missing", ["run", "nope.yaml"], 2),
    ("run: config not YAML", ["run", "bad.yaml"], 2),
    ("run: unknown config key", ["run", "run_badkey.yaml"], 2),
    ("run: bad --set key", ["run", "run_ok.yaml", "--set", "engine.nope=1"], 2),
    ("run: drift bins infeasible for the frames", ["run", "run_bins.yaml"], 2),
    ("run: frames beyond the movie", ["run", "run_frames.yaml"], 2),
    ("run: movie in the output folder", ["run", "run_inside.yaml"], 2),
    ("run: truth in the output folder", ["run", "run_truth_inside.yaml"], 2),
    ("run: output is a file", ["run", "run_outfile.yaml"], 2),
    ("run: movie missing", ["run", "run_missing_movie.yaml"], 2),
    ("run: infinite threshold", ["run", "run_ok.yaml", "--set", "engine.threshold=.inf"], 2),
    ("run: pixel size 5 nm", ["run", "run_ok.yaml", "--set", "pixel_size_nm=5"], 2),
    ("run: zero chunk", ["run", "run_ok.yaml", "--set", "chunk_frames=0"], 2),
    ("run: output is the config file", ["run", "run_ok.yaml", "--set", "output=run_ok.yaml"], 2),
    # --- simulate, calibrate, sofi, train, demo
    ("simulate: bad --set key", ["simulate", "--set", "camera.nope=1", "--out", "new"], 2),
    ("simulate: zero frames", ["simulate", "--frames", "0", "--out", "new"], 2),
    ("simulate: config not YAML", ["simulate", "--config", "bad.yaml", "--out", "new"], 2),
    ("simulate: output is a file", ["simulate", "--frames", "2", "--out", "a_file.txt"], 2),
    ("simulate: over an input", ["simulate", "--frames", "2", "--config", "sim/simulation.yaml",
                                 "--out", "sim"], 2),
    ("calibrate: NaN pixels", ["calibrate", "nan.tif", "--out", "new", "--quiet"], 2),
    ("calibrate: missing movie", ["calibrate", "nope.tif", "--out", "new"], 2),
    ("calibrate: bad ROI", ["calibrate", "sim/movie.tif", "--roi", "0,0,500,500", "--out", "new"], 2),
    ("sofi: 4-D without --axes", ["sofi", "tzyx.tif", "--out", "new"], 2),
    ("sofi: infinite threshold", ["sofi", "sim/movie.tif", "--threshold", "inf", "--out", "new"], 2),
    ("sofi: model of another engine", ["sofi", "sim/movie.tif", "--model", f"builtin:{MODEL}",
                                       "--out", "new"], 2),
    ("sofi: frames beyond the movie", ["sofi", "sim/movie.tif", "--frames", "50:60",
                                       "--out", "new"], 2),
    ("train: --minutes 0", ["train", "deepstorm", "--minutes", "0", "--out", "new"], 2),
    ("train: --minutes -1", ["train", "unrolled", "--minutes=-1", "--out", "new"], 2),
    ("train: bad --set key", ["train", "unrolled", "--set", "solver.nope=1", "--out", "new"], 2),
    ("demo: output is a file", ["demo", "--out", "a_file.txt"], 2),
    # --- tables
    ("evaluate: wrong columns", ["evaluate", "--truth", "sim/truth.csv", "--locs",
                                 "wrong_columns.csv"], 2),
    ("evaluate: empty CSV", ["evaluate", "--truth", "sim/truth.csv", "--locs", "empty.csv"], 2),
    ("evaluate: missing truth", ["evaluate", "--truth", "nope.csv", "--locs", "locs.csv"], 2),
    ("evaluate: --json over the input", ["evaluate", "--truth", "sim/truth.csv", "--locs",
                                         "locs.csv", "--json", "locs.csv"], 2),
    ("evaluate: --json under a file", ["evaluate", "--truth", "sim/truth.csv", "--locs",
                                       "locs.csv", "--json", "a_file.txt/e.json"], 2),
    ("evaluate: frames beyond the truth", ["evaluate", "--truth", "sim/truth.csv", "--locs",
                                           "locs.csv", "--frames", "100:200"], 2),
    ("evaluate: negative tolerance", ["evaluate", "--truth", "sim/truth.csv", "--locs",
                                      "locs.csv", "--tolerance=-5"], 2),
    ("convert: wrong columns", ["convert", "wrong_columns.csv", "new.hdf5", "--pixel-size",
                                "100"], 2),
    ("convert: output is the input", ["convert", "locs.csv", "locs.csv"], 2),
    ("convert: unknown extension", ["convert", "locs.csv", "new.xlsx"], 2),
    ("drift: bins infeasible", ["drift", "locs.csv", "--bins", "500", "--out", "new.csv"], 2),
    ("drift: output is the input", ["drift", "locs.csv", "--out", "locs.csv"], 2),
    ("drift: empty table", ["drift", "header_only.csv", "--out", "new.csv"], 2),
    ("link: wrong columns", ["link", "wrong_columns.csv", "--out", "new.csv"], 2),
    ("filter: bad expression", ["filter", "locs.csv", "--expr", "nonsense_column > 3",
                                "--out", "new.csv"], 2),
    ("render: zero pixel", ["render", "locs.csv", "--pixel-nm", "0", "--out", "new.tif"], 2),
    ("render: output is a folder", ["render", "locs.csv", "--out", "old_loc"], 2),
    ("frc: blocks infeasible", ["frc", "locs.csv", "--split", "blocks", "--block-frames",
                                "500", "--out", "new"], 2),
    ("postprocess: unknown step", ["postprocess", "locs.csv", "--steps", "drift,nope",
                                   "--out", "new"], 2),
    ("postprocess: config not YAML", ["postprocess", "locs.csv", "--config", "bad.yaml",
                                      "--out", "new"], 2),
    ("postprocess: into another command's output folder",
     ["postprocess", "old_loc/localizations.csv", "--steps", "drift", "--out", "old_loc",
      "--quiet"], 2),
    ("frc: into another command's output folder", ["frc", "locs.csv", "--out", "old_run"], 2),
    ("filter: over a file of a complete output", ["filter", "locs.csv", "--expr", "photons > 0",
                                                  "--out", "old_loc/localizations.csv"], 2),
    ("localize: into a run's output folder", [*LOC, "--out", "old_run"], 2),
]


def _to_stderr(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _check_one_line(err: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert "error" in lines[0], err


@pytest.mark.parametrize("argv,code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_input_is_refused_and_changes_nothing(world, argv, code, capsys, monkeypatch):
    from stormfold.cli import main

    monkeypatch.chdir(world)
    before = _snapshot(world)
    # Warnings reach stderr as on the command line (pytest would otherwise record them).
    monkeypatch.setattr(warnings, "showwarning", _to_stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        try:
            result = main(list(argv))
        except SystemExit as exc:  # argparse
            result = exc.code
    out, err = capsys.readouterr()
    assert result == code, err
    _check_one_line(err)
    after = _snapshot(world)
    assert after == before, sorted(set(after.items()) ^ set(before.items()))


def test_the_table_has_at_least_40_cases_over_every_command():
    assert len(CASES) >= 40
    commands = {argv[0] for _, argv, _ in CASES}
    assert commands >= {"localize", "run", "simulate", "calibrate", "sofi", "train", "demo",
                        "evaluate", "convert", "drift", "link", "filter", "render", "frc",
                        "postprocess"}


def _can_be_refused_writing(folder: Path) -> bool:
    """chmod takes effect (not so for root, or on some file systems)."""
    probe = folder / "probe"
    try:
        probe.write_text("x")
    except PermissionError:
        return True
    probe.unlink()
    return False


def test_unwritable_output_folder(world, tmp_path, capsys, monkeypatch):
    from stormfold.cli import main

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        if not _can_be_refused_writing(locked):
            pytest.skip("chmod does not stop this user from writing (root?)")
        monkeypatch.chdir(world)
        before = _snapshot(world)
        code = main([*LOC, "--out", str(locked / "out")])
        err = capsys.readouterr().err
        assert code == 2
        _check_one_line(err)
        assert str(locked / "out") in err and "permission denied" in err
        assert list(locked.iterdir()) == []
        assert _snapshot(world) == before
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("argv", [["localize", "nope.tif", "--engine", "classic", "--out", "new"],
                                  ["run", "run_badkey.yaml"]],
                         ids=["missing movie", "run: unknown config key"])
def test_hostile_input_through_the_installed_command(world, argv):
    """The same checks through a real process (the entry point, not main())."""
    before = _snapshot(world)
    proc = subprocess.run([sys.executable, "-m", "stormfold", *argv], cwd=world,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    _check_one_line(proc.stderr)
    assert _snapshot(world) == before


@pytest.mark.parametrize("given,expected", [
    ("100:200", "--frames 100:200 is empty for a 20-frame movie (frames 0 to 19)"),
    ("-5:3", "--frames -5:3: frames are counted from 0 (0-based), so they cannot be negative"),
    ("7:3", "--frames 7:3 is empty: B must be greater than A (B is exclusive)")])
def test_frame_range_errors_name_the_range_as_given(world, given, expected, run_cli,
                                                    monkeypatch):
    monkeypatch.chdir(world)
    code, out, err = run_cli(*LOC, f"--frames={given}", "--out", "new")
    assert code == 2 and err == f"stormfold localize: error: {expected}\n"


def test_refused_resume_changes_nothing(world, tmp_path, run_cli):
    """--resume of a run interrupted with another configuration: refused before any write
    (its log and state stay as they were)."""
    out = tmp_path / "interrupted"
    state = out / ".stormfold-run"
    state.mkdir(parents=True)
    (state / "state.json").write_text('{"fingerprint": "other", "chunks_done": 1, '
                                      '"csv_bytes": 0, "n_locs": 0, "engine_s": 0}')
    np.savez(state / "sums.1.npz", superres=np.zeros(1), widefield=np.zeros(1))
    (state / "run.log").write_text("the interrupted run's log\n")
    before = _snapshot(tmp_path)
    code, _, err = run_cli("run", world / "run_ok.yaml", "--resume", "--quiet",
                           "--set", f"output={out}")
    assert code == 2 and "configuration differs" in err
    _check_one_line(err)
    assert _snapshot(tmp_path) == before


def test_damaged_resume_state_says_to_start_again(world, tmp_path, run_cli):
    """A partial table cut mid-row can never be resumed: the message says to run without
    --resume (not to retry), and nothing is written."""
    from stormfold.pipeline.config import load_run_config
    from stormfold.pipeline.state import config_fingerprint

    out = tmp_path / "interrupted"
    config = load_run_config(world / "run_ok.yaml", overrides=[f"output={out}"])
    state = out / ".stormfold-run"
    state.mkdir(parents=True)
    (state / "localizations.partial.csv").write_text('"frame","x [nm]"\n1,2.5\n3,4')
    (state / "state.json").write_text(
        f'{{"fingerprint": "{config_fingerprint(config)}", "chunks_done": 1, '
        f'"csv_bytes": 25, "n_locs": 2, "engine_s": 0}}')
    np.savez(state / "sums.1.npz", superres=np.zeros(1), widefield=np.zeros(1))
    before = _snapshot(tmp_path)
    code, _, err = run_cli("run", world / "run_ok.yaml", "--resume", "--quiet",
                           "--set", f"output={out}")
    assert code == 2 and "is damaged" in err and "run without --resume" in err
    assert "--resume to continue" not in err
    _check_one_line(err)
    assert _snapshot(tmp_path) == before


def test_a_file_where_the_run_state_goes_is_refused(world, tmp_path, run_cli):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".stormfold-run").write_text("mine")
    before = _snapshot(tmp_path)
    code, _, err = run_cli("run", world / "run_ok.yaml", "--quiet", "--set", f"output={out}")
    assert code == 2 and "is not a folder" in err
    _check_one_line(err)
    assert _snapshot(tmp_path) == before
