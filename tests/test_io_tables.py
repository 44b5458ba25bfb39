"""Localization tables: ThunderSTORM CSV, Picasso HDF5, format dispatch, conversion, CLI."""
from __future__ import annotations

import subprocess
import sys
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from stormfold.errors import UserError
from stormfold.io import (convert_table, read_picasso_hdf5, read_table, read_thunderstorm_csv,
                          write_picasso_hdf5, write_table, write_thunderstorm_csv)
from stormfold.io.picasso import STANDIN_KEY as STANDIN
from stormfold.io.thunderstorm import column_to_header, header_to_column
from stormfold.table import make_table

CANONICAL_HEADER = ('"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]",'
                    '"offset [photon]","bkgstd [photon]","uncertainty [nm]"')


def _table(n=50, seed=0, **extra):
    rng = np.random.default_rng(seed)
    return make_table(rng.integers(0, 20, n), rng.uniform(0, 6400, n), rng.uniform(0, 6400, n),
                      photons=rng.uniform(500, 3000, n), sigma_nm=rng.uniform(90, 130, n),
                      bg=rng.uniform(0, 50, n), uncertainty_nm=rng.uniform(5, 30, n), **extra)


def _float32_atol(px, table):
    """Largest rounding error of a position stored as float32 pixels, in nm."""
    biggest = max(table["x_nm"].max(), table["y_nm"].max()) / px
    return px * float(np.spacing(np.float32(biggest)))


def _picasso_warning():
    return pytest.warns(UserWarning, match="different pixel sizes")


# --------------------------------------------------------------------------- ThunderSTORM
def test_csv_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(1)
    table = _table(confidence=rng.random(50), bkgstd_photon=rng.random(50),
                   z_nm=rng.normal(0, 300, 50), chi2=rng.random(50))
    write_thunderstorm_csv(tmp_path / "a.csv", table)
    back = read_thunderstorm_csv(tmp_path / "a.csv")
    expected = table.copy()
    expected.insert(0, "id", np.arange(1, 51))  # ids 1..N when the table has none
    pd.testing.assert_frame_equal(back[expected.columns], expected)
    header = (tmp_path / "a.csv").read_text().splitlines()[0]
    assert header == ('"id","frame","x [nm]","y [nm]","sigma [nm]","intensity [photon]",'
                      '"offset [photon]","bkgstd [photon]","uncertainty [nm]",'
                      '"confidence [a.u.]","z [nm]","chi2"')
    write_thunderstorm_csv(tmp_path / "b.csv", back)
    assert (tmp_path / "b.csv").read_text() == (tmp_path / "a.csv").read_text()


def test_csv_frames_are_one_based_in_the_file(tmp_path):
    write_thunderstorm_csv(tmp_path / "t.csv", make_table([0, 4], [1.5, 2.0], [3.0, 4.25]))
    lines = (tmp_path / "t.csv").read_text().splitlines()
    assert lines == ['"id","frame","x [nm]","y [nm]"', "1,1,1.5,3.0", "2,5,2.0,4.25"]


def test_header_names_are_reversible():
    for header in ("bkgstd [photon]", "uncertainty_z [nm]", "foo [a.u.]", "chi2", "odd name!",
                   "x [px]", "weird [furlong]"):
        assert column_to_header(header_to_column(header)) == header
    assert header_to_column("bkgstd [photon]") == "bkgstd_photon"
    assert header_to_column("uncertainty_xy [nm]") == "uncertainty_nm"


def test_real_ground_truth_csv(shared_data, tmp_path):
    path = shared_data / "deepstorm-demo1-train" / "positions_demo1.csv"
    table = read_thunderstorm_csv(path)
    assert len(table) == 4956
    assert (table["frame"].min(), table["frame"].max()) == (0, 19)
    assert table["frame"].dtype == np.int64 and table["bg"].dtype == np.float64
    assert list(table.columns) == ["id", "frame", "x_nm", "y_nm", "sigma_nm", "photons", "bg",
                                   "bkgstd_photon"]
    assert table.loc[0, "x_nm"] == 67.843 and table.loc[0, "sigma_nm"] == 111.28713
    write_thunderstorm_csv(tmp_path / "copy.csv", table)
    pd.testing.assert_frame_equal(read_thunderstorm_csv(tmp_path / "copy.csv"), table)
    original_header = path.read_text().splitlines()[0]
    assert (tmp_path / "copy.csv").read_text().splitlines()[0] == original_header


