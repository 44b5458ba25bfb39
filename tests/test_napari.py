"""The napari plugin: readers, writer, Localize / Simulate / Calibrate widgets (pytest-qt).

Qt runs on its ``offscreen`` platform (tests/conftest.py). napari's canvas needs OpenGL,
which that platform only gets through GLX from an X server: without one, adding an image
layer fails with ``AttributeError: 'NoneType' object has no attribute 'decode'`` in
vispy's ``glGetParameter(GL_EXTENSIONS)``. So :func:`gl_display` uses ``$DISPLAY`` or
starts a private Xvfb when it is installed; without either (or with
``STORMFOLD_TEST_NO_CANVAS=1``) the same tests run on napari's ``ViewerModel``, which has
every layer and event of a viewer but no canvas.
"""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("napari", reason="the napari extra is not installed (pip install -e '.[napari]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")

from stormfold.io.thunderstorm import read_thunderstorm_csv, write_thunderstorm_csv  # noqa: E402
from stormfold.table import make_table  # noqa: E402

pytestmark = pytest.mark.usefixtures("gl_display")
DEMO_FRAMES = 10
WAIT_MS = 240_000  # a busy machine: the jobs take seconds, the bound only stops a hang


def _end_with_parent() -> None:
    """In the child: ask Linux for SIGTERM when the parent (this test process) ends."""
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


@pytest.fixture(scope="session")
def _x_display(request):
    """``(server, display)`` for Qt's GLX, or None: ``(None, $DISPLAY)``, else a private Xvfb
    when installed.

    Qt must see ``DISPLAY`` when the QApplication is made (here, pytest-qt's ``qapp``) and
    when napari makes its first OpenGL context.
    """
    from qtpy.QtWidgets import QApplication

    if os.environ.get("STORMFOLD_TEST_NO_CANVAS"):
        yield None
        return
    if os.environ.get("DISPLAY"):
        yield None, os.environ["DISPLAY"]
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None or QApplication.instance() is not None:
        yield None  # no X server, or Qt already started without one
        return
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write_fd), "-screen", "0", "1600x1000x24",
                             "-nolisten", "tcp"], pass_fds=(write_fd,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=_end_with_parent)
    os.close(write_fd)
    # Xvfb writes the display number and a newline once it is ready; the pipe stays open
    # while it runs (it is a fatal error for Xvfb when its write fails).
    number = b""
    while not number.endswith(b"\n"):
        chunk = os.read(read_fd, 32)
        if not chunk:
            break
        number += chunk
    if not number.strip():
        proc.kill()
        proc.wait()
        os.close(read_fd)
        yield None
        return
    os.environ["DISPLAY"] = display = f":{number.decode().strip()}"
    request.getfixturevalue("qapp")
    try:
        yield proc, display
    finally:
        # Not killed here: killing the server under Qt's live connection makes Xlib end this
        # process with status 1. It gets SIGTERM when this process has ended.
        os.close(read_fd)


@pytest.fixture(scope="module")
def gl_display(_x_display):
    """True when napari can draw, False for the canvas-free mode. A private display is set
    for this module only: the tests after it see the environment they had."""
    if _x_display is None:
        yield False
        return
    server, display = _x_display
    os.environ["DISPLAY"] = display
    yield True
    if server is not None:
        os.environ.pop("DISPLAY", None)


@pytest.fixture
def viewer(request, gl_display):
    """A napari viewer (``make_napari_viewer``), or the viewer model without a canvas."""
    if gl_display:
        return request.getfixturevalue("make_napari_viewer")()
    from napari.components import ViewerModel
    from npe2 import PluginManager

    request.getfixturevalue("qtbot")
    PluginManager.instance().discover()  # napari's Viewer does this; the model alone does not
    return ViewerModel()


def _dock(viewer, widget, qtbot):
    """Put a widget in the viewer's dock (canvas mode) or let qtbot close it."""
    if hasattr(viewer, "window"):
        viewer.window.add_dock_widget(widget, name=f"{type(widget).__name__} (test)")
    else:
        qtbot.addWidget(widget.native)
    return widget


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


