"""Hostile movies (issue 13): truncated and damaged files of every flavour, NaN/Inf pixels,
more than three dimensions, colour, frames too large for memory, and the input checks the
commands run before any work (pixel size, baseline, threshold, non-ADU data)."""
from __future__ import annotations

import re
import shutil
import warnings

import numpy as np
import pytest
import tifffile
import yaml

from stormfold.errors import UserError
from stormfold.io import readers as readers_module
from stormfold.io import open_movie, open_movies, write_tiff
from stormfold.io.metadata import check_camera_pixel_size
from stormfold.io.movie_checks import adu_warnings, sample_statistics
from stormfold.io.readers import check_frame_memory
from stormfold.localize.registry import check_threshold, load_engine
from stormfold.physics.camera import check_baseline

N, ROWS, COLS = 20, 32, 24  # frames large enough that a cut in half removes pixel data


def _frames(n=N, rows=ROWS, cols=COLS, dtype=np.uint16):
    """Frame i holds 1000·i + pixel index: every frame is distinguishable."""
    base = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols) % 997
    return (np.arange(n)[:, None, None] * 1000 + base).astype(dtype)


def _cut(path, fraction=0.5):
    """Copy of ``path`` cut to ``fraction`` of its bytes (a download or copy cut short)."""
    data = path.read_bytes()
    out = path.with_name("cut_" + path.name)
    out.write_bytes(data[:int(len(data) * fraction)])
    return out


def _one_line_error(path, **options) -> str:
    with pytest.raises(UserError) as info:
        open_movie(path, **options)
    message = str(info.value)
    assert "\n" not in message
    assert path.name in message
    return message


# --------------------------------------------------------------------------- truncation
def _write_flavour(folder, flavour):
    data = _frames()
    path = folder / f"{flavour}.tif"
    if flavour == "imagej":
        write_tiff(path, data, pixel_size_nm=100.0)  # stormfold's own writer: ImageJ
    elif flavour == "plain":
        tifffile.imwrite(path, data, photometric="minisblack")
    elif flavour == "bigtiff":
        tifffile.imwrite(path, data, photometric="minisblack", bigtiff=True)
    elif flavour == "ome":
        path = folder / "ome.ome.tif"
        tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "TYX"})
    elif flavour == "zlib":
        tifffile.imwrite(path, data, photometric="minisblack", compression="zlib")
    elif flavour == "pages":  # written page by page without any metadata
        with tifffile.TiffWriter(path) as tif:
            for frame in data:
                tif.write(frame, photometric="minisblack", metadata=None)
    return path


@pytest.mark.parametrize("flavour", ["imagej", "plain", "bigtiff", "ome", "zlib", "pages"])
def test_tiff_cut_in_half_is_an_error_naming_the_frames(tmp_path, flavour, capfd):
    path = _write_flavour(tmp_path, flavour)
    with open_movie(path) as movie:  # the whole file is fine
        assert movie.n_frames == N
    message = _one_line_error(_cut(path))
    assert "truncated" in message
    numbers = {int(v) for v in re.findall(r"\d+", message)}
    # Both counts: the frames the file should hold (or its pages list) and those present.
    assert N in numbers or flavour in ("pages", "ome")
    assert any(0 < v < N for v in numbers)
    assert "tifffile" not in capfd.readouterr().err  # tifffile's own log stays quiet


def test_truncated_real_imagej_movie(shared_data, tmp_path):
    """The Deep-STORM demo movie (ImageJ, 20 frames) cut in half: no longer read as 1 frame."""
    source = shared_data / "deepstorm-demo1-train" / "ArtificialDataset_demo1.tif"
    shutil.copy(source, tmp_path / "demo.tif")
    message = _one_line_error(_cut(tmp_path / "demo.tif"))
    assert "ImageJ header declares 20 frames" in message and "holds 10" in message


