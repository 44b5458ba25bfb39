"""Movie readers (TIFF stacks, TIFF folders, Picasso .raw) and TIFF writers."""
from __future__ import annotations

import pickle
import tracemalloc

import numpy as np
import pytest
import tifffile
import yaml

from stormfold.errors import UserError
from stormfold.io import Movie, TiffStackWriter, open_movie, write_tiff
from stormfold.io import tiff as tiff_module
from stormfold.io.metadata import unit_to_nm


def _stack(n=5, rows=8, cols=6, dtype=np.uint16):
    """Frame i holds values 1000*i + pixel index, so every frame is distinguishable."""
    base = np.arange(rows * cols, dtype=np.int64).reshape(rows, cols)
    return (np.arange(n)[:, None, None] * 1000 + base).astype(dtype)


# --------------------------------------------------------------------------- real data
def test_deepstorm_demo_movie(shared_data):
    path = shared_data / "deepstorm-demo1-train" / "ArtificialDataset_demo1.tif"
    with open_movie(path) as movie:
        assert (movie.n_frames, movie.shape, movie.dtype) == (20, (64, 64), np.uint16)
        assert len(movie) == 20
        assert movie.pixel_size_nm == pytest.approx(100.0)  # ResolutionUnit 1 + "\u00B5m"
        assert movie.metadata["format"] == "imagej-tiff"
        frames = movie.read(0, 20)
    np.testing.assert_array_equal(frames, tifffile.imread(path))
    assert 105 <= frames.min() and frames.max() <= 2472


def test_isbi_sequence_stack(shared_data):
    path = shared_data / "isbi2013-bundled-tubes-hd" / "sequence_stack.tif"
    with open_movie(path) as movie:
        assert (movie.n_frames, movie.shape, movie.dtype) == (361, (64, 64), np.uint16)
        assert movie.pixel_size_nm == pytest.approx(100.0)  # ImageJ unit "um"
        last = movie[-1]
        middle = movie[100:103]
    full = tifffile.imread(path)
    np.testing.assert_array_equal(last, full[-1])
    np.testing.assert_array_equal(middle, full[100:103])


def test_picasso_raw_movie(shared_data):
    path = shared_data / "picasso-testdata" / "testdata.raw"
    with open_movie(path) as movie:
        assert (movie.n_frames, movie.shape, movie.dtype) == (100, (32, 32), np.uint16)
        assert movie.pixel_size_nm == 160.0
        assert movie.metadata["format"] == "picasso-raw"
        assert movie.metadata["picasso"]["Camera.Pixelsize"] == 160
        frames = movie.read(10, 12)
    raw = np.fromfile(path, dtype="<u2").reshape(100, 32, 32)
    np.testing.assert_array_equal(frames, raw[10:12])


# --------------------------------------------------------------------------- writers
def test_write_tiff_stack_round_trip(tmp_path):
    data = _stack()
    out = write_tiff(tmp_path / "s.tif", data, pixel_size_nm=107.3, metadata={"seed": 3})
    with open_movie(out) as movie:
        assert movie.pixel_size_nm == pytest.approx(107.3, rel=1e-6)
        assert movie.metadata["info"] == {"seed": 3}
        assert movie.metadata["imagej"]["unit"] == "um"  # what Fiji shows
        np.testing.assert_array_equal(movie.read(0, 5), data)
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_write_tiff_image_and_float64(tmp_path):
    image = np.linspace(0, 1, 48).reshape(8, 6)
    write_tiff(tmp_path / "im.tif", image, pixel_size_nm=12.5)
    with open_movie(tmp_path / "im.tif") as movie:
        assert (movie.n_frames, movie.shape, movie.dtype) == (1, (8, 6), np.float32)
        assert movie.pixel_size_nm == pytest.approx(12.5)
        np.testing.assert_allclose(movie[0], image, rtol=1e-7)


def test_write_tiff_bigtiff_uses_centimetres(tmp_path, monkeypatch):
    monkeypatch.setattr(tiff_module, "BIGTIFF_BYTES", 100)  # pretend the data are > 3.9 GB
    data = _stack()
    write_tiff(tmp_path / "big.tif", data, pixel_size_nm=100.0, metadata={"a": [1, 2]})
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert tif.is_bigtiff and not tif.is_imagej
        assert int(tif.pages[0].resolutionunit) == 3
        assert tif.pages[0].resolution == pytest.approx((1e5, 1e5))
    with open_movie(tmp_path / "big.tif") as movie:
        assert movie.pixel_size_nm == pytest.approx(100.0)
        assert movie.metadata["info"] == {"a": [1, 2]}
        np.testing.assert_array_equal(movie.read(0, 5), data)


