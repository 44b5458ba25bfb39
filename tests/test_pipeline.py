"""The main job: stormfold run end to end, resume after a crash, Dask, bad configurations."""
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stormfold.config import from_dict
from stormfold.errors import UserError
from stormfold.io.manifest import STAGING_PREFIX, fingerprint, read_manifest, verify_manifest
from stormfold.io.thunderstorm import read_thunderstorm_csv
from stormfold.pipeline import RunConfig, load_run_config, run
from stormfold.pipeline.state import run_parameters, sums_path
from stormfold.simulate import build_config, simulate_to_folder


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sim")
    cfg = build_config("thunderstorm", n_frames=60, seed=3,
                       overrides=["activation.density_per_um2=0.3", "emitters.photons_min=1500",
                                  "emitters.photons_max=2500"])
    simulate_to_folder(cfg, folder, progress=False)
    return folder


def _config(sim, out, **extra) -> RunConfig:
    data = {"movie": str(sim / "movie.tif"), "output": str(out), "engine": {"engine": "classic"},
            "postprocess": {"steps": ["frc"]}, "evaluation": {"truth": str(sim / "truth.csv")},
            "chunk_frames": 16}
    data.update(extra)
    return load_run_config(overrides=data)


def test_run_writes_everything_and_the_report(sim, tmp_path):
    out = tmp_path / "out"
    result = run(_config(sim, out), quiet=True)
    for name in ("localizations.csv", "localizations.hdf5", "localizations_raw.csv", "superres.tif",
                 "widefield.tif", "run.yaml", "run.log", "report.html", "frc.png", "evaluation.csv"):
        assert (out / name).is_file(), name
    assert not (out / ".stormfold-run").exists()
    meta = yaml.safe_load((out / "run.yaml").read_text())
    assert meta["n_localizations"]["final"] == len(result.locs) > 0
    assert meta["camera_source"] == "movie metadata"
    row = result.evaluation.set_index("tolerance_nm").loc[100.0]
    assert row["jaccard"] > 0.88  # measured 0.895 (deterministic)
    html = (out / "report.html").read_text()
    for section in ("summary-0", "images-0", "histograms-0", "counts-0", "frc-0", "evaluation-0"):
        assert f'id="{section}"' in html, section
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) >= 4 and all(len(i) > 1000 for i in images)
    # Self-contained: every resource is embedded, nothing is fetched from anywhere.
    assert re.findall(r'\bsrc="([^"]*)"', html) and all(
        src.startswith("data:image/png;base64,") for src in re.findall(r'\bsrc="([^"]*)"', html))
    assert not re.search(r"https?://|<link\b|<script\b[^>]*\bsrc=|@import|url\(", html)
    from stormfold.io.picasso import read_picasso_hdf5

    h5, info = read_picasso_hdf5(out / "localizations.hdf5")
    np.testing.assert_allclose(h5["x_nm"], result.locs["x_nm"], atol=1e-3)


def test_resume_after_a_crash_gives_the_same_table(sim, tmp_path, monkeypatch):
    reference = run(_config(sim, tmp_path / "ref", report=False, postprocess={}), quiet=True)

    import stormfold.localize.runner as runner

    real = runner.localize_range
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash in chunk 3")
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "localize_range", crashing)
    out = tmp_path / "crashed"
    config = _config(sim, out, report=False, postprocess={})
    with pytest.raises(KeyboardInterrupt):
        run(config, quiet=True)
    assert (out / ".stormfold-run" / "state.json").is_file()
    partial = read_thunderstorm_csv(out / ".stormfold-run" / "localizations.partial.csv")
    assert partial["frame"].max() < 32  # two chunks of 16 frames were saved
    monkeypatch.setattr(runner, "localize_range", real)
    resumed = run(config, resume=True, quiet=True)
    pd.testing.assert_frame_equal(resumed.locs, reference.locs)
    np.testing.assert_allclose(resumed.superres, reference.superres)
    np.testing.assert_allclose(resumed.widefield, reference.widefield)
    # A resume with another configuration is refused.
    with pytest.raises(UserError, match="configuration differs"):
        (out / ".stormfold-run").mkdir()
        (out / ".stormfold-run" / "state.json").write_text(
            '{"fingerprint": "other", "chunks_done": 1, "csv_bytes": 0, "n_locs": 0, "engine_s": 0}')
        np.savez(sums_path(out / ".stormfold-run", 1), superres=np.zeros(1), widefield=np.zeros(1))
        run(config, resume=True, quiet=True)