def test_ome_declaring_more_frames_than_stored(tmp_path):
    """An aborted acquisition: OME-XML plans 30 time points, 20 pages were written."""
    path = tmp_path / "aborted.ome.tif"
    tifffile.imwrite(path, _frames(), photometric="minisblack", metadata={"axes": "TYX"})
    xml = tifffile.tiffcomment(path)
    tifffile.tiffcomment(path, xml.replace(f'SizeT="{N}"', 'SizeT="30"').encode())
    message = _one_line_error(path)
    assert "declares 30 frames" in message and f"holds {N}" in message


def test_picasso_raw_shorter_than_its_yaml(tmp_path):
    raw = tmp_path / "m.raw"
    _frames(n=7).astype("<u2").tofile(raw)
    info = {"Byte Order": "<", "Data Type": "uint16", "Frames": 10, "Height": ROWS,
            "Width": COLS}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(info))
    message = _one_line_error(raw)
    assert "declares 10 frames" in message and "holds 7 frames" in message


def test_corrupt_later_frame_is_named_when_read(tmp_path):
    """Compressed pages: the size is right, the 15th page's bytes are garbage."""
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, _frames(), photometric="minisblack", compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[15].dataoffsets[0], tif.pages[15].databytecounts[0]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * count)
    with open_movie(path) as movie:
        np.testing.assert_array_equal(movie.read(0, 10), _frames()[:10])
        with pytest.raises(UserError, match=r"z\.tif: cannot read frames 12:16") as info:
            movie.read(12, 16)
    assert "\n" not in str(info.value)


def test_corrupt_file_in_a_folder_movie_is_named(tmp_path):
    for i, frame in enumerate(_frames(n=5)):
        tifffile.imwrite(tmp_path / f"{i:03d}.tif", frame)
    (tmp_path / "002.tif").write_bytes(b"II*\0garbage")
    with open_movie(tmp_path) as movie:
        with pytest.raises(UserError, match=r"002\.tif: frame 2 \(0-based\)"):
            movie.read(0, 5)


# --------------------------------------------------------------------------- NaN / Inf
def _float_movie(tmp_path, bad_frames=(7, 12)):
    data = _frames().astype(np.float32)
    data[bad_frames[0], 3, 4] = np.nan
    data[bad_frames[1], 0, :2] = [np.inf, -np.inf]
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, data, photometric="minisblack")
    return path, data


def test_nan_pixels_are_an_error_naming_the_frames(tmp_path):
    path, data = _float_movie(tmp_path)
    with open_movie(path) as movie:  # opening reads no pixels
        np.testing.assert_array_equal(movie.read(0, 7), data[:7])
        with pytest.raises(UserError) as info:
            movie.read(5, 15)
    message = str(info.value)
    assert "3 NaN/Inf pixels in frame(s) 7, 12" in message and "nan_policy" in message


def test_nan_policy_zero_repairs_and_counts_once(tmp_path):
    path, data = _float_movie(tmp_path)
    with open_movie(path, nan_policy="zero") as movie:
        assert movie.repairs() is None
        frames = movie.read(0, N)
        movie.read(6, 13)  # frames read twice are counted once
        report = movie.repairs()
    expected = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    np.testing.assert_array_equal(frames, expected)
    assert report == {"nan_policy": "zero", "frames_repaired": 2, "pixels_replaced": 3,
                      "frames": [7, 12]}


def test_nan_policy_in_multi_part_movies_and_workers(tmp_path):
    path, _ = _float_movie(tmp_path)
    second = tmp_path / "second.tif"
    shutil.copy(path, second)
    with open_movies([path, second], nan_policy="zero") as movie:
        movie.read(0, 2 * N)
        assert movie.repairs()["frames"] == [7, 12, N + 7, N + 12]
        import pickle  # how dask ships a movie: re-opened by path with the same options

        clone = pickle.loads(pickle.dumps(movie))
    with clone:
        assert clone.nan_policy == "zero"
        assert np.isfinite(clone.read(0, 2 * N)).all()
    with pytest.raises(UserError, match="nan_policy 'drop'"):
        open_movie(path, nan_policy="drop")