def test_csv_subset_and_aliases(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text('"frame","x [nm]","y [nm]","uncertainty_xy [nm]"\n3,10,20,7\n1,5,6,8\n')
    table = read_thunderstorm_csv(path)
    assert list(table.columns) == ["frame", "x_nm", "y_nm", "uncertainty_nm"]
    assert table["frame"].tolist() == [2, 0]
    assert table["uncertainty_nm"].dtype == np.float64


def test_csv_header_only_gives_empty_table(tmp_path):
    path = tmp_path / "e.csv"
    path.write_text(CANONICAL_HEADER + "\n")
    table = read_thunderstorm_csv(path)
    assert len(table) == 0 and table["frame"].dtype == np.int64
    write_thunderstorm_csv(tmp_path / "e2.csv", table)
    assert (tmp_path / "e2.csv").read_text().strip() == CANONICAL_HEADER


@pytest.mark.parametrize("content, needle", [
    ('"frame","y [nm]"\n1,2\n', '"x [nm]"'),
    ('"x [nm]","y [nm]"\n1,2\n', '"frame"'),
    ('"frame","x [px]","y [px]"\n1,2,3\n', "pass --pixel-size"),
    ('"frame","x [nm]","y [nm]"\n0,2,3\n', "1-based"),
    ('"frame","x [nm]","y [nm]"\n1,abc,3\n', "non-numeric"),
    ('"frame","x [nm]","y [nm]","intensity [photon]"\n1,2,3,lots\n', "intensity [photon]"),
    ("", "not a readable CSV"),
])
def test_bad_csv(tmp_path, content, needle):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError) as info:
        read_thunderstorm_csv(path)
    assert needle in str(info.value) and "bad.csv" in str(info.value)


def test_missing_csv(tmp_path):
    with pytest.raises(UserError, match="not found.*none.csv"):
        read_thunderstorm_csv(tmp_path / "none.csv")


# --------------------------------------------------------------------------- Picasso
def test_picasso_pixel_convention_by_hand(tmp_path):
    table = make_table([0, 3], [250.0, 50.0], [50.0, 1049.0], sigma_nm=[120.0, 100.0],
                       uncertainty_nm=[10.0, 20.0])
    path = tmp_path / "hand.hdf5"
    write_picasso_hdf5(path, table, 100.0, width_px=16, height_px=12, n_frames=5)
    with h5py.File(path) as fh:
        locs = fh["locs"][()]
    assert locs.dtype["frame"] == np.uint32 and locs.dtype["x"] == np.float32
    # x = 250 nm is 2.5 pixels from the corner: the centre of pixel 2, Picasso's x = 2.0
    assert locs["x"].tolist() == [2.0, 0.0]
    assert locs["y"].tolist() == pytest.approx([0.0, 9.99])
    assert locs["sx"].tolist() == locs["sy"].tolist() == pytest.approx([1.2, 1.0])
    assert locs["lpx"].tolist() == pytest.approx([0.1, 0.2])
    # photons and bg were not measured: the fields are left out, not filled with 0
    assert locs.dtype.names == ("frame", "x", "y", "sx", "sy", "lpx", "lpy")
    assert locs["frame"].tolist() == [0, 3]
    sidecar = next(yaml.safe_load_all((tmp_path / "hand.yaml").read_text()))
    assert sidecar["Width"] == 16 and sidecar["Height"] == 12 and sidecar["Frames"] == 5
    assert sidecar["Pixelsize"] == 100 and sidecar["Generated by"].startswith("stormfold ")
    back, info = read_picasso_hdf5(path)
    assert info["pixel_size_nm"] == 100.0 and info["width_px"] == 16
    assert back["x_nm"].tolist() == [250.0, 50.0]


def test_picasso_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    table = _table(confidence=rng.random(50), id=np.arange(7, 57), detections=np.ones(50, int))
    path = tmp_path / "r.hdf5"
    write_picasso_hdf5(path, table, 160.0, 40, 40, info={"Note": "test"})
    back, info = read_picasso_hdf5(path)
    assert info["extra_fields"] == ["confidence", "id", "detections"]
    assert next(yaml.safe_load_all((tmp_path / "r.yaml").read_text()))["Note"] == "test"
    assert back["frame"].tolist() == table["frame"].tolist()
    assert back["id"].tolist() == table["id"].tolist() and back["id"].dtype == np.int64
    atol = _float32_atol(160.0, table)
    for column in ("x_nm", "y_nm"):
        np.testing.assert_allclose(back[column], table[column], rtol=0, atol=atol)
    for column in ("photons", "sigma_nm", "bg", "uncertainty_nm", "confidence"):
        np.testing.assert_allclose(back[column], table[column], rtol=1e-6)


def test_picasso_linked_events_use_picassos_len_and_n(tmp_path):
    """A linked table's detections and last frame are written as Picasso's own linking
    writes them, ``n`` and ``len`` = last − first + 1 (its dark-time and qPAINT analyses
    read ``len``), and read back as the table's columns."""
    from stormfold.postprocess.link import link

    frames = [0, 1, 2, 5, 9, 10]
    x = [100.0, 102.0, 101.0, 900.0, 400.0, 401.0]
    linked = link(make_table(frames, x, [300.0] * 6, photons=[1000.0] * 6),
                  radius_nm=50.0, max_dark=1).table
    assert linked["detections"].tolist() == [3, 1, 2]
    assert linked["last_frame"].tolist() == [2, 5, 10]
    path = tmp_path / "linked.hdf5"
    write_picasso_hdf5(path, linked, 100.0, 16, 16)
    with h5py.File(path) as fh:
        locs = fh["locs"][()]
    assert "detections" not in locs.dtype.names and "last_frame" not in locs.dtype.names
    assert locs["n"].tolist() == [3, 1, 2] and locs["len"].tolist() == [3, 1, 2]
    assert locs.dtype["len"] == np.int32 and locs.dtype["n"] == np.int32
    back, _ = read_picasso_hdf5(path)
    assert back["detections"].tolist() == [3, 1, 2]
    assert back["last_frame"].tolist() == [2, 5, 10]
    assert "n" not in back.columns and "len" not in back.columns