def test_dask_cluster_gives_the_same_localizations(sim, tmp_path):
    from distributed import LocalCluster

    local = run(_config(sim, tmp_path / "local", report=False, postprocess={}), quiet=True)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        config = _config(sim, tmp_path / "dask", report=False, postprocess={},
                         scheduler=cluster.scheduler_address)
        distributed = run(config, quiet=True)
    pd.testing.assert_frame_equal(distributed.locs, local.locs)
    np.testing.assert_allclose(distributed.superres, local.superres)


@pytest.mark.parametrize("extra,message", [
    ({"nonsense": 1}, "unknown configuration key 'nonsense'"),
    ({"movie": "/nowhere/movie.tif"}, "movie: not found"),
    ({"pixel_size_nm": "abc"}, "pixel_size_nm"),
    ({"engine": {"model": "/nowhere/model"}}, "engine.model"),
    ({"engine": {"engine": "classic", "bogus": 2}}, "engine.bogus"),
    ({"postprocess": {"steps": ["warp"]}}, "warp"),
    ({"engine": {"model": "builtin:deepstorm-zerocost"}, "pixel_size_nm": 160.0},
     "differs from the model"),
    ({"engine": {"model": "builtin:deepstorm-zerocost", "engine": "classic"}},
     "not model and engine"),
    ({"engine": {"options": {"refine": "exact"}}}, "refine must be one of"),
])
def test_bad_configs_fail_before_any_work(sim, tmp_path, run_cli, extra, message):
    data = {"movie": str(sim / "movie.tif"), "output": str(tmp_path / "never"),
            "engine": {"engine": "classic"}}
    data.update(extra)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    code, _, err = run_cli("run", path, "--quiet")
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_an_engine_section_without_a_model_keeps_the_default_model():
    config = from_dict(RunConfig, {"movie": "m.tif", "engine": {"options": {"refine": "none"},
                                                                "batch_frames": 4}})
    assert config.engine.model == RunConfig().engine.model == "builtin:gridnet-generalist"
    assert config.engine.options == {"refine": "none"}
    assert from_dict(RunConfig, {"movie": "m.tif", "engine": {"engine": "classic"}}).engine.model \
        is None


def test_relative_paths_are_relative_to_the_config_file(sim, tmp_path):
    path = tmp_path / "cfg" / "run.yaml"
    path.parent.mkdir()
    path.write_text("movie: ../m.tif\noutput: out\nengine: {engine: classic}\n")
    config = load_run_config(path)
    assert config.movie == str(tmp_path / "m.tif")
    assert config.output == str(path.parent / "out")


