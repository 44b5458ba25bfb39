"""A first hour with stormfold: the outputs of ``run`` and ``demo`` go through every standalone
command, the evaluation keeps to the frames that were localized, an assumed camera is said
out loud, and the README's Quick start gives the figure README states."""
import json
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from stormfold.io.picasso import read_picasso_hdf5
from stormfold.io.thunderstorm import read_thunderstorm_csv
from stormfold.simulate import build_config, simulate_to_folder

ROOT = Path(__file__).resolve().parents[1]
FILAMENTS = {"structure": {"kind": "filaments", "n_filaments": 6, "label_spread_nm": 15.0},
             "activation": {"density_per_um2": 0.5},
             "emitters": {"photons_mean": 1500.0, "photons_std": 300.0},
             "background": {"photons": 20.0},
             "drift": {"velocity_nm_per_frame": [0.6, -0.4], "random_walk_nm": 0.3},
             "camera": {"baseline_adu": 100.0, "e_per_adu": 0.5}}


@pytest.fixture(scope="module")
def filaments(tmp_path_factory):
    """A drifting filament movie, enough for RCC to correct its drift (about 120 × 80 nm):
    200 frames, about 20 emitters per frame."""
    folder = tmp_path_factory.mktemp("filaments")
    simulate_to_folder(build_config("zerocost", n_frames=200, seed=5, overrides=FILAMENTS),
                       folder, progress=False)
    return folder


def _cli(*argv):
    from stormfold.cli import main

    return main([str(a) for a in argv])