def test_movies_in_memory_get_the_same_checks(tmp_path):
    from stormfold.io.memory import movie_from_array

    _, data = _float_movie(tmp_path)
    with pytest.raises(UserError, match=r"layer: 3 NaN/Inf pixels in frame\(s\) 7, 12"):
        movie_from_array(data, name="layer").read(0, N)
    repaired = movie_from_array(data, name="layer", nan_policy="zero")
    np.testing.assert_array_equal(repaired.read(0, N),
                                  np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0))
    assert repaired.repairs()["frames"] == [7, 12]
    with pytest.raises(UserError, match="layer: int8 pixels cannot be camera counts"):
        movie_from_array(np.zeros((2, 4, 4), np.int8), name="layer")
    with pytest.raises(UserError, match="outside 10–2000 nm"):
        movie_from_array(_frames(n=2), 1e9)
    with pytest.raises(UserError, match="nan_policy 'drop'"):
        movie_from_array(_frames(n=2), nan_policy="drop")


# --------------------------------------------------------------------------- dimensions
@pytest.fixture()
def stacks(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, (4, 3, 5, 16, 12)).astype(np.uint16)  # T Z C Y X
    paths = {"hyperstack": tmp_path / "hyper.tif", "tzyx": tmp_path / "tzyx.tif",
             "tzyx_zlib": tmp_path / "tzyx_zlib.tif", "planar3": tmp_path / "planar3.tif"}
    tifffile.imwrite(paths["hyperstack"], data, imagej=True, metadata={"axes": "TZCYX"})
    tifffile.imwrite(paths["tzyx"], data[:, :, 0], photometric="minisblack")
    tifffile.imwrite(paths["tzyx_zlib"], data.reshape(4, 15, 16, 12), photometric="minisblack",
                     compression="zlib")
    with warnings.catch_warnings():  # tifffile stores (..., 3, Y, X) as planar RGB
        warnings.simplefilter("ignore", DeprecationWarning)
        tifffile.imwrite(paths["planar3"], data[:, 0, :3])
    return data, paths


def test_4d_grayscale_is_refused_with_its_shape_and_not_called_rgb(stacks):
    _, paths = stacks
    message = _one_line_error(paths["tzyx"])
    assert "(4, 3, 16, 12)" in message and "axes='TZYX'" in message
    assert "RGB" not in message and "colour" not in message


def test_axes_and_z_choose_the_planes(stacks):
    data, paths = stacks
    with open_movie(paths["tzyx"], axes="TZYX", z=2) as movie:
        assert (movie.n_frames, movie.shape) == (4, (16, 12))
        assert movie.metadata["axes"] == "TZYX" and movie.metadata["selection"] == {"z": 2}
        np.testing.assert_array_equal(movie.read(1, 4), data[1:, 2, 0])
    with open_movie(paths["tzyx"], axes="ZTYX", z=1) as movie:  # time is the inner axis
        np.testing.assert_array_equal(movie.read(0, 3), data[1, :, 0])
    with open_movie(paths["tzyx_zlib"], axes="TZYX", z=7) as movie:  # compressed pages
        np.testing.assert_array_equal(movie.read(0, 4), data.reshape(4, 15, 16, 12)[:, 7])


def test_imagej_hyperstack_needs_z_and_channel(stacks):
    data, paths = stacks
    assert "choose one with z=0…2" in _one_line_error(paths["hyperstack"])
    assert "channel=0…4" in _one_line_error(paths["hyperstack"], z=1)
    with open_movie(paths["hyperstack"], z=1, channel=4) as movie:
        np.testing.assert_array_equal(movie.read(0, 4), data[:, 1, 4])
    assert "out of range" in _one_line_error(paths["hyperstack"], z=3, channel=0)
    assert "no Z axis" in _one_line_error(paths["tzyx"], axes="TCYX", channel=0, z=0)
    assert "name 4 dimensions" in _one_line_error(paths["hyperstack"], axes="TZYX", z=0)