def test_real_picasso_file(shared_data, tmp_path, picasso_keeps):
    path = shared_data / "picasso-testdata" / "testdata_locs.hdf5"
    with _picasso_warning():  # Camera.Pixelsize 160 (simulation) vs Localize's 130
        table, info = read_picasso_hdf5(path)
    assert len(table) == 564
    assert info["pixel_size_nm"] == 160.0 and info["n_frames"] == 1000
    assert info["extra_fields"] == ["net_gradient", "likelihood", "iterations"]
    with h5py.File(path) as fh:
        raw = fh["locs"][0]
    x_px = float(raw["x"])
    assert x_px == pytest.approx(5.618027, abs=1e-6)
    assert table.loc[0, "x_nm"] == pytest.approx((5.618027 + 0.5) * 160.0, abs=1e-3)
    assert table.loc[0, "x_nm"] == (x_px + 0.5) * 160.0
    assert table.loc[0, "sigma_nm"] == pytest.approx(float(raw["sx"]) * 160.0)
    assert table.loc[0, "frame"] == int(raw["frame"]) == 11
    # write it back: the fields Picasso wrote survive, positions to float32 precision
    write_picasso_hdf5(tmp_path / "copy.hdf5", table, 160.0, 32, 32, n_frames=1000)
    copy, _ = read_picasso_hdf5(tmp_path / "copy.hdf5")
    np.testing.assert_allclose(copy["x_nm"], table["x_nm"], rtol=0,
                               atol=_float32_atol(160.0, table))
    assert copy["iterations"].tolist() == table["iterations"].tolist()
    with h5py.File(tmp_path / "copy.hdf5") as fh:
        rewritten = fh["locs"][()]
    assert set(rewritten.dtype.names) == set(raw.dtype.names)  # nothing dropped, nothing added
    assert picasso_keeps(rewritten).all()
    assert read_picasso_hdf5(path, pixel_size_nm=100.0)[1]["pixel_size_nm"] == 100.0


def test_picasso_per_axis_precision_round_trip(tmp_path):
    """lpx/lpy come from the per-axis uncertainties when the table has them (gridnet), and
    read back as the same three columns, also through a CSV (review 12 #6: lpx = lpy = the
    combined value); without per-axis columns lpx = lpy and none are invented on reading."""
    sx, sy = np.array([10.0, 20.0, 7.0]), np.array([12.0, 20.0, np.nan])
    combined = np.sqrt(0.5 * (sx ** 2 + sy ** 2))
    combined[2] = 9.0  # a row without σy: both fields fall back to the combined value
    table = make_table([0, 1, 1], [150.0, 250.0, 900.0], [150.0, 250.0, 400.0],
                       uncertainty_nm=combined, uncertainty_x_nm=sx, uncertainty_y_nm=sy)
    write_picasso_hdf5(tmp_path / "g.hdf5", table, 100.0, 16, 16)
    with h5py.File(tmp_path / "g.hdf5") as fh:
        locs = fh["locs"][()]
    assert locs.dtype.names == ("frame", "x", "y", "lpx", "lpy")  # no duplicate extras
    np.testing.assert_allclose(locs["lpx"], [0.10, 0.20, 0.07], rtol=1e-6)
    np.testing.assert_allclose(locs["lpy"], [0.12, 0.20, 0.09], rtol=1e-6)
    back, _ = read_picasso_hdf5(tmp_path / "g.hdf5")
    np.testing.assert_allclose(back["uncertainty_x_nm"], [10.0, 20.0, 7.0], rtol=1e-6)
    np.testing.assert_allclose(back["uncertainty_y_nm"], [12.0, 20.0, 9.0], rtol=1e-6)
    np.testing.assert_allclose(back["uncertainty_nm"][:2], combined[:2], rtol=1e-6)
    # CSV → HDF5 → CSV keeps the per-axis columns
    write_thunderstorm_csv(tmp_path / "g.csv", table.iloc[:2])
    convert_table(tmp_path / "g.csv", tmp_path / "h.hdf5", pixel_size_nm=100.0)
    convert_table(tmp_path / "h.hdf5", tmp_path / "h.csv")
    again = read_thunderstorm_csv(tmp_path / "h.csv")
    for column in ("uncertainty_nm", "uncertainty_x_nm", "uncertainty_y_nm"):
        np.testing.assert_allclose(again[column], table[column][:2], rtol=1e-6)
    # a Picasso file with lpx ≠ lpy (not from stormfold): the RMS and both axes
    plain = make_table([0], [150.0], [150.0], uncertainty_nm=[5.0])
    write_picasso_hdf5(tmp_path / "p.hdf5", plain, 100.0, 8, 8)
    back, _ = read_picasso_hdf5(tmp_path / "p.hdf5")
    assert list(back.columns) == ["frame", "x_nm", "y_nm", "uncertainty_nm"]
    with h5py.File(tmp_path / "p.hdf5", "r+") as fh:
        locs = fh["locs"][()]
        locs["lpx"], locs["lpy"] = 0.03, 0.04
        fh["locs"][...] = locs
    back, _ = read_picasso_hdf5(tmp_path / "p.hdf5")
    np.testing.assert_allclose(back["uncertainty_nm"], [np.sqrt(12.5)], rtol=1e-6)
    np.testing.assert_allclose(back[["uncertainty_x_nm", "uncertainty_y_nm"]].to_numpy(),
                               [[3.0, 4.0]], rtol=1e-6)