def test_stack_writer_streams_in_any_order(tmp_path):
    data = _stack(n=10)
    path = tmp_path / "movie.tif"
    with TiffStackWriter(path, 10, (8, 6), np.uint16, pixel_size_nm=160.0) as writer:
        writer.write(6, data[6:])
        writer.write(0, data[:3])
        writer.write(None, data[3:6])  # continues after the previous write
        assert not path.exists()  # only the temporary file exists until close
    with open_movie(path) as movie:
        assert movie.pixel_size_nm == pytest.approx(160.0)
        np.testing.assert_array_equal(movie.read(0, 10), data)


def test_stack_writer_rounds_and_clips_floats(tmp_path):
    frames = np.array([[[-3.0, 1.6], [70000.0, 2.4]]])
    with TiffStackWriter(tmp_path / "m.tif", 1, (2, 2), np.uint16) as writer:
        writer.write(0, frames)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "m.tif"), [[0, 2], [65535, 2]])


def test_stack_writer_removes_temp_file_on_error(tmp_path):
    path = tmp_path / "movie.tif"
    with pytest.raises(RuntimeError, match="boom"):
        with TiffStackWriter(path, 4, (8, 6), np.uint16) as writer:
            writer.write(0, _stack(n=2))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_stack_writer_refuses_missing_frames(tmp_path):
    with pytest.raises(ValueError, match="never written"):
        with TiffStackWriter(tmp_path / "movie.tif", 4, (8, 6), np.uint16) as writer:
            writer.write(0, _stack(n=3))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- pixel size
@pytest.mark.parametrize("unit, code, resolution", [("INCH", 2, 254000.0),
                                                    ("CENTIMETER", 3, 100000.0)])
def test_resolution_units(tmp_path, unit, code, resolution):
    path = tmp_path / f"{unit}.tif"
    tifffile.imwrite(path, _stack(), photometric="minisblack",
                     resolution=(resolution, resolution), resolutionunit=unit)
    with tifffile.TiffFile(path) as tif:
        assert int(tif.pages[0].resolutionunit) == code
    with open_movie(path) as movie:
        assert movie.pixel_size_nm == pytest.approx(100.0)


@pytest.mark.parametrize("unit, per_unit", [("um", 10.0), ("\\u00B5m", 10.0), ("micron", 10.0),
                                            ("nm", 0.01), ("mm", 1e4)])
def test_imagej_units(tmp_path, unit, per_unit):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, _stack(), imagej=True, resolution=(per_unit, per_unit),
                     metadata={"unit": unit, "axes": "TYX"})
    with open_movie(path) as movie:
        assert movie.pixel_size_nm == pytest.approx(100.0)


def test_unit_spellings():
    # tifffile writes ASCII descriptions only, so the literal micro signs are checked here.
    for unit in ("µm", "\u03bcm", "\\u00B5m", "\\u00b5m", "um", " micron "):
        assert unit_to_nm(unit) == 1000.0, unit
    assert unit_to_nm("pixel") is None and unit_to_nm(None) is None


def test_ome_physical_size(tmp_path):
    path = tmp_path / "m.ome.tif"
    tifffile.imwrite(path, _stack(), photometric="minisblack",
                     metadata={"axes": "TYX", "PhysicalSizeX": 65.0, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 65.0, "PhysicalSizeYUnit": "nm"})
    with open_movie(path) as movie:
        assert movie.metadata["format"] == "ome-tiff"
        assert movie.pixel_size_nm == pytest.approx(65.0)


def test_unknown_pixel_size(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, _stack(), photometric="minisblack")  # ResolutionUnit none
    with open_movie(path) as movie:
        assert movie.pixel_size_nm is None
        with pytest.raises(UserError, match=r"pixel size unknown for .*plain\.tif.*--pixel-size"):
            movie.require_pixel_size()
    with open_movie(path, pixel_size_nm=117) as movie:
        assert movie.require_pixel_size() == 117.0


def test_placeholder_dpi_is_not_a_pixel_size(tmp_path):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, _stack(), photometric="minisblack", resolution=(72, 72),
                     resolutionunit="INCH")
    with open_movie(path) as movie:
        assert movie.pixel_size_nm is None
        with pytest.raises(UserError, match="placeholder DPI"):
            movie.require_pixel_size()


def test_given_pixel_size_wins(shared_data):
    path = shared_data / "deepstorm-demo1-train" / "ArtificialDataset_demo1.tif"
    with open_movie(path, pixel_size_nm=95.0) as movie:
        assert movie.pixel_size_nm == 95.0


# --------------------------------------------------------------------------- layouts
def test_folder_of_single_frames_sorted_naturally(tmp_path):
    data = _stack(n=12)
    for i, frame in enumerate(data):
        tifffile.imwrite(tmp_path / f"frame_{i + 1}.tif", frame, imagej=True,
                         resolution=(10, 10), metadata={"unit": "um"})
    (tmp_path / "notes.txt").write_text("not a frame")
    with open_movie(tmp_path) as movie:
        assert (movie.n_frames, movie.shape) == (12, (8, 6))
        assert movie.pixel_size_nm == pytest.approx(100.0)
        np.testing.assert_array_equal(movie.read(0, 12), data)  # frame_10 after frame_9
        np.testing.assert_array_equal(movie[9], data[9])