def _cli_warnings(*argv) -> tuple[int, list[str]]:
    """Exit code and the warnings (messages) of a command."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = _cli(*argv)
    return code, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


@pytest.fixture(scope="module")
def outputs(filaments, tmp_path_factory):
    """The output folders of ``stormfold run`` (classic engine, drift + FRC) and of
    ``stormfold demo`` (its Deep-STORM run), made through the command line."""
    folder = tmp_path_factory.mktemp("outputs")
    config = folder / "run.yaml"
    config.write_text(yaml.safe_dump({
        "movie": str(filaments / "movie.tif"), "output": str(folder / "run"),
        "engine": {"engine": "classic"}, "postprocess": {"steps": ["drift", "frc"]},
        "evaluation": {"truth": str(filaments / "truth.csv"),
                       "truth_drift": str(filaments / "drift.csv")}}))
    assert _cli("run", config, "--quiet") == 0
    assert _cli("demo", "--out", folder / "demo", "--frames", 16, "--quiet") == 0
    return {"run": (folder / "run", filaments / "truth.csv"),
            "demo": (folder / "demo" / "deepstorm-zerocost",
                     folder / "demo" / "simulation" / "truth.csv")}


SOURCES = ("run", "demo")


@pytest.mark.parametrize("source", SOURCES)
def test_render_and_its_pixel_size_override(outputs, source, tmp_path):
    folder, _ = outputs[source]
    locs = read_thunderstorm_csv(folder / "localizations.csv")
    assert _cli("render", folder / "localizations.csv", "--out", tmp_path / "r.tif") == 0
    image = tifffile.imread(tmp_path / "r.tif")
    # The field of view comes from run.yaml (64 × 64 pixels of 100 nm at 10 nm), and every
    # localization in it (drift correction moves a few out) is one count of the histogram.
    inside = locs["x_nm"].between(0, 6400, inclusive="left") & \
        locs["y_nm"].between(0, 6400, inclusive="left")
    assert image.shape == (640, 640) and image.sum() == int(inside.sum()) > 0.99 * len(locs)
    assert _cli("render", folder / "localizations.csv", "--out", tmp_path / "r2.png",
                "--pixel-size", 100) == 0
    assert (tmp_path / "r2.png").stat().st_size > 1000
    record = yaml.safe_load((tmp_path / "r2.yaml").read_text())
    assert record["camera_pixel_size_nm"] == 100.0


@pytest.mark.parametrize("source", SOURCES)
def test_filter_link_cluster(outputs, source, tmp_path):
    folder, _ = outputs[source]
    locs = read_thunderstorm_csv(folder / "localizations.csv")
    assert _cli("filter", folder / "localizations.csv", "--out", tmp_path / "f.csv",
                "--roi", "0,0,3200,6400") == 0
    kept = read_thunderstorm_csv(tmp_path / "f.csv")
    assert 0 < len(kept) < len(locs) and kept["x_nm"].max() < 3200
    assert _cli("link", folder / "localizations.csv", "--out", tmp_path / "l.csv") == 0
    linked = read_thunderstorm_csv(tmp_path / "l.csv")
    assert 0 < len(linked) <= len(locs) and linked["detections"].sum() == len(locs)
    assert _cli("cluster", folder / "localizations.csv", "--out", tmp_path / "c.csv",
                "--eps-nm", 60, "--min-samples", 5) == 0
    clusters = pd.read_csv(tmp_path / "c_clusters.csv")
    assert len(clusters) >= 1 and clusters["first_frame"].min() >= 1  # 1-based


@pytest.mark.parametrize("source", SOURCES)
def test_drift_frc_postprocess(outputs, source, tmp_path):
    folder, _ = outputs[source]
    n_frames = yaml.safe_load((folder / "run.yaml").read_text())["movie"]["n_frames"]
    bins = 10 if source == "run" else 4
    assert _cli("drift", folder / "localizations_raw.csv", "--out", tmp_path / "d.csv",
                "--bins", bins) == 0
    drift = pd.read_csv(tmp_path / "d_drift.csv")
    # One row per frame of the movie (the length comes from run.yaml), numbered from 1.
    assert drift["frame"].tolist() == list(range(1, n_frames + 1))
    assert _cli("frc", folder / "localizations.csv", "--out", tmp_path / "frc") == 0
    resolution = yaml.safe_load((tmp_path / "frc" / "frc.yaml").read_text())["results"][
        "resolution_nm"]
    assert resolution is not None and 20 < resolution < 400
    assert _cli("postprocess", folder / "localizations_raw.csv", "--out", tmp_path / "pp",
                "--steps", "link,render") == 0
    assert (tmp_path / "pp" / "render.tif").is_file() and (tmp_path / "pp" / "postprocessed.csv").is_file()


@pytest.mark.parametrize("source", SOURCES)
def test_convert_and_evaluate(outputs, source, tmp_path):
    folder, truth = outputs[source]
    assert _cli("convert", folder / "localizations.csv", tmp_path / "l.hdf5") == 0
    table, info = read_picasso_hdf5(tmp_path / "l.hdf5")
    # The camera's 64 × 64 px, grown where drift-corrected positions reach past it (else
    # Picasso would drop them on loading).
    assert info["pixel_size_nm"] == 100.0 and 64 <= info["width_px"] <= 66 \
        and 64 <= info["height_px"] <= 66
    assert len(table) == len(read_thunderstorm_csv(folder / "localizations.csv"))
    assert _cli("evaluate", "--truth", truth, "--locs", folder / "localizations_raw.csv",
                "--json", tmp_path / "e.json") == 0
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["parameters"]["frames_source"].endswith("run.yaml")
    jaccard = {row["tolerance_nm"]: row["jaccard"] for row in report["metrics"]}
    # The raw table against the drifting truth: both engines find most emitters.
    assert jaccard[250.0] > 0.75


def test_the_report_shows_the_post_processed_table(outputs):
    folder, _ = outputs["run"]
    html = (folder / "report.html").read_text()
    meta = yaml.safe_load((folder / "run.yaml").read_text())
    assert f"Right: the {meta['n_localizations']['final']} localizations after post-processing " \
           f"(drift, frc)" in html
    assert 'id="drift-figures-0"' in html
    assert meta["postprocess_results"]["drift"]["results"]["pairs"] > 0


def test_the_drift_reliability_check_is_in_run_yaml_and_the_report(outputs):
    folder, _ = outputs["run"]
    meta = yaml.safe_load((folder / "run.yaml").read_text())
    reliability = meta["postprocess_results"]["drift"]["results"]["reliability"]
    assert reliability["verdict"] == "applied" and reliability["locs_per_bin_min"] > 150
    assert meta["postprocess"]["drift"].startswith("drift (rcc): corrected (RMS")
    html = (folder / "report.html").read_text()
    figures = html.split('id="drift-figures-0">', 1)[1].split("</table>", 1)[0]
    assert figures.startswith("Reliability check: applied.")
    for name in ("locs_per_bin_min", "peak_z_median", "pairs_rejected", "precision_nm"):
        assert f"<td>{name}</td>" in figures, name


def test_an_unsupported_drift_estimate_is_a_warning_of_the_run(sparse, tmp_path):
    from stormfold.pipeline import load_run_config, run

    folder, _ = sparse
    config = load_run_config(overrides={
        "movie": str(folder / "movie.tif"), "output": str(tmp_path / "run"),
        "engine": {"engine": "classic"},
        "postprocess": {"steps": ["drift"], "drift": {"on_unsupported": "warn"}}})
    with pytest.warns(UserWarning, match="post-processing: drift"):
        run(config, quiet=True)
    meta = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    reliability = meta["postprocess_results"]["drift"]["results"]["reliability"]
    assert reliability["verdict"] == "unsupported" and reliability["problems"]
    assert any(w.startswith("post-processing: drift (RCC)") for w in meta["warnings"])
    html = (tmp_path / "run" / "report.html").read_text()
    assert 'class="warnings"' in html and "Reliability check: unsupported, nothing applied" in html
    drift = pd.read_csv(tmp_path / "run" / "drift.csv")
    assert (drift[["dx_nm", "dy_nm"]] == 0).all().all()  # what was subtracted: nothing


def test_the_report_image_is_the_drift_corrected_table(filaments, tmp_path):
    from stormfold.pipeline import load_run_config, run
    from stormfold.postprocess.render import render

    config = load_run_config(overrides={
        "movie": str(filaments / "movie.tif"), "output": str(tmp_path / "run"),
        "engine": {"engine": "classic"}, "postprocess": {"steps": ["drift"]}, "report": False})
    result = run(config, quiet=True)
    fine = 100.0 / result.upsampling
    assert result.image_upsampling == result.upsampling == 8
    np.testing.assert_array_equal(result.image, render(result.locs, fine, "gaussian", fine,
                                                       (6400.0, 6400.0)))
    raw = render(result.raw_locs, fine, "gaussian", fine, (6400.0, 6400.0))
    # The drift (about 120 × 80 nm over the movie) was corrected: the image is not the raw
    # table's.
    assert result.meta["postprocess_results"]["drift"]["results"]["applied"]
    assert np.abs(result.image - raw).sum() > 0.5 * np.abs(raw).sum()
    # With a render step whose pixel divides the camera pixel, the report shows its image.
    config = load_run_config(overrides={
        "movie": str(filaments / "movie.tif"), "output": str(tmp_path / "run2"),
        "engine": {"engine": "classic"}, "report": False,
        "postprocess": {"steps": ["drift", "render"], "render": {"pixel_nm": 20.0}}})
    result = run(config, quiet=True)
    assert result.image_upsampling == 5 and result.image.shape == (320, 320)
    assert result.image.sum() == pytest.approx(len(result.locs), abs=0.01 * len(result.locs))


# --------------------------------------------------------------------------- frame ranges
@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sparse")
    simulate_to_folder(build_config("zerocost", n_frames=20, seed=2,
                                    overrides=["activation.density_per_um2=0.5"]),
                       folder, progress=False)
    out = folder / "half"
    assert _cli("localize", folder / "movie.tif", "--engine", "classic", "--frames", "0:10",
                "--out", out, "--quiet") == 0
    return folder, out


def _jaccard_100(stdout: str) -> float:
    return float(re.search(r"^jaccard\s+\S+\s+(\S+)", stdout, re.M)[1])


def test_evaluate_keeps_to_the_frames_localized(sparse, capsys):
    folder, out = sparse
    capsys.readouterr()
    code, said = _cli_warnings("evaluate", "--truth", folder / "truth.csv", "--locs",
                               out / "localizations.csv")
    default = capsys.readouterr()
    assert code == 0 and "frames 0:10" in default.out
    assert len(said) == 1 and said[0].startswith("the truth spans frames 0:20")
    code, said = _cli_warnings("evaluate", "--truth", folder / "truth.csv", "--locs",
                               out / "localizations.csv", "--frames", "0:10")
    given = capsys.readouterr()
    assert code == 0 and said == []
    assert _jaccard_100(given.out) == _jaccard_100(default.out) > 0.8
    assert _cli("evaluate", "--truth", folder / "truth.csv", "--locs", out / "localizations.csv",
                "--frames", "0:20") == 0
    everything = capsys.readouterr().out
    # Half of the truth was never localized: it would count as missed.
    assert _jaccard_100(everything) < 0.6 * _jaccard_100(default.out)
    n_truth = int(re.search(r"^n_truth\s+(\d+)", default.out, re.M)[1])
    truth = read_thunderstorm_csv(folder / "truth.csv")
    assert n_truth == int((truth["frame"] < 10).sum())


def test_evaluate_without_a_record_scores_everything(sparse, tmp_path, capsys):
    folder, out = sparse
    shutil.copy(out / "localizations.csv", tmp_path / "l.csv")
    capsys.readouterr()
    code, said = _cli_warnings("evaluate", "--truth", folder / "truth.csv", "--locs",
                               tmp_path / "l.csv")
    # Everything is scored, but the truth's frames past the localizations' are named
    # (review 18, D1: they count as missed).
    assert code == 0 and len(said) == 1
    assert "the truth spans frames 0:20 but the localizations only 0:10" in said[0]
    assert "give --frames 0:10" in said[0]
    assert capsys.readouterr().out.startswith("metric")
    assert _cli("evaluate", "--truth", folder / "truth.csv", "--locs", tmp_path / "l.csv",
                "--frames", "5:3") == 2


def test_run_with_frames_evaluates_those_frames(sparse, tmp_path):
    from stormfold.pipeline import load_run_config, run

    folder, _ = sparse
    config = load_run_config(overrides={
        "movie": str(folder / "movie.tif"), "output": str(tmp_path / "run"),
        "frames": [0, 10], "engine": {"engine": "classic"},
        "evaluation": {"truth": str(folder / "truth.csv")}, "report": True})
    with pytest.warns(UserWarning, match=r"truth spans frames 0:20 but the run localized 0:10"):
        result = run(config, quiet=True)
    row = result.evaluation.set_index("tolerance_nm").loc[100.0]
    truth = read_thunderstorm_csv(folder / "truth.csv")
    assert row["n_truth"] == int((truth["frame"] < 10).sum()) and row["jaccard"] > 0.8
    meta = yaml.safe_load((tmp_path / "run" / "run.yaml").read_text())
    assert meta["evaluation_frames"] == [0, 10] and "truth spans" in meta["warnings"][0]
    assert "truth spans frames 0:20" in (tmp_path / "run" / "report.html").read_text()


# --------------------------------------------------------------------------- a loud camera
@pytest.fixture(scope="module")
def plain_tiff(sparse, tmp_path_factory):
    """The sparse movie without its metadata: what a camera writes (100 ADU offset)."""
    folder, _ = sparse
    path = tmp_path_factory.mktemp("plain") / "plain.tif"
    tifffile.imwrite(path, tifffile.imread(folder / "movie.tif"))
    return path


def test_a_default_camera_is_said_and_recorded(plain_tiff, tmp_path):
    code, said = _cli_warnings("localize", plain_tiff, "--engine", "classic", "--pixel-size",
                               100, "--out", tmp_path / "a", "--quiet")
    assert code == 0 and len(said) == 1
    assert said[0].startswith("camera baseline_adu and e_per_adu not given: using an ideal "
                              "camera (baseline 0 ADU, e_per_adu 1")
    record = yaml.safe_load((tmp_path / "a" / "run.yaml").read_text())
    assert record["camera_assumed"] == ["baseline_adu", "e_per_adu"]
    assert record["camera_warning"] == said[0]
    # On the command line it is one line.
    done = subprocess.run([sys.executable, "-m", "stormfold", "localize", str(plain_tiff),
                           "--engine", "classic", "--pixel-size", "100", "--out",
                           str(tmp_path / "a2"), "--quiet"], capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stderr == f"stormfold localize: warning: {said[0]}\n"


def test_a_given_camera_gives_no_warning(plain_tiff, tmp_path):
    code, said = _cli_warnings("localize", plain_tiff, "--engine", "classic", "--pixel-size",
                               100, "--baseline", 50, "--e-per-adu", 1, "--out", tmp_path / "b",
                               "--quiet")
    assert code == 0 and said == []
    record = yaml.safe_load((tmp_path / "b" / "run.yaml").read_text())
    assert record["camera_assumed"] == [] and record["camera_warning"] is None
    camera = tmp_path / "camera.yaml"
    camera.write_text("baseline_adu: 50\ne_per_adu: 1.0\n")
    code, said = _cli_warnings("localize", plain_tiff, "--engine", "classic", "--pixel-size",
                               100, "--camera", camera, "--out", tmp_path / "c", "--quiet")
    assert code == 0 and said == []
    # A camera file that leaves out the gain leaves it assumed.
    camera.write_text("baseline_adu: 50\n")
    code, said = _cli_warnings("localize", plain_tiff, "--engine", "classic", "--pixel-size",
                               100, "--camera", camera, "--out", tmp_path / "d", "--quiet")
    assert code == 0 and len(said) == 1 and said[0].startswith("camera e_per_adu not given")


def test_the_model_camera_is_said(plain_tiff):
    from stormfold.io.movie import open_movie
    from stormfold.localize.camera import CameraOverrides, choose_camera
    from stormfold.physics.camera import Camera

    class Model:
        def training_camera(self):
            return Camera(baseline_adu=50.0)

    with open_movie(plain_tiff, pixel_size_nm=100) as movie:
        choice = choose_camera(None, movie, Model())
        assert choice.source == "model training simulation"
        assert "the model's training camera (baseline 50 ADU" in choice.warning
        given = choose_camera(CameraOverrides(baseline_adu=100.0, e_per_adu=0.5), movie, Model())
        assert given.warning is None and given.camera.baseline_adu == 100.0


def test_run_report_says_the_camera_was_assumed(plain_tiff, tmp_path):
    from stormfold.pipeline import load_run_config, run

    def config(out, camera):
        return load_run_config(overrides={
            "movie": str(plain_tiff), "pixel_size_nm": 100, "output": str(tmp_path / out),
            "engine": {"engine": "classic"}, "camera": camera})

    with pytest.warns(UserWarning, match="camera baseline_adu and e_per_adu not given"):
        run(config("assumed", {}), quiet=True)
    meta = yaml.safe_load((tmp_path / "assumed" / "run.yaml").read_text())
    assert meta["camera_assumed"] == ["baseline_adu", "e_per_adu"]
    html = (tmp_path / "assumed" / "report.html").read_text()
    assert 'class="warnings"' in html and "ASSUMED, not from your data" in html
    run(config("given", {"baseline_adu": 100, "e_per_adu": 0.5}), quiet=True)
    meta = yaml.safe_load((tmp_path / "given" / "run.yaml").read_text())
    assert meta["camera_assumed"] == [] and meta["warnings"] == []
    assert 'class="warnings"' not in (tmp_path / "given" / "report.html").read_text()


# --------------------------------------------------------------------------- Quick start
def _quick_start() -> tuple[list[str], float]:
    """The commands of README's Quick start code block, and the Jaccard it states."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S)[1]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    figure = re.search(r"Jaccard\s+(?:index\s+)?at\s+100\s+nm\s+(?:is\s+)?\**([01]\.\d+)",
                       section)
    return [c for c in commands if c], float(figure[1])