def test_picasso_never_writes_unmeasured_values(tmp_path, picasso_keeps):
    """Positions only (SOFI, unrolled-like tables): Picasso's required lpx/lpy are a named
    stand-in, the optional fields are absent, and every row survives Picasso's checks."""
    table = make_table([0, 2, 2], [150.0, 1234.0, 3000.0], [50.0, 777.0, 2950.0],
                       confidence=[0.2, 0.5, 0.9])
    path = tmp_path / "pos.hdf5"
    write_picasso_hdf5(path, table, 100.0, 32, 32)
    with h5py.File(path) as fh:
        locs = fh["locs"][()]
    assert locs.dtype.names == ("frame", "x", "y", "lpx", "lpy", "confidence")
    assert locs["lpx"].tolist() == locs["lpy"].tolist() == pytest.approx([12 ** -0.5] * 3)
    assert picasso_keeps(locs).all()
    first = next(yaml.safe_load_all((tmp_path / "pos.yaml").read_text()))
    assert "not measured" in first["Stand-in fields"]["lpx"] and "Estimated fields" not in first
    back, info = read_picasso_hdf5(path)
    assert "uncertainty_nm" not in back.columns and "photons" not in back.columns
    assert info["columns_estimated"] == {}
    # rows without an uncertainty get the stand-in, the others keep theirs
    partial = table.assign(uncertainty_nm=[10.0, np.nan, 30.0])
    write_picasso_hdf5(tmp_path / "part.hdf5", partial, 100.0, 32, 32)
    with h5py.File(tmp_path / "part.hdf5") as fh:
        assert fh["locs"]["lpx"].tolist() == pytest.approx([0.1, 12 ** -0.5, 0.3])
    assert "1 of 3 rows" in next(yaml.safe_load_all((tmp_path / "part.yaml").read_text()))[
        "Stand-in fields"]["lpy"]


def test_picasso_estimated_fields_round_trip(tmp_path):
    table = make_table([0, 1], [150.0, 250.0], [150.0, 250.0], photons=[2200.0, 2300.0],
                       uncertainty_nm=[8.0, 12.0], confidence=[0.3, 0.4])
    how = {"photons": "calibrated estimate", "uncertainty_nm": "calibrated RMSE"}
    write_picasso_hdf5(tmp_path / "e.hdf5", table, 100.0, 8, 8, estimated=how)
    first = next(yaml.safe_load_all((tmp_path / "e.yaml").read_text()))
    assert first["Estimated fields"] == {"photons": "calibrated estimate",
                                         "lpx": "calibrated RMSE", "lpy": "calibrated RMSE"}
    assert STANDIN not in first
    back, info = read_picasso_hdf5(tmp_path / "e.hdf5")
    assert info["columns_estimated"] == how
    np.testing.assert_allclose(back["uncertainty_nm"], [8.0, 12.0], rtol=1e-6)
    # a Picasso → Picasso conversion keeps the description
    convert_table(tmp_path / "e.hdf5", tmp_path / "f.hdf5")
    assert next(yaml.safe_load_all((tmp_path / "f.yaml").read_text()))["Estimated fields"] == \
        first["Estimated fields"]


def test_convert_carries_estimated_columns_from_run_yaml(tmp_path):
    table = make_table([0], [150.0], [150.0], photons=[2200.0], uncertainty_nm=[8.0])
    write_thunderstorm_csv(tmp_path / "localizations.csv", table)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(
        {"pixel_size_nm": 100.0, "columns_estimated": {"photons": "Deep-STORM estimate"}}))
    convert_table(tmp_path / "localizations.csv", tmp_path / "l.hdf5")
    first = next(yaml.safe_load_all((tmp_path / "l.yaml").read_text()))
    assert first["Estimated fields"] == {"photons": "Deep-STORM estimate"}


def test_picasso_bad_inputs(tmp_path):
    text = tmp_path / "text.hdf5"
    text.write_text("nope")
    with pytest.raises(UserError, match=r"text\.hdf5: not an HDF5 file"):
        read_picasso_hdf5(text)
    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as fh:
        fh["data"] = np.zeros(3)
    with pytest.raises(UserError, match=r"other\.hdf5: no /locs"):
        read_picasso_hdf5(other)
    lonely = tmp_path / "lonely.hdf5"
    with h5py.File(lonely, "w") as fh:
        fh["locs"] = np.zeros(2, dtype=[("frame", "u4"), ("x", "f4"), ("y", "f4")])
    with pytest.raises(UserError, match=r"lonely\.hdf5: pixel size unknown.*--pixel-size"):
        read_picasso_hdf5(lonely)
    assert len(read_picasso_hdf5(lonely, pixel_size_nm=100)[0]) == 2
    noxy = tmp_path / "noxy.hdf5"
    with h5py.File(noxy, "w") as fh:
        fh["locs"] = np.zeros(2, dtype=[("frame", "u4"), ("x", "f4")])
    with pytest.raises(UserError, match=r"noxy\.hdf5.*lacks field\(s\) y"):
        read_picasso_hdf5(noxy, pixel_size_nm=100)