def test_isbi_style_folder(tmp_path):
    data = _stack(n=3)
    for i, frame in enumerate(data):
        tifffile.imwrite(tmp_path / f"{i + 1:05d}.tif", frame)
    with open_movie(tmp_path) as movie:
        np.testing.assert_array_equal(movie[:], data)


def test_compressed_pages_are_read_page_by_page(tmp_path):
    data = _stack(n=7)
    path = tmp_path / "zlib.tif"
    tifffile.imwrite(path, data, photometric="minisblack", compression="zlib")
    with open_movie(path) as movie:
        np.testing.assert_array_equal(movie.read(2, 5), data[2:5])
        np.testing.assert_array_equal(movie[::3], data[::3])


def test_separately_written_pages(tmp_path):
    data = _stack(n=4)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for frame in data:  # each page its own series, not contiguous
            tif.write(frame, photometric="minisblack")
    with open_movie(path) as movie:
        assert movie.n_frames == 4
        np.testing.assert_array_equal(movie.read(1, 4), data[1:])


def test_big_endian_tiff(tmp_path):
    data = _stack(n=3)
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, data, photometric="minisblack", byteorder=">")
    with open_movie(path) as movie:
        frames = movie.read(0, 3)
    assert frames.dtype == np.dtype("=u2")
    np.testing.assert_array_equal(frames, data)


def test_movie_pickles_by_path(tmp_path):
    write_tiff(tmp_path / "s.tif", _stack(), pixel_size_nm=100.0)
    with open_movie(tmp_path / "s.tif", pixel_size_nm=90.0) as movie:
        clone = pickle.loads(pickle.dumps(movie))
    with clone:
        assert isinstance(clone, Movie) and clone.pixel_size_nm == 90.0
        np.testing.assert_array_equal(clone[4], _stack()[4])


# --------------------------------------------------------------------------- memory
def test_batches_cover_every_frame_once_with_bounded_memory(tmp_path):
    n, shape, batch = 2000, (64, 64), 96  # 16 MB movie, ~0.8 MB batches
    path = tmp_path / "long.tif"
    with TiffStackWriter(path, n, shape, np.uint16, pixel_size_nm=100.0) as writer:
        for first in range(0, n, 250):
            count = min(250, n - first)
            values = np.arange(first, first + count, dtype=np.uint16)[:, None, None]
            frames = np.broadcast_to(values, (count, *shape))
            writer.write(first, frames)
    seen = np.zeros(n, dtype=int)
    tracemalloc.start()
    try:
        with open_movie(path) as movie:
            for first, frames in movie.iter_batches(batch):
                assert frames.shape[1:] == shape and len(frames) <= batch
                index = first + np.arange(len(frames))
                np.testing.assert_array_equal(frames[:, 0, 0], index)
                seen[index] += 1
                del frames
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.all(seen == 1)
    assert peak < 4 * batch * shape[0] * shape[1] * 2  # a few batches, not 16 MB


def test_iter_batches_range(tmp_path):
    write_tiff(tmp_path / "s.tif", _stack(n=10))
    with open_movie(tmp_path / "s.tif") as movie:
        firsts = [(first, len(frames)) for first, frames in movie.iter_batches(3, 2, 9)]
    assert firsts == [(2, 3), (5, 3), (8, 1)]


def test_open_reads_no_pixel_data(tmp_path, monkeypatch):
    data = _stack(n=50, rows=32, cols=32)
    write_tiff(tmp_path / "plain.tif", data, pixel_size_nm=100.0)
    tifffile.imwrite(tmp_path / "zlib.tif", data, photometric="minisblack", compression="zlib")

    def forbidden(*args, **kwargs):
        raise AssertionError("pixel data read at open time")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", forbidden)
    monkeypatch.setattr(tifffile.TiffPage, "asarray", forbidden)
    monkeypatch.setattr(tifffile.TiffPage, "decode", property(forbidden))
    movies = [open_movie(tmp_path / "plain.tif"), open_movie(tmp_path / "zlib.tif")]
    monkeypatch.undo()
    for movie in movies:
        with movie:
            np.testing.assert_array_equal(movie.read(40, 50), data[40:])


# --------------------------------------------------------------------------- bad input
def _raw_movie(tmp_path, frames=3, size=None):
    raw = tmp_path / "m.raw"
    data = _stack(n=frames)
    data.astype("<u2").tofile(raw)
    if size is not None:
        with open(raw, "ab") as fh:
            fh.write(b"\0" * size)
    info = {"Byte Order": "<", "Data Type": "uint16", "Frames": frames, "Height": 8, "Width": 6}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(info))
    return raw