def test_quick_start_as_written_in_the_readme(tmp_path, monkeypatch):
    commands, stated = _quick_start()
    assert [c.split()[:2] for c in commands] == [["stormfold", "simulate"], ["stormfold", "run"]]
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for command in commands:
        assert _cli(*shlex.split(command)[1:]) == 0
    meta = yaml.safe_load((tmp_path / "quickstart" / "run" / "run.yaml").read_text())
    jaccard = {row["tolerance_nm"]: row["jaccard"] for row in meta["evaluation"]}
    assert abs(jaccard[100.0] - stated) <= 0.02
    # A meaningful result: drift was there and was corrected, and the report shows it.
    residual = float(re.search(r"residual ([\d.]+) nm", meta["postprocess"]["drift vs truth"])[1])
    drift = pd.read_csv(tmp_path / "quickstart" / "drift.csv")
    assert np.hypot(drift["dx_nm"], drift["dy_nm"]).max() > 50 and residual < 10
    assert meta["camera_assumed"] == [] and meta["warnings"] == []


class _Viewer:
    """What the README's napari recipe calls, recorded (napari itself is not a dependency)."""

    layers: list = []

    def add_image(self, data, **kwargs):
        self.layers.append(("image", np.asarray(data), kwargs))

    def add_points(self, data, **kwargs):
        self.layers.append(("points", np.asarray(data), kwargs))