# --------------------------------------------------------------------------- dispatch
def test_read_write_table_by_extension(tmp_path):
    table = _table()
    write_table(tmp_path / "t.csv", table)
    write_table(tmp_path / "t.h5", table, pixel_size_nm=100.0)
    assert len(read_table(tmp_path / "t.csv")) == len(read_table(tmp_path / "t.h5")) == 50
    sidecar = next(yaml.safe_load_all((tmp_path / "t.yaml").read_text()))
    assert sidecar["Width"] == int(np.ceil(table["x_nm"].max() / 100.0))
    assert sidecar["Frames"] == table["frame"].max() + 1
    with pytest.raises(UserError, match=r"t\.txt: unknown localization table format"):
        write_table(tmp_path / "t.txt", table)
    with pytest.raises(UserError, match="--pixel-size"):
        write_table(tmp_path / "u.hdf5", table)
    assert not (tmp_path / "u.hdf5").exists()


def test_convert_csv_hdf5_csv(tmp_path):
    table = make_table([0, 1, 1], [250.0, 1234.5678, 6399.0], [50.0, 77.7, 3200.0],
                       photons=[1000.0, 2000.0, 3000.0], sigma_nm=[110.0, 120.0, 130.0])
    write_thunderstorm_csv(tmp_path / "in.csv", table)
    convert_table(tmp_path / "in.csv", tmp_path / "mid.hdf5", pixel_size_nm=100.0)
    with h5py.File(tmp_path / "mid.hdf5") as fh:
        assert fh["locs"]["x"][0] == 2.0 and fh["locs"]["y"][0] == 0.0
    assert next(yaml.safe_load_all((tmp_path / "mid.yaml").read_text()))["Width"] == 64
    back = convert_table(tmp_path / "mid.hdf5", tmp_path / "out.csv")
    again = read_thunderstorm_csv(tmp_path / "out.csv")
    pd.testing.assert_frame_equal(back, again, check_like=True)  # column order differs
    atol = _float32_atol(100.0, table)
    np.testing.assert_allclose(again["x_nm"], table["x_nm"], rtol=0, atol=atol)
    np.testing.assert_allclose(again["y_nm"], table["y_nm"], rtol=0, atol=atol)
    assert again["frame"].tolist() == [0, 1, 1]
    np.testing.assert_allclose(again["sigma_nm"], table["sigma_nm"], rtol=1e-6)


def test_convert_uses_simulation_yaml(tmp_path):
    write_thunderstorm_csv(tmp_path / "truth.csv", _table())
    (tmp_path / "simulation.yaml").write_text(yaml.safe_dump(
        {"n_frames": 30, "n_rows": 70, "n_cols": 80, "pixel_size_nm": 100.0}))
    convert_table(tmp_path / "truth.csv", tmp_path / "truth.hdf5")
    sidecar = next(yaml.safe_load_all((tmp_path / "truth.yaml").read_text()))
    assert (sidecar["Pixelsize"], sidecar["Width"], sidecar["Height"], sidecar["Frames"]) == \
        (100, 80, 70, 30)


def test_convert_needs_pixel_size(tmp_path):
    write_thunderstorm_csv(tmp_path / "in.csv", _table())
    with pytest.raises(UserError, match=r"in\.csv: pixel size unknown.*--pixel-size"):
        convert_table(tmp_path / "in.csv", tmp_path / "out.hdf5")
    assert not (tmp_path / "out.hdf5").exists() and not (tmp_path / "out.yaml").exists()
    with pytest.raises(UserError, match="would overwrite the input file"):
        convert_table(tmp_path / "in.csv", tmp_path / "." / "in.csv")


# --------------------------------------------------------------------------- CLI
def test_cli_convert_round_trip(tmp_path, run_cli):
    table = _table()
    write_thunderstorm_csv(tmp_path / "in.csv", table)
    code, out, err = run_cli("convert", tmp_path / "in.csv", tmp_path / "out.hdf5",
                             "--pixel-size", "100", "--width", "64", "--height", "64")
    assert code == 0, err
    assert "out.hdf5" in out and "50 localizations" in out
    code, out, err = run_cli("convert", tmp_path / "out.hdf5", tmp_path / "back.csv")
    assert code == 0, err
    back = read_thunderstorm_csv(tmp_path / "back.csv")
    np.testing.assert_allclose(back["x_nm"], table["x_nm"], rtol=0,
                               atol=_float32_atol(100.0, table))


def test_cli_convert_bad_input(tmp_path, run_cli):
    bad = tmp_path / "bad.csv"
    bad.write_text('"id","intensity [photon]"\n1,100\n')
    code, out, err = run_cli("convert", bad, tmp_path / "out.hdf5", "--pixel-size", "100")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "bad.csv" in err and '"frame"' in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]
    code, _, err = run_cli("convert", bad, bad)
    assert code == 2 and "input file" in err
    code, _, err = run_cli("convert", bad, tmp_path / "x.parquet")
    assert code == 2 and "unknown localization table format" in err