def test_resume_after_sigkill_gives_the_same_table(tmp_path):
    """A real `stormfold run` process killed (SIGKILL) mid-run, then resumed from the CLI."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    sim = tmp_path / "sim"
    cfg = build_config("thunderstorm", n_frames=1200, seed=5,
                       overrides=["n_rows=24", "n_cols=24", "activation.density_per_um2=1.0"])
    simulate_to_folder(cfg, sim, progress=False)
    settings = {"movie": str(sim / "movie.tif"), "engine": {"engine": "classic", "batch_frames": 8},
                "postprocess": {}, "report": False, "chunk_frames": 8}
    reference = run(load_run_config(overrides={**settings, "output": str(tmp_path / "ref")}),
                    quiet=True)
    out = tmp_path / "killed"
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump({**settings, "output": str(out)}))
    command = [sys.executable, "-m", "stormfold", "run", str(config_file), "--quiet"]
    state = out / ".stormfold-run" / "state.json"
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(state.read_text())["chunks_done"] >= 20:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done = json.loads(state.read_text())["chunks_done"]
    print(f"killed after {done} of {1200 // 8} chunks")
    assert 20 <= done < 1200 // 8
    assert not (out / "localizations.csv").exists()
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    table = read_thunderstorm_csv(out / "localizations_raw.csv")
    expected = read_thunderstorm_csv(tmp_path / "ref" / "localizations_raw.csv")
    assert len(expected) == len(reference.locs) > 500
    pd.testing.assert_frame_equal(table, expected)


def test_drift_is_corrected_and_evaluated_in_the_corrected_frame(tmp_path):
    sim = tmp_path / "sim"
    cfg = build_config("thunderstorm", n_frames=160, seed=8, overrides={
        "structure": {"kind": "filaments", "n_filaments": 6},
        "activation": {"density_per_um2": 0.5},
        "emitters": {"photons_min": 1500, "photons_max": 2500},
        "drift": {"velocity_nm_per_frame": [1.0, -0.6], "random_walk_nm": 0.5}})
    simulate_to_folder(cfg, sim, progress=False)
    out = tmp_path / "out"
    result = run(_config(sim, out, chunk_frames=32, postprocess={"steps": ["drift"]},
                         evaluation={"truth": str(sim / "truth.csv"),
                                     "truth_drift": str(sim / "drift.csv")}), quiet=True)
    residual = float(re.search(r"residual ([\d.]+) nm", result.meta["postprocess"]["drift vs truth"])[1])
    assert residual < 5.3  # measured 3.5 nm
    # In the corrected frame the drift costs nothing: the Jaccard equals that of the raw
    # localizations against the drifting truth, while the corrected table against the drifting
    # truth misses by up to the 160 × 96 nm the stage moved.
    from stormfold.evaluate import evaluate

    truth = read_thunderstorm_csv(sim / "truth.csv")
    corrected = result.evaluation.set_index("tolerance_nm")["jaccard"]
    raw = evaluate(truth, result.raw_locs, tolerances_nm=[50.0, 100.0]).set_index("tolerance_nm")["jaccard"]
    naive = evaluate(truth, result.locs, tolerances_nm=[50.0]).set_index("tolerance_nm")["jaccard"]
    # Measured: differences 0.0004 and 0.0020; 0.567 corrected against 0.101 naive.
    assert abs(corrected[50.0] - raw[50.0]) < 0.003 and abs(corrected[100.0] - raw[100.0]) < 0.003
    assert corrected[50.0] > 0.55 and corrected[50.0] > naive[50.0] + 0.4
    html = (out / "report.html").read_text()
    assert 'id="drift-0"' in html and "drift vs truth" in html
    assert (out / "drift.csv").is_file()


def test_truth_drift_needs_the_drift_step(sim, tmp_path):
    config = _config(sim, tmp_path / "never", evaluation={"truth": str(sim / "truth.csv"),
                                                          "truth_drift": str(sim / "truth.csv")})
    with pytest.raises(UserError, match="needs the drift step"):
        run(config, quiet=True)
    assert not (tmp_path / "never").exists()


def test_demo_runs_every_shipped_engine_into_one_report(tmp_path, run_cli):
    code, out, err = run_cli("demo", "--out", tmp_path / "demo", "--frames", "12")
    assert code == 0, err
    # The console names the final folders, not the staging folder the runs were made in.
    assert "report:" in out + err and STAGING_PREFIX not in out + err
    html = (tmp_path / "demo" / "report.html").read_text()
    assert "Comparison" in html and "Deep-STORM" in html and "unrolled" in html
    assert "gridnet (generalist)" in html
    for section in ("summary-0", "images-0", "drift-0", "evaluation-0", "summary-1", "evaluation-1",
                    "summary-2", "evaluation-2"):
        assert f'id="{section}"' in html, section
    assert "report.html" in out
    assert STAGING_PREFIX not in html
    for name in ("deepstorm-zerocost", "unrolled-isbi2013", "gridnet-generalist"):
        folder = tmp_path / "demo" / name
        # each run is a complete set whose records name the final folder, not the staging one
        assert verify_manifest(folder) == []
        for record in ("run.yaml", "run.log", "report.html"):
            assert STAGING_PREFIX not in (folder / record).read_text(), (name, record)
        recorded = yaml.safe_load((folder / "run.yaml").read_text())["config"]
        assert Path(recorded["movie"]).is_file() and Path(recorded["output"]) == folder
        config = from_dict(RunConfig, recorded)
        assert read_manifest(folder)["fingerprint"] == fingerprint(run_parameters(config))


def test_truth_in_corrected_frame_known_answer():
    from stormfold.pipeline import truth_in_corrected_frame

    frames = np.arange(5)
    d = pd.DataFrame({"frame": frames, "dx_nm": 3.0 * frames, "dy_nm": -2.0 * frames + 7.0})
    p = np.array([100.0, 250.0, 400.0, 550.0, 700.0])
    truth = pd.DataFrame({"frame": frames, "x_nm": p + d["dx_nm"], "y_nm": 2 * p + d["dy_nm"]})
    estimate = d.assign(dx_nm=d["dx_nm"] - 5.0, dy_nm=d["dy_nm"] + 4.0)  # d − c, c = (5, −4)
    moved, true_in_frame, residual = truth_in_corrected_frame(truth, d, estimate)
    np.testing.assert_allclose(moved["x_nm"], p + 5.0)
    np.testing.assert_allclose(moved["y_nm"], 2 * p - 4.0)
    pd.testing.assert_frame_equal(true_in_frame, estimate)
    assert residual == pytest.approx(0.0, abs=1e-12)


def test_run_trains_a_model_from_the_movies_simulation(sim, tmp_path):
    """engine.train: a (tiny) Deep-STORM trained on data mimicking the movie's simulation.yaml,
    saved in output/model/ and reused by a second run."""
    tiny = ["architecture.channels=[4, 4, 8, 8]", "schedule.precision=float32",
            "simulation.n_frames=4", "simulation.n_rows=32", "simulation.n_cols=32",
            "calibration.n_frames=2", "calibration.thresholds=[0.01, 0.1]",
            "schedule.epochs=1", "patches.n_patches=24", "patches.min_emitters=1",
            "schedule.batch_size=8"]
    out = tmp_path / "trained"
    train = {"engine": "deepstorm", "config": str(sim / "simulation.yaml"), "overrides": tiny}
    config = _config(sim, out, engine={"train": train, "batch_frames": 30}, frames=[0, 30],
                     report=False, postprocess={})
    result = run(config, quiet=True)
    model = yaml.safe_load((out / "model" / "model.yaml").read_text())
    assert model["engine"] == "deepstorm"
    # The training data mimic the movie: its camera and pixel size went into the model.
    sim_meta = yaml.safe_load((sim / "simulation.yaml").read_text())
    assert model["camera"]["baseline_adu"] == sim_meta["camera"]["baseline_adu"]
    assert model["pixel_size_nm"] == sim_meta["pixel_size_nm"]
    assert result.meta["engine"]["engine"] == "deepstorm" and (out / "localizations.csv").is_file()
    weights = (out / "model" / "weights.safetensors").stat().st_mtime_ns
    run(config, quiet=True)
    assert (out / "model" / "weights.safetensors").stat().st_mtime_ns == weights  # reused
    assert "using the model trained earlier" in (out / "run.log").read_text()


def test_resume_fingerprint_follows_the_files_not_only_their_names(tmp_path):
    """--resume must not continue a run whose movie, camera file or model changed under the
    same names (it would join two runs' localizations in one table)."""
    import os

    from stormfold.pipeline.config import load_run_config
    from stormfold.pipeline.state import config_fingerprint

    movie, camera = tmp_path / "movie.tif", tmp_path / "cam.yaml"
    movie.write_bytes(b"x" * 100)
    camera.write_text("baseline_adu: 0\ne_per_adu: 1\n")
    config = load_run_config(overrides={"movie": str(movie), "camera": {"file": str(camera)},
                                        "engine": {"engine": "classic", "model": None}})
    first = config_fingerprint(config)
    assert config_fingerprint(config) == first
    stat = camera.stat()
    camera.write_text("baseline_adu: 90\ne_per_adu: 3\n")
    os.utime(camera, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert config_fingerprint(config) != first
    second = config_fingerprint(config)
    movie.write_bytes(b"y" * 50)
    assert config_fingerprint(config) != second