def test_the_napari_recipe_of_the_readme_reads_the_quick_start_outputs(tmp_path, monkeypatch):
    import types

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    recipe = re.search(r"\*\*napari\.\*\*.*?```python\n(.*?)```", readme, re.S)[1]
    commands, _ = _quick_start()
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    # A shorter movie than the Quick start's (still 300 localizations per drift bin): only
    # the files matter here.
    assert _cli(*shlex.split(commands[0])[1:], "--frames", 400) == 0
    assert _cli(*shlex.split(commands[1])[1:], "--quiet") == 0
    _Viewer.layers = []
    napari = types.SimpleNamespace(Viewer=_Viewer, run=lambda: None)
    monkeypatch.setitem(sys.modules, "napari", napari)
    exec(compile(recipe, "README napari recipe", "exec"), {})
    (kind_i, image, image_kw), (kind_p, points, points_kw) = _Viewer.layers
    locs = read_thunderstorm_csv(tmp_path / "quickstart" / "run" / "localizations.csv")
    assert kind_i == "image" and image.shape == (512, 512)
    assert kind_p == "points" and points.shape == (len(locs), 2)
    np.testing.assert_allclose(points, locs[["y_nm", "x_nm"]].to_numpy(), atol=1e-3)
    # The image's scale is the rendering's pixel size (its TIFF tags, run.yaml).
    render = yaml.safe_load((tmp_path / "quickstart" / "run" / "run.yaml").read_text())[
        "config"]["postprocess"]["render"]
    assert image_kw["scale"] == (render["pixel_nm"],) * 2
    assert image_kw["translate"] == (render["pixel_nm"] / 2,) * 2