def test_thunderstorm_writer_appends_chunks_and_resumes(tmp_path):
    from stormfold.io.thunderstorm import ThunderstormCsvWriter, read_thunderstorm_csv
    from stormfold.table import make_table

    a = make_table([0, 0], [10.0, 20.0], [1.0, 2.0], confidence=[0.5, 0.25])
    b = make_table([3], [30.0], [3.0], confidence=[0.75])
    c = make_table([5, 6], [40.0, 50.0], [4.0, 5.0], confidence=[1.0, 0.125])
    path = tmp_path / "locs.csv"
    writer = ThunderstormCsvWriter(path)
    writer.append(a)
    writer.append(b)
    writer.abort()  # a crash: nothing published, the partial file remains
    assert not path.exists() and writer.partial_path.exists()
    with ThunderstormCsvWriter(path, resume=True) as again:
        again.append(c)
    table = read_thunderstorm_csv(path)
    assert list(table["id"]) == [1, 2, 3, 4, 5]
    assert list(table["frame"]) == [0, 0, 3, 5, 6]
    assert list(table["confidence"]) == [0.5, 0.25, 0.75, 1.0, 0.125]
    assert not writer.partial_path.exists()


# --------------------------------------------------------------------------- other tools' CSV
@pytest.mark.parametrize("x, y", [
    ("x [nm]", "y [nm]"), ("x_nm", "y_nm"), ("x (nm)", "y (nm)"), ("xnm", "ynm"),
    ("X [nm]", "Y [nm]"), ("X_NM", "Y_NM"), ("X (nm)", "Y (nm)"), ("Xnm", "Ynm"), ("x[nm]", "y[nm]"),
])
@pytest.mark.parametrize("frame", ["frame", "Frame", "FRAME", "frame_ix"])
def test_csv_position_and_frame_aliases(tmp_path, x, y, frame):
    path = tmp_path / "other.csv"
    pd.DataFrame({frame: [1, 4, 4], x: [10.5, 20.0, 30.25], y: [1.0, 2.0, 3.5],
                  "photons": [100.0, 200.0, 300.0]}).to_csv(path, index=False)
    table = read_table(path, frame_base=1)
    assert table["x_nm"].tolist() == [10.5, 20.0, 30.25]
    assert table["y_nm"].tolist() == [1.0, 2.0, 3.5]
    assert table["photons"].tolist() == [100.0, 200.0, 300.0]
    assert table["frame"].tolist() == [0, 3, 3]


@pytest.mark.parametrize("x, y", [("x [px]", "y [px]"), ("x_pix", "y_pix"), ("X_PIX", "Y_PIX"),
                                  ("x (px)", "y (px)"), ("x_px", "y_px"), ("xpix", "ypix")])
def test_csv_positions_in_pixels_need_a_pixel_size(tmp_path, x, y):
    path = tmp_path / "pix.csv"
    pd.DataFrame({"frame_ix": [0, 1], x: [1.5, 20.0], y: [0.25, 3.0]}).to_csv(path, index=False)
    with pytest.raises(UserError, match=r"in pixels.*--pixel-size"):
        read_table(path)
    table = read_table(path, pixel_size_nm=160.0)
    # ThunderSTORM's pixel units: origin at the pixel corner, x_nm = x_px · px
    assert table["x_nm"].tolist() == [240.0, 3200.0] and table["y_nm"].tolist() == [40.0, 480.0]
    (tmp_path / "simulation.yaml").write_text("pixel_size_nm: 100.0\n")
    assert read_table(path)["x_nm"].tolist() == [150.0, 2000.0]  # from the YAML next to it


def test_csv_thunderstorm_pixel_export_is_one_based(tmp_path):
    path = tmp_path / "ts_px.csv"
    path.write_text('"id","frame","x [px]","y [px]","sigma [px]"\n1,1,2.5,3.0,1.1\n2,7,4.0,5.0,1.2\n')
    table = read_thunderstorm_csv(path, pixel_size_nm=100.0)
    assert table["frame"].tolist() == [0, 6]
    assert table["x_nm"].tolist() == [250.0, 400.0]
    assert table["sigma_px"].tolist() == [1.1, 1.2]  # other pixel columns kept as they are


