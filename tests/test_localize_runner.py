"""The streaming runner with a minimal engine: batching, camera conversion, outputs, errors."""
import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml

from stormfold.errors import UserError
from stormfold.io.thunderstorm import read_thunderstorm_csv
from stormfold.localize import CameraOverrides, Engine, EngineOutput, localize_movie, resolve_camera
from stormfold.physics.camera import Camera
from stormfold.simulate import build_config, simulate_to_folder
from stormfold.table import make_table


class BrightestPixel(Engine):
    """One localization per frame at the centre of its brightest pixel (records photons)."""

    name = "brightest"
    upsampling = 2

    def __init__(self, trained_px=None):
        self.calls = []
        self.trained_px = trained_px

    def process(self, photons, first_frame, pixel_size_nm):
        self.calls.append((first_frame, len(photons)))
        flat = photons.reshape(len(photons), -1)
        idx = flat.argmax(1)
        r, c = np.divmod(idx, photons.shape[2])
        return EngineOutput(make_table(first_frame + np.arange(len(photons)), (c + 0.5) * pixel_size_nm,
                                       (r + 0.5) * pixel_size_nm, photons=flat.max(1)))

    def training_pixel_size_nm(self):
        return self.trained_px


@pytest.fixture()
def movie(tmp_path):
    cfg = build_config("zerocost", n_frames=10, seed=1, overrides=["activation.density_per_um2=0.05"])
    simulate_to_folder(cfg, tmp_path / "sim", progress=False)
    return tmp_path / "sim" / "movie.tif"


def test_runner_streams_batches_and_writes_outputs(movie, tmp_path):
    engine = BrightestPixel()
    out = tmp_path / "out"
    res = localize_movie(movie, engine, out, batch_frames=4, progress=False, keep_table=True)
    assert engine.calls == [(0, 4), (4, 4), (8, 2)]
    locs = read_thunderstorm_csv(out / "localizations.csv")
    assert list(locs["frame"]) == list(range(10))
    pd.testing.assert_frame_equal(locs.drop(columns="id"), res.locs, check_dtype=False)
    raw = tifffile.imread(movie).astype(np.float64)
    # The camera came from the movie's metadata (zerocost: baseline 50, 1 e-/ADU).
    np.testing.assert_allclose(locs["photons"], raw.reshape(10, -1).max(1) - 50.0, rtol=1e-6)
    wf = tifffile.imread(out / "widefield.tif")
    np.testing.assert_allclose(wf, raw.sum(0), rtol=1e-6)
    with tifffile.TiffFile(out / "superres.tif") as tif:
        sr = tif.asarray()
        xres = tif.pages[0].tags["XResolution"].value
    assert sr.shape == (128, 128) and sr.sum() == 10
    assert xres[0] / xres[1] == pytest.approx(20.0)  # 50 nm fine pixels = 20 px/µm
    run = yaml.safe_load((out / "run.yaml").read_text())
    assert run["camera_source"] == "movie metadata" and run["n_localizations"] == 10
    assert run["pixel_size_nm"] == 100.0 and run["timing"]["frames_per_s"] > 0


def test_camera_resolution_order(movie, tmp_path):
    from stormfold.io.movie import open_movie

    with open_movie(movie) as mv:
        cam, src = resolve_camera(CameraOverrides(baseline_adu=60.0), mv, None)
        assert cam.baseline_adu == 60.0 and "command-line" in src
        path = tmp_path / "cam.yaml"
        path.write_text("camera:\n  baseline_adu: 99\n  e_per_adu: 2.0\n")
        cam, src = resolve_camera(CameraOverrides(camera_file=path), mv, None)
        assert (cam.baseline_adu, cam.e_per_adu) == (99.0, 2.0)
    cam, src = resolve_camera(None, None, None)
    assert cam == Camera() and src.startswith("default")


def test_pixel_size_mismatch_with_model_is_refused(movie, tmp_path):
    with pytest.raises(UserError, match="differs from the model"):
        localize_movie(movie, BrightestPixel(trained_px=160.0), tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_cli_localize_errors(tmp_path, run_cli, movie):
    code, _, err = run_cli("localize", tmp_path / "missing.tif", "--engine", "nope", "--out", tmp_path / "o")
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("localize", movie, "--model", tmp_path, "--out", tmp_path / "o2")
    assert code == 2 and "not a stormfold model" in err
    code, _, err = run_cli("localize", movie, "--model", "builtin:nope", "--out", tmp_path / "o3")
    assert code == 2 and "unknown built-in model" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


def test_runner_callback_reports_progress_and_can_stop(movie, tmp_path):
    seen = []
    res = localize_movie(movie, BrightestPixel(), None, batch_frames=4, start=1, progress=False,
                         callback=lambda done, n: seen.append((done, n)))
    assert seen == [(4, 4), (8, 8), (9, 9)] and len(res.locs) == 9

    class Stop(Exception):
        pass

    def stop_after_first(done, n):
        raise Stop()

    out = tmp_path / "stopped"
    with pytest.raises(Stop):
        localize_movie(movie, BrightestPixel(), out, batch_frames=4, progress=False,
                       callback=stop_after_first)
    assert not out.exists()  # nothing written, no partial file, no empty folder


def test_runner_on_a_movie_in_memory(movie):
    from stormfold.io.memory import movie_from_array
    from stormfold.io.movie import open_movie

    with open_movie(movie) as mv:
        frames, metadata, px = mv[:], mv.metadata, mv.pixel_size_nm
    from_file = localize_movie(movie, BrightestPixel(), None, progress=False)
    in_memory = movie_from_array(frames, px, {"info": metadata["info"]}, name="sim")
    from_array = localize_movie(in_memory, BrightestPixel(), None, progress=False)
    pd.testing.assert_frame_equal(from_array.locs, from_file.locs)
    assert from_array.run["camera_source"] == "movie metadata"
    np.testing.assert_array_equal(from_array.superres, from_file.superres)


def test_movie_from_array_reads_numpy_and_dask_and_refuses_bad_input():
    import dask.array as da

    from stormfold.io.memory import movie_from_array

    frames = np.arange(5 * 4 * 3, dtype=np.uint16).reshape(5, 4, 3)
    for source in (frames, da.from_array(frames, chunks=(2, 4, 3))):
        mv = movie_from_array(source, 100.0)
        assert (mv.n_frames, mv.shape, mv.dtype) == (5, (4, 3), np.uint16)
        batches = list(mv.iter_batches(2))
        assert [first for first, _ in batches] == [0, 2, 4]
        np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), frames)
        assert isinstance(batches[0][1], np.ndarray)
    one = movie_from_array(frames[0])
    assert one.n_frames == 1 and one.pixel_size_nm is None
    with pytest.raises(UserError, match="pixel size unknown"):
        one.require_pixel_size()
    with pytest.raises(UserError, match="stack of 2-D frames"):
        movie_from_array(np.zeros((2, 3, 4, 5)))
    with pytest.raises(UserError, match="empty movie"):
        movie_from_array(np.zeros((0, 3, 4)))
    with pytest.raises(UserError, match="dtype bool.*cannot be camera counts"):
        movie_from_array(np.zeros((1, 3, 4), dtype=bool))
