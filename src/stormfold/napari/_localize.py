"""The Localize dock widget: ``stormfold localize`` on a movie layer of the viewer.

It adds a Points layer of the localizations (nm, one frame at a time over the movie) and
an Image layer rendered at a chosen pixel size; with drift correction on, the rendering is
of the corrected table and the drift is plotted in the dock (the points stay where the raw
frames show them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, FileEdit, FloatSpinBox, Label, LineEdit, SpinBox

from stormfold.errors import UserError
from stormfold.napari._base import MovieJobWidget, notify_error, notify_warning
from stormfold.napari._jobs import (MODEL_FOLDER, LocalizeSettings, engine_choices,
                                    movie_source_of_layer, run_localize)
from stormfold.napari._layers import WorldFrame, contrast_limits, table_to_points

#: Camera fields: widget name → (label, CameraOverrides attribute).
CAMERA_FIELDS = {
    "baseline_adu": ("baseline (ADU)", "baseline_adu"),
    "e_per_adu": ("e⁻ per ADU", "e_per_adu"),
    "em_gain": ("EM gain", "em_gain"),
    "qe": ("QE", "qe"),
}
_BLANK_HINT = "blank: movie metadata, else the model's training camera"


def _number(text: str, what: str) -> float | None:
    """A float from a text field; None when blank."""
    text = str(text).strip()
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{what}: {text!r} is not a number") from None


class LocalizeWidget(MovieJobWidget):
    """Localize emitters in a movie layer with any engine (``stormfold localize``)."""

    title = "stormfold localize"

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, labels=True)
        self.engine = ComboBox(choices=engine_choices(), label="engine")
        self.model_folder = FileEdit(mode="d", label="model folder", visible=False)
        self.threshold = LineEdit(value="", label="threshold",
                                  tooltip="blank: the model's calibrated threshold")
        self.calibration = FileEdit(mode="d", label="camera from",
                                    tooltip="a `stormfold calibrate` output folder (its "
                                            "simulation.yaml), or a camera YAML file")
        self.camera_fields = {key: LineEdit(value="", label=label, tooltip=_BLANK_HINT)
                              for key, (label, _) in CAMERA_FIELDS.items()}
        self.camera_source = Label(value=_BLANK_HINT)
        self.batch_frames = SpinBox(value=16, min=1, max=4096, label="batch frames")
        self.render_pixel_nm = FloatSpinBox(value=10.0, min=0.1, max=1e4, step=1.0,
                                            label="render pixel (nm)")
        self.render_method = ComboBox(choices=["histogram", "gaussian"], label="render")
        self.drift = CheckBox(value=False, text="correct drift (RCC)")
        self.drift_bins = SpinBox(value=10, min=2, max=1000, label="drift bins")
        self.extend([self.movie, self.pixel_size_nm, self.engine, self.model_folder,
                     self.threshold, self.calibration, *self.camera_fields.values(),
                     self.camera_source, self.first_frame, self.n_frames, self.batch_frames,
                     self.render_pixel_nm, self.render_method, self.drift, self.drift_bins])
        self.add_job_controls()
        self._camera_file: Path | None = None
        self.drift_plot = _DriftPlot()
        self.native.layout().addWidget(self.drift_plot.canvas)
        self.engine.changed.connect(self._on_engine)
        self.calibration.changed.connect(self._on_calibration)
        self.result = None
        self._on_movie(self.movie.value)

    # ------------------------------------------------------------------ prefill
    def _on_engine(self, value: str) -> None:
        self.model_folder.visible = value == MODEL_FOLDER

    def movie_changed(self, facts) -> None:
        """The camera of the movie's metadata, unless a camera file was chosen."""
        if self._camera_file is None:
            self.set_camera(facts.camera, "movie metadata" if facts.camera else None)

    def _on_calibration(self, value: Any) -> None:
        if value is None or not str(value).strip() or str(value) == ".":
            self._camera_file = None  # cleared: back to the movie's own camera
            self._on_movie(self.movie.value)
            return
        try:
            self.use_calibration(Path(value))
        except Exception as exc:
            notify_error(self.title, exc)

    def use_calibration(self, path: Path) -> None:
        """Take the camera of a ``stormfold calibrate`` folder (or a camera YAML file)."""
        from stormfold.config import to_dict
        from stormfold.localize.camera import camera_from_file

        path = Path(path)
        file = path / "simulation.yaml" if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"{path}: no simulation.yaml (choose a `stormfold calibrate` "
                            f"output folder or a camera YAML file)")
        self.set_camera(to_dict(camera_from_file(file)), f"file {file}", camera_file=file)

    def set_camera(self, camera: dict | None, source: str | None,
                   camera_file: Path | None = None) -> None:
        """Fill the camera fields (blank them with ``camera=None``); ``camera_file`` also
        passes the rest of that camera (read noise ...) as ``--camera FILE`` would."""
        self._camera_file = None if camera_file is None else Path(camera_file)
        for key, widget in self.camera_fields.items():
            value = None if camera is None else camera.get(CAMERA_FIELDS[key][1])
            widget.value = "" if value is None else repr(float(value))
        self.camera_source.value = f"camera: {source}" if source else _BLANK_HINT

    # ------------------------------------------------------------------ run
    def settings(self) -> LocalizeSettings:
        """The fields as :class:`LocalizeSettings` (UserError for a bad value)."""
        from stormfold.localize.camera import CameraOverrides

        values = {key: _number(widget.value, CAMERA_FIELDS[key][0])
                  for key, widget in self.camera_fields.items()}
        px = float(self.pixel_size_nm.value) or None
        start, stop = self.frame_range()
        model_folder = self.model_folder.value if self.engine.value == MODEL_FOLDER else None
        return LocalizeSettings(
            engine=self.engine.value, pixel_size_nm=px,
            camera=CameraOverrides(self._camera_file, values["baseline_adu"],
                                   values["e_per_adu"], values["em_gain"], values["qe"]),
            threshold=_number(self.threshold.value, "threshold"), model_folder=model_folder,
            start=start, stop=stop, batch_frames=int(self.batch_frames.value),
            render_pixel_nm=float(self.render_pixel_nm.value),
            render_method=self.render_method.value, drift=bool(self.drift.value),
            drift_bins=int(self.drift_bins.value))

    def run(self) -> None:
        layer = self.chosen_movie()
        settings = self.settings()
        source = movie_source_of_layer(layer)
        n_total = int(layer.data.shape[0]) if layer.ndim >= 3 else 1
        stop = n_total if settings.stop is None else min(settings.stop, n_total)
        self.drift_plot.clear()
        self.start_job(run_localize, source, settings, self.progress_callback(),
                       total=max(stop - settings.start, 0),
                       on_result=lambda outcome: self._add_layers(layer, outcome))

    def _add_layers(self, movie_layer: Any, outcome) -> None:
        """Points over the movie and the rendering, both placed by the movie's transform."""
        world = WorldFrame.of_layer(movie_layer, outcome.pixel_size_nm)
        label = f"{movie_layer.name} · {outcome.engine_label}"
        meta = {"engine": outcome.engine_label, "frame_shape": list(outcome.frame_shape),
                "movie": movie_layer.name, "camera": outcome.run["camera"],
                "camera_source": outcome.run["camera_source"]}
        data, kwargs, _ = table_to_points(outcome.table, label, outcome.pixel_size_nm, world,
                                          meta)
        if movie_layer.ndim < 3:
            data, kwargs["scale"], kwargs["translate"] = \
                data[:, 1:], kwargs["scale"][1:], kwargs["translate"][1:]
        points = self.viewer.add_points(data, **kwargs)
        image = self.viewer.add_image(
            outcome.image, name=f"{label} render {outcome.render_pixel_nm:g} nm",
            colormap="magma", blending="additive",
            contrast_limits=contrast_limits(outcome.image),
            metadata={"stormfold": {"kind": "render", "pixel_nm": outcome.render_pixel_nm,
                                    "pixel_size_nm": outcome.pixel_size_nm,
                                    "drift_corrected": outcome.drift is not None}},
            **world.image_transform(outcome.render_pixel_nm))
        self.result = (outcome, points, image)
        n = len(outcome.table)
        frames = outcome.run["n_frames"]
        self.status.value = (f"{n} localizations in {frames} frames "
                             f"({outcome.run['timing']['frames_per_s']:.1f} frames/s)")
        if outcome.drift is not None:
            self.drift_plot.show(outcome.drift)
        if outcome.drift_error:
            notify_warning(f"{self.title}: drift not corrected ({outcome.drift_error})")
        # What stormfold localize prints as warnings: an assumed camera, the engine's checks.
        for line in [outcome.run.get("camera_warning")] + \
                list(outcome.run.get("engine_warnings") or []):
            if line:
                notify_warning(f"{self.title}: {line}")


class _DriftPlot:
    """A small matplotlib plot of dx, dy (nm) against frame, hidden until there is a drift."""

    def __init__(self):
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.0), dpi=100, layout="constrained")
        self.axes = self.figure.add_subplot()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(160)
        self.canvas.setVisible(False)

    def clear(self) -> None:
        self.axes.clear()
        self.canvas.setVisible(False)

    def show(self, drift) -> None:
        self.axes.clear()
        self.axes.plot(drift["frame"], drift["dx_nm"], label="dx")
        self.axes.plot(drift["frame"], drift["dy_nm"], label="dy")
        self.axes.set_xlabel("frame")
        self.axes.set_ylabel("drift (nm)")
        self.axes.legend(fontsize="small")
        self.canvas.setVisible(True)
        self.canvas.draw_idle()


def localize_widget_of(viewer: Any) -> "LocalizeWidget":
    """The viewer's Localize dock widget, opened when it is not there yet."""
    _, widget = viewer.window.add_plugin_dock_widget("stormfold", "Localize")
    return widget