def test_csv_frame_base_inference(tmp_path):
    from stormfold.io.thunderstorm import FrameBaseWarning

    path = tmp_path / "smap.csv"
    # SMAP-like: 1-based frames, xnm/ynm, phot and locprecnm
    pd.DataFrame({"frame": [1, 1, 2], "xnm": [5.0, 6.0, 7.0], "ynm": [1.0, 2.0, 3.0],
                  "phot": [900.0, 800.0, 700.0], "locprecnm": [9.0, 8.0, 7.0]}).to_csv(path, index=False)
    with pytest.warns(FrameBaseWarning, match=r"frames start at 1.*1-based \(a guess\).*--frame-base"):
        table = read_table(path)
    assert table["frame"].tolist() == [0, 0, 1]
    assert table["photons"].tolist() == [900.0, 800.0, 700.0]
    assert table["uncertainty_nm"].tolist() == [9.0, 8.0, 7.0]
    # stated: no guess, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_table(path, frame_base=1)["frame"].tolist() == [0, 0, 1]
        assert read_table(path, frame_base=0)["frame"].tolist() == [1, 1, 2]
        # the movie length next to the file: a last frame equal to it can only be 1-based
        (tmp_path / "simulation.yaml").write_text("pixel_size_nm: 100.0\nn_frames: 2\n")
        assert read_table(path)["frame"].tolist() == [0, 0, 1]
    # a frame 0 in the file: 0-based, certain (even with a look-alike of ThunderSTORM's header)
    pd.DataFrame({"Frame": [0, 5], "X [nm]": [1.0, 2.0], "Y [nm]": [1.0, 2.0]}).to_csv(
        tmp_path / "zero_based.csv", index=False)
    assert read_table(tmp_path / "zero_based.csv")["frame"].tolist() == [0, 5]
    # frame_ix is an index: 0-based by its name
    pd.DataFrame({"frame_ix": [4, 5], "x_nm": [1.0, 2.0], "y_nm": [1.0, 2.0]}).to_csv(
        tmp_path / "decode.csv", index=False)
    assert read_table(tmp_path / "decode.csv")["frame"].tolist() == [4, 5]
    with pytest.raises(UserError, match=r"frame numbers must be >= 1 \(frame base 1\)"):
        pd.DataFrame({"frame": [0, 5], "x_nm": [1.0, 2.0], "y_nm": [1.0, 2.0]}).to_csv(
            tmp_path / "zero.csv", index=False)
        read_table(tmp_path / "zero.csv", frame_base=1)


def test_csv_unknown_layout_names_found_and_expected_columns(tmp_path):
    path = tmp_path / "mystery.csv"
    pd.DataFrame({"t": [1], "pos_a": [2.0], "pos_b": [3.0]}).to_csv(path, index=False)
    with pytest.raises(UserError) as info:
        read_table(path)
    message = str(info.value)
    assert "\n" not in message and "mystery.csv" in message
    assert 'found "t", "pos_a", "pos_b"' in message
    for expected in ('"frame"', '"frame_ix"', '"x [nm]"', '"x_nm"', '"x (nm)"', '"xnm"',
                     '"x [px]"', '"x_pix"'):
        assert expected in message
    assert "no frame/x/y column" in message
    pd.DataFrame({"frame": [1], "x_nm": [2.0], "y [px]": [3.0]}).to_csv(path, index=False)
    with pytest.raises(UserError, match="different units"):
        read_table(path)