@pytest.fixture(autouse=True)
def _fresh_notifications():
    """napari keeps notifications for the whole session: each test sees only its own."""
    from napari.utils.notifications import notification_manager

    notification_manager.records.clear()


def _errors():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records
            if n.severity == NotificationSeverity.ERROR]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The movie of ``stormfold demo`` (10 frames) and what ``stormfold localize`` writes
    for it with the classic engine and the shipped Deep-STORM."""
    from stormfold.cli import main
    from stormfold.demo import demo_simulation
    from stormfold.simulate import simulate_to_folder

    root = tmp_path_factory.mktemp("napari_demo")
    sim = simulate_to_folder(demo_simulation(n_frames=DEMO_FRAMES), root / "sim", progress=False)
    outputs = {}
    for engine, args in (("classic", ["--engine", "classic"]),
                         ("builtin:deepstorm-zerocost", ["--model", "builtin:deepstorm-zerocost"])):
        out = root / engine.replace(":", "_")
        assert main(["localize", str(sim / "movie.tif"), *args, "--out", str(out), "--quiet",
                     "--device", "cpu"]) == 0
        outputs[engine] = read_thunderstorm_csv(out / "localizations.csv")
    return sim, outputs


def _localize_widget(viewer, qtbot, movie_layer, engine):
    from stormfold.napari._localize import LocalizeWidget

    widget = _dock(viewer, LocalizeWidget(viewer), qtbot)
    widget.movie.value = movie_layer
    widget.engine.value = engine
    return widget


# --------------------------------------------------------------------------- Localize
@pytest.mark.parametrize("engine", ["classic", "builtin:deepstorm-zerocost"])
def test_localize_widget_matches_the_cli(viewer, qtbot, demo, engine):
    sim, cli = demo
    movie = viewer.open(sim / "movie.tif", plugin="napari")[0]  # napari's own reader
    assert movie.data.shape == (DEMO_FRAMES, 64, 64)
    widget = _localize_widget(viewer, qtbot, movie, engine)
    # prefilled from the movie's metadata, as the command line does
    assert widget.pixel_size_nm.value == 100.0
    assert {k: float(f.value) for k, f in widget.camera_fields.items()} == {
        "baseline_adu": 100.0, "e_per_adu": 1.0, "em_gain": 1.0, "qe": 1.0}
    widget.render_pixel_nm.value = 20.0
    widget._on_run()
    assert widget.worker is not None  # the job runs in a worker thread
    _wait(qtbot, widget)
    assert _errors() == []
    points, image = viewer.layers[-2], viewer.layers[-1]
    expected = cli[engine]
    assert len(points.data) == len(expected) > 0
    # Points data are (frame, y_nm, x_nm): the same numbers `stormfold localize` wrote
    np.testing.assert_allclose(points.data[:, 2], expected["x_nm"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(points.data[:, 1], expected["y_nm"], rtol=0, atol=1e-6)
    np.testing.assert_array_equal(points.data[:, 0], expected["frame"])
    for column in ("frame", "photons", "uncertainty_nm", "confidence"):
        if column in expected.columns:
            np.testing.assert_allclose(points.features[column], expected[column], rtol=0,
                                       atol=1e-9)
    assert "frame" in points.features.columns
    # The movie is in camera pixels (scale 1): nm layers carry the matching transform.
    np.testing.assert_allclose(points.scale, [1, 0.01, 0.01])
    np.testing.assert_allclose(points.translate, [0, -0.5, -0.5])
    # Rendered at 20 nm over the 6.4 µm field: 320 px of 0.2 camera pixels each.
    assert image.data.shape == (320, 320)
    np.testing.assert_allclose(image.scale, [0.2, 0.2])
    np.testing.assert_allclose(image.translate, [-0.4, -0.4])
    assert image.data.sum() == len(expected)  # histogram: every localization once
    # a localization lands in the render pixel under it and on the movie pixel under it
    f, y, x = points.data[0]
    world = points.data_to_world([f, y, x])
    np.testing.assert_allclose(image.world_to_data(world[1:]), [y / 20 - 0.5, x / 20 - 0.5],
                               atol=1e-9)
    np.testing.assert_allclose(movie.world_to_data(world), [f, y / 100 - 0.5, x / 100 - 0.5],
                               atol=1e-9)


def test_localize_bad_camera_value_is_a_notification(viewer, qtbot, demo):
    sim, _ = demo
    movie = viewer.open(sim / "movie.tif", plugin="napari")[0]
    widget = _localize_widget(viewer, qtbot, movie, "classic")
    n_layers = len(viewer.layers)
    widget.camera_fields["e_per_adu"].value = "0"  # impossible: checked by the camera model
    widget._on_run()
    _wait(qtbot, widget)
    assert len(viewer.layers) == n_layers
    errors = _errors()
    assert len(errors) == 1 and "e_per_adu must be > 0" in errors[0]
    assert "\n" not in errors[0] and "Traceback" not in errors[0]
    widget.camera_fields["e_per_adu"].value = "lots"  # not a number: refused before starting
    widget._on_run()
    assert widget.worker is None and len(viewer.layers) == n_layers
    assert "'lots' is not a number" in _errors()[-1]


def _warnings():
    from napari.utils.notifications import NotificationSeverity, notification_manager

    return [n.message for n in notification_manager.records
            if n.severity == NotificationSeverity.WARNING]


def test_localize_refuses_a_colour_layer_and_shows_what_the_cli_warns(viewer, qtbot, demo):
    """Review 21: an RGB layer was read as frames of 3 columns; the camera and engine
    warnings of ``stormfold localize`` never reached the widget."""
    layer = viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True, name="colour")
    widget = _localize_widget(viewer, qtbot, layer, "classic")
    n_layers = len(viewer.layers)
    widget._on_run()
    _wait(qtbot, widget)
    assert len(viewer.layers) == n_layers
    assert any("colour (RGB) image" in e and "\n" not in e for e in _errors())
    # Blank camera fields on a movie without a camera: the ideal camera is used, and said.
    sim, _ = demo
    import tifffile

    plain = viewer.add_image(tifffile.imread(sim / "movie.tif"), name="no camera")
    widget = _localize_widget(viewer, qtbot, plain, "classic")
    widget.pixel_size_nm.value = 100.0
    widget._on_run()
    _wait(qtbot, widget)
    assert any("camera baseline_adu and e_per_adu not given" in w for w in _warnings())


def test_localize_cancel_adds_no_layer(viewer, qtbot, demo):
    sim, _ = demo
    movie = viewer.open(sim / "movie.tif", plugin="napari")[0]
    widget = _localize_widget(viewer, qtbot, movie, "classic")
    widget.batch_frames.value = 1
    n_layers = len(viewer.layers)
    widget._relay.advanced.connect(lambda *_: widget.cancel())  # cancel after the first batch
    widget._on_run()
    _wait(qtbot, widget)
    assert len(viewer.layers) == n_layers
    assert widget.status.value == "cancelled" and _errors() == []


def test_localize_drift_plot_and_corrected_render(viewer, qtbot, demo):
    sim, _ = demo
    movie = viewer.open(sim / "movie.tif", plugin="napari")[0]
    widget = _localize_widget(viewer, qtbot, movie, "classic")
    widget.drift.value = True
    widget.drift_bins.value = 2
    widget._on_run()
    _wait(qtbot, widget)
    assert _errors() == []
    outcome, points, image = widget.result
    assert outcome.drift is not None and len(outcome.drift) == DEMO_FRAMES
    assert image.metadata["stormfold"]["drift_corrected"] is True
    assert widget.drift_plot.canvas.isVisibleTo(widget.native)
    assert len(widget.drift_plot.axes.lines) == 2


# --------------------------------------------------------------------------- overlay
@pytest.mark.parametrize("movie_scale, movie_translate", [
    ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0)),        # napari's reader: world in camera pixels
    ((1.0, 100.0, 100.0), (0.0, 50.0, 50.0)),  # this plugin's: world in nm (SPEC §1)
    ((2.0, 3.0, 5.0), (7.0, -1.0, 11.0)),      # anything else a user set
])
def test_points_and_images_overlay_exactly(movie_scale, movie_translate):
    from napari.layers import Image, Points

    from stormfold.napari._layers import WorldFrame, table_to_points

    px, p = 100.0, 12.5
    movie = Image(np.zeros((3, 8, 8)), scale=movie_scale, translate=movie_translate)
    world = WorldFrame.of_layer(movie, px)
    r, c, i, j = 2, 5, 13, 37
    # the centre of camera pixel (r, c) and of render pixel (i, j), per SPEC §1
    table = make_table([1, 2], [(c + 0.5) * px, (j + 0.5) * p], [(r + 0.5) * px, (i + 0.5) * p])
    data, kwargs, _ = table_to_points(table, "locs", px, world)
    points = Points(data, **{k: kwargs[k] for k in ("scale", "translate")})
    image = Image(np.zeros((64, 64)), **world.image_transform(p))
    np.testing.assert_allclose(movie.world_to_data(points.data_to_world(data[0])), [1, r, c],
                               atol=1e-9)
    np.testing.assert_allclose(image.world_to_data(points.data_to_world(data[1])[1:]), [i, j],
                               atol=1e-9)


# --------------------------------------------------------------------------- readers, writer
def _table(n=30):
    rng = np.random.default_rng(3)
    return make_table(rng.integers(0, 9, n), rng.uniform(0, 3200, n), rng.uniform(0, 3200, n),
                      photons=rng.uniform(500, 3000, n), uncertainty_nm=rng.uniform(5, 30, n),
                      confidence=rng.random(n), sigma_nm=rng.uniform(90, 130, n))


def test_reader_and_writer_round_trip_csv(viewer, tmp_path):
    import napari

    table = _table()
    write_thunderstorm_csv(tmp_path / "locs.csv", table)
    layer = viewer.open(tmp_path / "locs.csv", plugin="stormfold")[0]
    assert layer._type_string == "points"
    np.testing.assert_array_equal(layer.data, table[["frame", "y_nm", "x_nm"]].to_numpy(float))
    assert {"frame", "photons", "uncertainty_nm", "confidence"} <= set(layer.features.columns)
    np.testing.assert_array_equal(layer.scale, [1, 1, 1])  # world in nm
    napari.save_layers(str(tmp_path / "back.csv"), [layer], plugin="stormfold")
    back = read_thunderstorm_csv(tmp_path / "back.csv")
    pd.testing.assert_frame_equal(back[table.columns], table)


def test_reader_and_writer_round_trip_hdf5(viewer, tmp_path):
    import napari

    from stormfold.io import read_picasso_hdf5, write_picasso_hdf5

    table = _table()
    write_picasso_hdf5(tmp_path / "locs.hdf5", table, 100.0, 32, 32)
    expected, _ = read_picasso_hdf5(tmp_path / "locs.hdf5")
    layer = viewer.open(tmp_path / "locs.hdf5", plugin="stormfold")[0]
    np.testing.assert_array_equal(layer.data[:, 2], expected["x_nm"])
    assert layer.metadata["stormfold"]["pixel_size_nm"] == 100.0
    assert layer.metadata["stormfold"]["frame_shape"] == [32, 32]
    napari.save_layers(str(tmp_path / "back.hdf5"), [layer], plugin="stormfold")
    back, info = read_picasso_hdf5(tmp_path / "back.hdf5")
    assert (info["width_px"], info["height_px"]) == (32, 32)
    # float32 pixels in the file: the round trip is exact once the first write rounded
    pd.testing.assert_frame_equal(back[expected.columns], expected)


def test_writer_needs_a_pixel_size_for_picasso(tmp_path):
    from stormfold.errors import UserError
    from stormfold.napari._io import write_points

    data = np.array([[0.0, 150.0, 250.0], [2.0, 350.0, 50.0]])
    assert write_points(str(tmp_path / "a.csv"), data, {"metadata": {}}) == [str(tmp_path / "a.csv")]
    back = read_thunderstorm_csv(tmp_path / "a.csv")
    assert back["frame"].tolist() == [0, 2] and back["x_nm"].tolist() == [250.0, 50.0]
    with pytest.raises(UserError, match="needs the camera pixel size"):
        write_points(str(tmp_path / "a.hdf5"), data, {"metadata": {}})
    with pytest.raises(UserError, match="whole numbers"):
        write_points(str(tmp_path / "b.csv"), data + [[0.5, 0, 0]], {"metadata": {}})


def test_table_reader_leaves_other_files_to_napari(tmp_path):
    from stormfold.napari._io import get_movie_reader, get_table_reader

    (tmp_path / "napari_points.csv").write_text("index,axis-0,axis-1\n0,1.0,2.0\n")
    (tmp_path / "other.h5").write_bytes(b"not hdf5")
    (tmp_path / "lonely.raw").write_bytes(b"\0" * 8)
    assert get_table_reader(str(tmp_path / "napari_points.csv")) is None
    assert get_table_reader(str(tmp_path / "other.h5")) is None
    assert get_movie_reader(str(tmp_path / "lonely.raw")) is None  # no sidecar


def test_picasso_raw_movie_reader(viewer, shared_data):
    from stormfold.io.movie import open_movie

    path = shared_data / "picasso-testdata" / "testdata.raw"
    layer = viewer.open(path, plugin="stormfold")[0]
    assert layer.data.shape == (100, 32, 32)
    np.testing.assert_allclose(layer.scale, [1, 160, 160])  # nm, SPEC §1 pixel centres
    np.testing.assert_allclose(layer.translate, [0, 80, 80])
    with open_movie(path) as movie:
        np.testing.assert_array_equal(np.asarray(layer.data[7]), movie[7])


# --------------------------------------------------------------------------- Simulate, Calibrate
def test_simulate_widget_adds_movie_and_truth(viewer, qtbot):
    from stormfold.napari._jobs import simulation_config
    from stormfold.napari._simulate import SimulateWidget
    from stormfold.simulate import simulate

    widget = _dock(viewer, SimulateWidget(viewer), qtbot)
    widget.n_frames.value = 4
    widget.seed.value = 5
    widget._on_run()
    _wait(qtbot, widget)
    assert _errors() == []
    movie, truth = viewer.layers[-2], viewer.layers[-1]
    expected = simulate(simulation_config("demo", 4, 5))
    np.testing.assert_array_equal(np.asarray(movie.data), expected.movie)
    np.testing.assert_allclose(movie.scale, [1, 100, 100])
    np.testing.assert_array_equal(truth.data[:, 2], expected.truth["x_nm"])
    assert movie.metadata["stormfold"]["camera"]["baseline_adu"] == 100.0


def test_calibrate_widget_sends_camera_to_localize(viewer, qtbot, tmp_path):
    from stormfold.napari._calibrate import CalibrateWidget
    from stormfold.napari._layers import movie_layer_kwargs
    from stormfold.simulate import build_config, simulate

    config = build_config("zerocost", n_frames=60, seed=4,
                          overrides={"activation": {"density_per_um2": 0.5},
                                     "camera": {"baseline_adu": 120.0, "e_per_adu": 2.0}})
    movie = viewer.add_image(simulate(config).movie, **movie_layer_kwargs("low density", 100.0))
    widget = _dock(viewer, CalibrateWidget(viewer), qtbot)
    widget.movie.value = movie
    widget.out_dir.value = tmp_path / "calib"
    assert widget.pixel_size_nm.value == 100.0
    widget._on_run()
    _wait(qtbot, widget)
    assert _errors() == []
    _, result = widget.result
    assert "baseline" in widget.estimate.value and "PSF σ" in widget.estimate.value
    assert abs(result.camera.baseline_adu - 120.0) < 2.0
    if hasattr(viewer, "window"):
        localize = widget.send_camera()  # opens the plugin's Localize dock widget
    else:
        from stormfold.napari._localize import LocalizeWidget

        widget.localize_target = _dock(viewer, LocalizeWidget(viewer), qtbot)
        localize = widget.send_camera()
    assert localize.movie.value is movie
    assert float(localize.camera_fields["baseline_adu"].value) == \
        result.simulation["camera"]["baseline_adu"]
    assert localize.settings().camera.camera_file == tmp_path / "calib" / "simulation.yaml"
    assert "calibration of low density" in localize.camera_source.value
    # the same camera from the calibration folder chosen in the Localize widget itself
    localize.set_camera(None, None)
    localize.calibration.value = tmp_path / "calib"
    assert float(localize.camera_fields["e_per_adu"].value) == pytest.approx(
        result.simulation["camera"]["e_per_adu"])
    assert localize.camera_source.value.startswith("camera: file ")
    localize.calibration.value = tmp_path / "nothing_here"
    assert "no simulation.yaml" in _errors()[-1]


def test_engine_choices_follow_the_package():
    from stormfold.localize.registry import ENGINES, register_engine
    from stormfold.modelfile import list_builtin
    from stormfold.napari._jobs import MODEL_FOLDER, engine_choices

    choices = engine_choices()
    assert {f"builtin:{n}" for n in list_builtin()} <= set(choices)
    assert "builtin:deepstorm-zerocost" in choices and "classic" in choices
    assert choices[0] == "builtin:gridnet-generalist"  # the default of stormfold run
    assert choices[-1] == MODEL_FOLDER and "sofi" not in choices  # sofi needs a model file
    # an engine registered later appears by itself
    register_engine("toy-model-free", builder="stormfold.localize.classic.engine:build_engine")
    try:
        assert "toy-model-free" in engine_choices()
    finally:
        del ENGINES["toy-model-free"]


def test_manifest_is_valid():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("stormfold")
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Localize", "Simulate", "Calibrate"}
    patterns = {p for r in manifest.contributions.readers for p in r.filename_patterns}
    assert {"*.csv", "*.hdf5", "*.h5", "*.raw"} == patterns


def test_screenshot_shows_widget_and_layers(viewer, qtbot, demo, gl_display, tmp_path):
    """viewer.screenshot() of the window draws the dock widget and both layers (the picture in
    docs/napari.png is made by examples/napari_screenshot.py the same way)."""
    if not gl_display:
        pytest.skip("no X server for OpenGL: the canvas cannot be drawn")
    sim, _ = demo
    movie = viewer.open(sim / "movie.tif", plugin="napari")[0]
    widget = _localize_widget(viewer, qtbot, movie, "classic")
    widget._on_run()
    _wait(qtbot, widget)
    viewer.layers.selection.active = movie  # no yellow swatch in the layer controls
    shot = viewer.screenshot(canvas_only=False, flash=False)
    canvas_width = viewer.screenshot(canvas_only=True, flash=False).shape[1]
    assert shot.shape[1] > canvas_width + 300  # the window holds the dock widget too
    _, points, image = widget.result

    def rings(picture):  # the points' #ffcc00 outlines
        rgb = picture[..., :3].astype(int)
        return int(((rgb[..., 0] > 200) & (rgb[..., 1] > 150) & (rgb[..., 1] < 230)
                    & (rgb[..., 2] < 80)).sum())

    def bright(picture):
        return int((picture[..., :3].astype(int).sum(axis=-1) > 240).sum())

    points.visible = False
    without_points = viewer.screenshot(canvas_only=False, flash=False)
    movie.visible = image.visible = False
    without_images = viewer.screenshot(canvas_only=False, flash=False)
    assert rings(shot) - rings(without_points) > 50  # the points are drawn over the movie
    assert bright(without_points) - bright(without_images) > 200  # and the movie, rendering


def test_napari_writer_error_names_the_users_path(tmp_path):
    from stormfold.errors import UserError
    from stormfold.napari._io import write_points

    (tmp_path / "a_file").write_text("")
    target = tmp_path / "a_file" / "nap.csv"  # a folder that cannot be
    with pytest.raises(UserError) as info:
        write_points(str(target), np.array([[0, 100.0, 200.0]]), {"features": None, "metadata": {}})
    message = str(info.value)
    assert str(target) in message and ".tmp" not in message and "\n" not in message


def test_napari_pixel_size_that_is_not_a_number_reads_as_unknown(gl_display, qapp):
    # gl_display first: Qt must not start before this module has set up its display.
    from stormfold.napari._base import PixelSizeBox

    box = PixelSizeBox(value=0.0, min=0.0, max=1e5)
    for value in (float("nan"), float("inf")):
        box.value = value
        assert box.value == 0.0
    box.value = 160.0
    assert box.value == 160.0
