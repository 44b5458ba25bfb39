"""What each engine's table holds, and how it reaches Picasso: measured columns only, no
field filled with 0, every row kept by Picasso's own loading checks (Deep-STORM and SOFI
are covered in test_deepstorm_estimates.py and test_sofi.py)."""
from __future__ import annotations

import h5py
import pytest
import yaml

from stormfold.simulate import build_config, simulate_to_folder


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    folder = tmp_path_factory.mktemp("engines")
    cfg = build_config("thunderstorm", n_frames=4, seed=8,
                       overrides=["n_rows=32", "n_cols=32", "activation.density_per_um2=1.0"])
    simulate_to_folder(cfg, folder, progress=False)
    return folder / "movie.tif"


@pytest.mark.parametrize("engine, fields, standin", [
    (["--engine", "classic"], ("frame", "x", "y", "photons", "sx", "sy", "bg", "lpx", "lpy"),
     False),
    # unrolled: the summed reconstruction is not photons (review 12 #1): an extra field
    (["--model", "builtin:unrolled-isbi2013"], ("frame", "x", "y", "lpx", "lpy"), True),
])
def test_engine_tables_reach_picasso_without_invented_values(movie, tmp_path, run_cli,
                                                             picasso_keeps, engine, fields,
                                                             standin):
    code, _, err = run_cli("localize", movie, *engine, "--out", tmp_path / "loc", "--quiet")
    assert code == 0, err
    run = yaml.safe_load((tmp_path / "loc" / "run.yaml").read_text())
    assert run["columns_estimated"] == {}
    code, _, err = run_cli("convert", tmp_path / "loc" / "localizations.csv",
                           tmp_path / "loc" / "l.hdf5")
    assert code == 0, err
    with h5py.File(tmp_path / "loc" / "l.hdf5") as fh:
        locs = fh["locs"][()]
    assert len(locs) > 0 and locs.dtype.names[:len(fields)] == fields
    assert picasso_keeps(locs).all()
    first = next(yaml.safe_load_all((tmp_path / "loc" / "l.yaml").read_text()))
    assert ("Stand-in fields" in first) == standin and "Estimated fields" not in first
    header = (tmp_path / "loc" / "localizations.csv").read_text().splitlines()[0]
    assert ('"intensity [photon]"' in header) == ("photons" in fields)
    assert ("intensity_au" in locs.dtype.names) == ("photons" not in fields)


def test_report_histograms_show_an_arbitrary_unit_intensity():
    """An unrolled table has ``intensity_au`` and no ``photons`` (review 13): the report shows
    its histogram; a table with neither brightness nor other histogram columns has none."""
    import numpy as np

    from stormfold.report import histograms_figure
    from stormfold.table import make_table

    frame, x, y = np.arange(5), np.linspace(100, 500, 5), np.linspace(100, 500, 5)
    assert histograms_figure(make_table(frame, x, y, intensity_au=np.arange(1.0, 6.0))) \
        is not None
    assert histograms_figure(make_table(frame, x, y)) is None