def test_colour_is_refused_as_colour_unless_named_otherwise(stacks, tmp_path):
    data, paths = stacks
    message = _one_line_error(paths["planar3"])
    assert "colour image (RGB" in message and "not colours" in message
    with open_movie(paths["planar3"], axes="TZYX", z=1) as movie:
        np.testing.assert_array_equal(movie.read(0, 4), data[:, 0, 1])
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((4, 16, 12, 3), np.uint8), photometric="rgb")
    assert "colour image (RGB, 3 samples per pixel" in _one_line_error(rgb)


def test_plane_options_do_not_apply_to_folders_and_raw(tmp_path):
    for i, frame in enumerate(_frames(n=2)):
        tifffile.imwrite(tmp_path / f"{i}.tif", frame)
    with pytest.raises(UserError, match="z=1 apply to TIFF stacks"):
        open_movie(tmp_path, z=1)


# --------------------------------------------------------------------------- memory
def test_huge_declared_frame_is_a_user_error(tmp_path, monkeypatch):
    """A header declaring one 60000 × 60000 frame (sparse file: 7.2 GB apparent size)."""
    monkeypatch.setattr(readers_module, "_physical_memory_bytes", lambda: 24 * 2**30)
    path = tmp_path / "huge.tif"
    tifffile.imwrite(path, shape=(60000, 60000), dtype="uint16", photometric="minisblack")
    message = _one_line_error(path)
    assert "60000 x 60000 pixels need 13.4 GiB each" in message and "24.0 GiB" in message
    check_frame_memory(path, (2048, 2048))  # a large real camera is fine


def test_out_of_memory_while_reading_is_a_user_error(tmp_path, monkeypatch):
    write_tiff(tmp_path / "m.tif", _frames())
    with open_movie(tmp_path / "m.tif") as movie:
        def no_memory(*args, **kwargs):
            raise MemoryError

        monkeypatch.setattr(readers_module.np, "empty", no_memory)
        with pytest.raises(UserError, match=r"not enough memory to read frames 0:20"):
            movie.read(0, 20)


# --------------------------------------------------------------------------- checks
@pytest.mark.parametrize("bad", [1e9, 5.0, 0.1, 2500])
def test_non_physical_pixel_size_is_refused(tmp_path, bad):
    write_tiff(tmp_path / "s.tif", _frames(n=2))
    with pytest.raises(UserError, match=r"outside 10–2000 nm"):
        open_movie(tmp_path / "s.tif", pixel_size_nm=bad)
    with pytest.raises(UserError, match=r"outside 10–2000 nm"):
        check_camera_pixel_size(bad)
    assert check_camera_pixel_size(10) == 10.0 and check_camera_pixel_size("2000") == 2000.0


def test_file_pixel_size_outside_camera_range_is_unknown(tmp_path):
    write_tiff(tmp_path / "render.tif", _frames(n=1)[0].astype(np.float32), pixel_size_nm=5.0)
    with open_movie(tmp_path / "render.tif") as movie:
        assert movie.pixel_size_nm is None
        with pytest.raises(UserError, match="outside the 10–2000 nm of camera pixels"):
            movie.require_pixel_size()


def test_sample_statistics_against_numpy(tmp_path):
    data = _frames(n=40)
    write_tiff(tmp_path / "m.tif", data)
    with open_movie(tmp_path / "m.tif") as movie:
        stats = sample_statistics(movie, n_frames=5)
    assert stats["frames"] == [0, 10, 20, 29, 39]
    sample = data[stats["frames"]].astype(np.float64)
    assert stats["p99"] == pytest.approx(np.percentile(sample, 99))
    assert (stats["min"], stats["max"]) == (sample.min(), sample.max())