def test_picasso_raw_without_pixel_size(tmp_path):
    with open_movie(_raw_movie(tmp_path)) as movie:
        assert movie.pixel_size_nm is None
        np.testing.assert_array_equal(movie.read(0, 3), _stack(n=3))


def _bad_inputs(tmp_path):
    cases = {}
    cases["missing"] = (tmp_path / "nope.tif", "not found")
    text = tmp_path / "text.tif"
    text.write_text("hello, I am not an image\n")
    cases["not tiff"] = (text, "not a TIFF")
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((8, 6, 3), np.uint8), photometric="rgb")
    cases["rgb"] = (rgb, "RGB")
    empty = tmp_path / "empty.tif"
    with pytest.warns(UserWarning):
        tifffile.imwrite(empty, np.zeros((0, 8, 6), np.uint16))
    cases["empty"] = (empty, "empty stack")
    no_tiffs = tmp_path / "no_tiffs"
    no_tiffs.mkdir()
    (no_tiffs / "readme.txt").write_text("x")
    cases["empty folder"] = (no_tiffs, "no TIFF files")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tifffile.imwrite(mixed / "1.tif", np.zeros((8, 6), np.uint16))
    tifffile.imwrite(mixed / "2.tif", np.zeros((8, 7), np.uint16))
    cases["mixed shapes"] = (mixed, "shape")
    lonely = tmp_path / "lonely.raw"
    lonely.write_bytes(b"\0" * 96)
    cases["raw without yaml"] = (lonely, "lonely.yaml")
    return cases


def test_bad_inputs_give_one_line_user_errors(tmp_path):
    for name, (path, needle) in _bad_inputs(tmp_path).items():
        with pytest.raises(UserError) as info:
            open_movie(path)
        message = str(info.value)
        assert needle in message, name
        assert path.name in message and "\n" not in message, name


def test_folder_shape_checked_when_frames_are_read(tmp_path):
    for i, cols in enumerate((6, 7, 6)):  # the odd one is in the middle
        tifffile.imwrite(tmp_path / f"{i}.tif", np.zeros((8, cols), np.uint16))
    with open_movie(tmp_path) as movie:
        with pytest.raises(UserError, match=r"1\.tif.*shape"):
            movie.read(0, 3)


def test_raw_size_mismatch(tmp_path):
    with pytest.raises(UserError, match=r"m\.raw.*does not match m\.yaml"):
        open_movie(_raw_movie(tmp_path, size=10))


@pytest.mark.parametrize("bad", [0, -100, float("nan"), "abc"])
def test_non_positive_pixel_size(tmp_path, bad):
    write_tiff(tmp_path / "s.tif", _stack())
    with pytest.raises(UserError, match=r"s\.tif.*pixel size"):
        open_movie(tmp_path / "s.tif", pixel_size_nm=bad)
    with pytest.raises(UserError, match="pixel size"):
        write_tiff(tmp_path / "t.tif", _stack(), pixel_size_nm=bad)


def test_open_movies_concatenates_parts(tmp_path):
    import pickle

    import numpy as np
    import tifffile

    from stormfold.io.movie import open_movies

    a = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    b = a[:2] + 1000
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="minisblack")
    tifffile.imwrite(tmp_path / "b.tif", b, photometric="minisblack")
    with open_movies([tmp_path / "a.tif", tmp_path / "b.tif"], pixel_size_nm=100) as movie:
        assert movie.n_frames == 5 and movie.pixel_size_nm == 100
        np.testing.assert_array_equal(movie.read(2, 5), np.concatenate([a[2:], b]))
        again = pickle.loads(pickle.dumps(movie))  # how dask ships it: re-opened by path
        np.testing.assert_array_equal(again.read(0, 5), movie.read(0, 5))
        again.close()
    tifffile.imwrite(tmp_path / "c.tif", np.zeros((2, 3, 3), np.uint16), photometric="minisblack")
    with pytest.raises(UserError, match="differ"):
        open_movies([tmp_path / "a.tif", tmp_path / "c.tif"])


def test_the_same_movie_twice_is_refused(tmp_path):
    """Review 15: ``movie: [M, M]`` doubled every localization without a word."""
    import tifffile

    from stormfold.errors import UserError
    from stormfold.io.movie import open_movies

    path = tmp_path / "m.tif"
    tifffile.imwrite(path, np.zeros((2, 8, 8), np.uint16))
    with pytest.raises(UserError, match="listed twice"):
        open_movies([path, tmp_path / "." / "m.tif"])
    tifffile.imwrite(tmp_path / "n.tif", np.zeros((2, 8, 8), np.uint16))
    assert open_movies([path, tmp_path / "n.tif"]).n_frames == 4