def test_csv_from_other_tools_is_written_in_thunderstorm_layout(tmp_path, run_cli):
    src = tmp_path / "other.csv"
    pd.DataFrame({"Frame": [0, 2], "x (nm)": [10.0, 20.0], "y (nm)": [30.0, 40.0]}).to_csv(
        src, index=False)
    code, _, err = run_cli("convert", src, tmp_path / "ts.csv")
    assert code == 0 and err == ""
    lines = (tmp_path / "ts.csv").read_text().splitlines()
    assert lines == ['"id","frame","x [nm]","y [nm]"', "1,1,10.0,30.0", "2,3,20.0,40.0"]
    # a guessed base is one warning line on the command line (its own process: pytest records
    # warnings instead of printing them); --frame-base states it
    pd.DataFrame({"frame": [1, 2], "x_nm": [1.0, 2.0], "y_nm": [3.0, 4.0]}).to_csv(src, index=False)
    done = subprocess.run([sys.executable, "-m", "stormfold", "convert", str(src),
                           str(tmp_path / "g.csv")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr.count("\n") == 1
    assert done.stderr.startswith("stormfold convert: warning: ") and "a guess" in done.stderr
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, _, err = run_cli("convert", src, tmp_path / "s.csv", "--frame-base", "0")
    assert code == 0 and err == ""
    assert read_thunderstorm_csv(tmp_path / "s.csv")["frame"].tolist() == [1, 2]


def test_cli_convert_refuses_an_image_smaller_than_the_data(tmp_path, run_cli):
    table = _table()
    write_thunderstorm_csv(tmp_path / "in.csv", table)
    reach = int(np.ceil(table["x_nm"].max() / 100.0))
    code, _, err = run_cli("convert", tmp_path / "in.csv", tmp_path / "out.hdf5",
                           "--pixel-size", "100", "--width", str(reach - 1), "--height", "500")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"image width of {reach - 1} px" in err and f"give at least {reach}" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    # A size beyond any camera (a mistyped number) is refused too.
    code, _, err = run_cli("convert", tmp_path / "in.csv", tmp_path / "out.hdf5",
                           "--pixel-size", "100", "--width", "500", "--height", "2000000")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "image height of 2000000 px" in err and "at most 100000" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_convert_to_csv_says_an_image_size_is_not_used(tmp_path):
    table = _table()
    write_thunderstorm_csv(tmp_path / "in.csv", table)
    with pytest.warns(UserWarning, match="has no image size: the width and height given"):
        convert_table(tmp_path / "in.csv", tmp_path / "out.csv", width_px=64)
    pd.testing.assert_frame_equal(read_thunderstorm_csv(tmp_path / "out.csv"),
                                  read_thunderstorm_csv(tmp_path / "in.csv"))


def test_convert_grows_a_recorded_image_size_to_the_data(tmp_path):
    # Drift-corrected positions may reach past the camera frame recorded next to the CSV.
    table = _table()
    table.loc[0, "x_nm"] = 8_250.0
    write_thunderstorm_csv(tmp_path / "in.csv", table)
    (tmp_path / "run.yaml").write_text("pixel_size_nm: 100\nn_cols: 80\nn_rows: 200\n")
    convert_table(tmp_path / "in.csv", tmp_path / "out.hdf5")
    sidecar = next(yaml.safe_load_all((tmp_path / "out.yaml").read_text()))
    assert (sidecar["Width"], sidecar["Height"]) == (83, 200)


def test_picasso_sidecar_counts_the_rows_picasso_drops(tmp_path):
    """Picasso's loader drops x or y ≤ 0 (its pixel centres), x ≥ Width, y ≥ Height and
    NaN rows without a word (review 18, D3): the sidecar counts them, and a warning says
    so when they are more than 5 % or hold a NaN."""
    from stormfold.io.picasso import DROPPED_KEY, write_picasso_hdf5

    table = make_table(np.zeros(100, int), np.linspace(100, 6300, 100),
                       np.full(100, 3000.0), uncertainty_nm=np.full(100, 10.0))
    table.loc[0, "x_nm"] = 30.0      # within half a pixel of the left edge: x = -0.2 px
    table.loc[1, "y_nm"] = 6_480.0  # y = 64.3 px ≥ Height 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 2 % : recorded, not said
        write_picasso_hdf5(tmp_path / "a.hdf5", table, 100.0, 64, 64)
    sidecar = next(yaml.safe_load_all((tmp_path / "a.yaml").read_text()))
    assert sidecar[DROPPED_KEY]["total"] == 2
    assert sidecar[DROPPED_KEY]["x ≥ Width (64) or y ≥ Height (64)"] == 1
    table.loc[2:9, "x_nm"] = 10.0
    with pytest.warns(UserWarning, match=r"10 of 100 localizations lie where Picasso drops"):
        write_picasso_hdf5(tmp_path / "b.hdf5", table, 100.0, 64, 64)
    table = make_table(np.zeros(3, int), np.full(3, 500.0), np.full(3, 500.0),
                       photons=np.array([1.0, np.nan, 2.0]))
    with pytest.warns(UserWarning, match="1 with a NaN or infinite value"):
        write_picasso_hdf5(tmp_path / "c.hdf5", table, 100.0, 64, 64)
    assert read_picasso_hdf5(tmp_path / "c.hdf5")[0].shape[0] == 3  # stormfold keeps them


def test_picasso_render_finds_the_pixel_size(tmp_path):
    """Picasso Render and SPINNA read Pixelsize only from a document that has a value
    "Picasso Localize", else use 130 nm (review 18, D2): their rule, applied here."""
    from stormfold.io.picasso import write_picasso_hdf5

    write_picasso_hdf5(tmp_path / "r.hdf5", _table(), 160.0, 64, 64)
    render_px = 130
    for element in yaml.safe_load_all((tmp_path / "r.yaml").read_text()):
        if "Picasso Localize" in element.values() and "Pixelsize" in element:
            render_px = element["Pixelsize"]
    assert render_px == 160
    # stormfold reads the same file without a warning about two pixel sizes.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_picasso_hdf5(tmp_path / "r.hdf5")[1]["pixel_size_nm"] == 160.0


def test_two_pixel_sizes_name_the_one_picasso_render_uses(tmp_path):
    from stormfold.io.metadata import pixel_size_from_documents

    documents = [{"Camera": {"Pixelsize": 160}}, {"Generated by": "Picasso Localize",
                                                   "Pixelsize": 130}]
    with pytest.warns(UserWarning, match="using 160 nm.*Picasso Render would use 130 nm"):
        assert pixel_size_from_documents(documents, "t.yaml") == 160


def test_chained_steps_keep_one_picasso_localize_document(tmp_path, run_cli):
    """Review 19 D3: each post-processing step appended the previous sidecar, whose
    "Picasso Localize" document (an older pixel size) Picasso Render then read last."""
    from stormfold.io.picasso import write_picasso_hdf5

    write_picasso_hdf5(tmp_path / "a.hdf5", _table(), 100.0, 64, 64)
    code, _, err = run_cli("filter", tmp_path / "a.hdf5", "--out", tmp_path / "b.hdf5",
                           "--expr", "photons > 0", "--pixel-size", "160")
    assert code == 0, err
    code, _, err = run_cli("filter", tmp_path / "b.hdf5", "--out", tmp_path / "c.hdf5",
                           "--expr", "photons > 0")
    assert code == 0, err
    documents = list(yaml.safe_load_all((tmp_path / "c.yaml").read_text()))
    localize = [d for d in documents if "Picasso Localize" in d.values()]
    assert len(localize) == 1 and localize[0]["Pixelsize"] == 160