def test_baseline_above_the_99th_percentile_is_refused():
    check_baseline(100.0, p99_adu=450.0)
    with pytest.raises(UserError, match=r"baseline 60000 ADU is above the 99th percentile"):
        check_baseline(60000.0, p99_adu=450.0, source="--baseline")
    with pytest.raises(UserError, match="finite"):
        check_baseline(float("inf"), p99_adu=450.0)


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0, -1.0, "abc"])
def test_threshold_must_be_positive_and_finite(bad):
    with pytest.raises(UserError, match="threshold"):
        check_threshold(bad)
    with pytest.raises(UserError, match="threshold"):
        load_engine(engine="classic", threshold=bad)
    assert check_threshold("2.5") == 2.5


def test_int8_movie_is_refused_and_non_adu_values_are_reported(tmp_path):
    tifffile.imwrite(tmp_path / "i8.tif", np.zeros((3, 8, 6), np.int8), photometric="minisblack")
    assert "int8 pixels cannot be camera counts" in _one_line_error(tmp_path / "i8.tif")
    cases = {"normalised": (np.linspace(0, 1, 3 * 48).reshape(3, 8, 6).astype(np.float32),
                            "normalised image"),
             "negative": ((_frames(n=3) - 500).astype(np.int16), "negative pixel values"),
             "constant": (np.full((3, 8, 6), 100, np.uint16), "constant")}
    for name, (data, needle) in cases.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", data, photometric="minisblack")
        with open_movie(tmp_path / f"{name}.tif") as movie:
            found = adu_warnings(sample_statistics(movie))
        assert len(found) == 1 and needle in found[0], name
    with open_movie(_write_flavour(tmp_path, "plain")) as movie:
        assert adu_warnings(sample_statistics(movie)) == []


def test_context_reads_skip_the_nan_check_also_across_parts(tmp_path):
    """Movie.read refuses NaN/Inf pixels; read_context (frames that are not localized) fills
    them, also in a movie made of several files, whose parts do the checking."""
    from stormfold.io.movie import open_movies

    frames = np.full((5, 8, 8), 100.0, np.float32)  # 5 planes: not mistaken for RGBA
    damaged = frames.copy()
    damaged[1, 2, 2] = np.nan
    tifffile.imwrite(tmp_path / "a.tif", frames)
    tifffile.imwrite(tmp_path / "b.tif", damaged)
    with open_movies([tmp_path / "a.tif", tmp_path / "b.tif"], pixel_size_nm=100.0) as movie:
        with pytest.raises(UserError, match="NaN"):
            movie.read(5, 10)
        filled = movie.read_context(5, 10)
        assert filled[1, 2, 2] == 0 and np.isfinite(filled).all()
        assert np.isnan(movie.read_context(6, 7, fill=None)[0, 2, 2])
        assert movie.repairs() is None


# --------------------------------------------------------------------------- saturation
def _saturation_lines(folder, name, data):
    tifffile.imwrite(folder / f"{name}.tif", data, photometric="minisblack")
    with open_movie(folder / f"{name}.tif") as movie:
        stats = sample_statistics(movie)
    return stats, [line for line in adu_warnings(stats) if "saturated" in line]


def _bright_movie(e_per_adu, seed=2):
    """The review's saturation case (14, D6): 20–100k photons, 0.3/µm², background 50."""
    from stormfold.simulate import build_config, simulate

    cfg = build_config("zerocost", n_frames=16, seed=seed, overrides=[
        "emitters.photons_distribution=uniform", "emitters.photons_min=20000",
        "emitters.photons_max=100000", "activation.density_per_um2=0.3",
        "background.photons=50", f"camera.e_per_adu={e_per_adu}"])
    return simulate(cfg).movie


