"""Python-API calls with values of the wrong type get one-line UserErrors (review 15, D9)."""
import numpy as np
import pytest
import tifffile

from stormfold.errors import UserError, whole_number


def test_whole_number():
    assert whole_number(3, "n") == 3 and whole_number(np.int64(4), "n") == 4
    assert whole_number(5.0, "n") == 5 and whole_number(-2, "n", minimum=None) == -2
    for bad in (True, 2.5, "3", None, float("nan"), float("inf"), -1):
        with pytest.raises(UserError, match="n must be a whole number"):
            whole_number(bad, "n")


@pytest.fixture
def movie(tmp_path):
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, np.random.default_rng(0).poisson(110, (6, 16, 16)).astype(np.uint16))
    return path


@pytest.mark.parametrize("kwargs, message", [
    ({"out_dir": 123}, "out_dir must be a file path"),
    ({"start": 1.5}, "a frame number in --frames 1.5: must be a whole number"),
    ({"stop": "3"}, "must be a whole number, got '3'"),
])
def test_localize_movie_argument_types(movie, kwargs, message):
    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine

    with pytest.raises(UserError, match=message):
        localize_movie(movie, load_engine(engine="classic"), pixel_size_nm=100,
                       progress=False, **kwargs)
    assert sorted(p.name for p in movie.parent.iterdir()) == ["m.tif"]


def test_load_engine_argument_types():
    from stormfold.localize.registry import load_engine

    with pytest.raises(UserError, match="model must be a file path.*int 5"):
        load_engine(model=5)
    with pytest.raises(UserError, match="options must be a mapping"):
        load_engine(engine="classic", options=["a"])


def test_render_and_chain_argument_types():
    from stormfold.postprocess import run_chain
    from stormfold.postprocess.render import render
    from stormfold.table import make_table

    table = make_table(np.array([0, 1]), np.array([500.0, 1000.0]), np.array([800.0, 900.0]))
    with pytest.raises(UserError, match="pixel size must be a number of nm"):
        render(table, "ten")
    assert render(table, "100").shape == (10, 11)  # a numeric string is read as a number
    for fov in ("ab", (1,), (5000.0, -1.0)):
        with pytest.raises(UserError, match="run_chain: fov_nm must be"):
            run_chain(table, steps="render", pixel_size_nm=100, fov_nm=fov)
    with pytest.raises(UserError, match="run_chain: n_frames must be a whole number ≥ 1"):
        run_chain(table, steps="render", pixel_size_nm=100, n_frames=-5)


def test_write_tiff_refuses_empty_and_complex(tmp_path):
    from stormfold.io.tiff import write_tiff

    with pytest.raises(UserError, match=r"non-empty 2-D image or 3-D stack.*\(0, 4, 4\)"):
        write_tiff(tmp_path / "e.tif", np.zeros((0, 4, 4)))
    with pytest.raises(UserError, match="real numbers, got complex128"):
        write_tiff(tmp_path / "c.tif", np.zeros((2, 4, 4), complex))
    assert not list(tmp_path.iterdir())


def test_render_counts_what_it_draws(tmp_path):
    """Review 18 D7: localizations outside the field were dropped without a word while the
    record counted them; one exactly at a pixel multiple fell outside the default field."""
    from stormfold.postprocess import run_chain
    from stormfold.postprocess.render import render
    from stormfold.table import make_table

    edge = make_table(np.array([0, 0]), np.array([10.0, 7000.0]), np.array([10.0, 10.0]))
    assert render(edge, 10.0).sum() == 2
    x = np.r_[np.linspace(100, 900, 97), [-5.0, -20.0, 1500.0]]
    table = make_table(np.zeros(100, int), x, np.full(100, 500.0))
    with pytest.warns(UserWarning, match="3 of 100 localizations lie outside the rendered"):
        result = run_chain(table, steps="render", pixel_size_nm=100, fov_nm=(1000.0, 1000.0))
    render_step = [step for step in result.steps if step.step == "render"][0]
    assert render_step.results["n_rendered"] == 97 and render_step.results["n_localizations"] == 100
    assert result.outputs["render"].sum() == 97


def test_dbscan_eps_in_the_wrong_unit_warns():
    from stormfold.postprocess.cluster import dbscan_labels
    from stormfold.table import make_table

    table = make_table(np.zeros(20, int), np.linspace(0, 100, 20), np.zeros(20))
    with pytest.warns(UserWarning, match="eps 0.05 nm is below 1 nm"):
        dbscan_labels(table, 0.05, 3)