def test_saturated_pixels_are_reported_with_their_share(tmp_path):
    clean = _bright_movie(2.0)  # 16-bit, nothing near 65535
    assert clean.max() < 65535
    assert _saturation_lines(tmp_path, "clean", clean)[1] == []
    stats, lines = _saturation_lines(tmp_path, "adc12", np.minimum(_bright_movie(0.5), 4095))
    count = stats["at_saturation"]
    assert len(lines) == 1 and count >= 500 and "\n" not in lines[0]
    assert (f"{count} pixels ({100 * count / stats['pixels']:.2g} %) of the sampled frames sit "
            f"at 4095 ADU, the maximum of a 12-bit camera: saturated") in lines[0]
    full = _bright_movie(0.1)  # the simulator clips at 65535
    stats, lines = _saturation_lines(tmp_path, "adc16", full)
    assert len(lines) == 1 and "at 65535 ADU, the maximum of a 16-bit camera" in lines[0]
    # A float movie has no full scale: not checked, however many pixels share its maximum.
    stats, lines = _saturation_lines(tmp_path, "float", full.astype(np.float32))
    assert stats["saturation"] is None and lines == []


@pytest.mark.parametrize("at_max,warns", [(1, False), (4, False), (5, True)])
def test_a_maximum_reached_by_a_few_pixels_is_not_saturation(tmp_path, at_max, warns):
    """Poisson noise whose maximum happens to be 4095 has 1–2 pixels there (405 unclipped
    simulations, experiments/saturation_check.py); a plateau of 5 is clipping."""
    rng = np.random.default_rng(0)
    data = np.minimum(rng.poisson(300.0, (16, 32, 32)), 4000).astype(np.uint16)
    data.reshape(-1)[np.arange(at_max) * 997] = 4095
    stats, lines = _saturation_lines(tmp_path, f"max{at_max}", data)
    assert stats["saturation"] == 4095 and stats["at_saturation"] == at_max
    assert len(lines) == (1 if warns else 0)
    # Beyond 4095 the movie is not a 12-bit camera's: 4095 is an ordinary value there.
    data.reshape(-1)[5] = 4200
    assert _saturation_lines(tmp_path, f"wide{at_max}", data)[1] == []


def test_uint8_saturation_names_the_type(tmp_path):
    rng = np.random.default_rng(1)
    data = np.minimum(rng.poisson(240.0, (4, 16, 16)), 255).astype(np.uint8)
    lines = _saturation_lines(tmp_path, "u8", data)[1]
    assert len(lines) == 1 and "at 255 ADU, the largest uint8 value: saturated" in lines[0]


def test_calibrate_reports_saturation(tmp_path):
    from stormfold.calibrate import calibrate

    movie = np.minimum(_bright_movie(0.5), 4095)
    write_tiff(tmp_path / "sat.tif", movie, pixel_size_nm=100.0)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        calibrate(tmp_path / "sat.tif")
    lines = [str(w.message) for w in said if "saturated" in str(w.message)]
    assert len(lines) == 1 and "sit at 4095 ADU, the maximum of a 12-bit camera" in lines[0]


def test_nan_policy_median_fills_with_the_frames_median(tmp_path):
    """Review 17 D9: 0 ADU lies below a camera's baseline (negative photons), a fake hot
    spot of a SOFI variance; the frame's median is its background."""
    path, data = _float_movie(tmp_path)
    with open_movie(path, nan_policy="median") as movie:
        frames = movie.read(0, N)
        report = movie.repairs()
    for t, (r, c) in ((7, (3, 4)), (12, (0, 0)), (12, (0, 1))):
        finite = data[t][np.isfinite(data[t])]
        assert frames[t, r, c] == np.float32(np.median(finite))
    untouched = np.isfinite(data)
    np.testing.assert_array_equal(frames[untouched], data[untouched])
    assert report["nan_policy"] == "median" and report["pixels_replaced"] == 3
