"""The Calibrate dock widget: ``stormfold calibrate`` on a movie layer.

Shows the estimated camera, PSF, photons, background and density, and sends the camera to
the Localize widget (with the ``simulation.yaml`` it wrote, when an output folder is set).
"""
from __future__ import annotations

from typing import Any

from magicgui.widgets import CheckBox, FileEdit, FloatSpinBox, PushButton, TextEdit

from stormfold.calibrate.core import MAX_EM_GAIN
from stormfold.errors import UserError
from stormfold.napari._base import MovieJobWidget, folder_or_none
from stormfold.napari._jobs import (CalibrateSettings, calibration_summary,
                                    movie_source_of_layer, run_calibrate)


class CalibrateWidget(MovieJobWidget):
    """Estimate camera, PSF, photons and density of a movie (``stormfold calibrate``)."""

    title = "stormfold calibrate"

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, labels=True)
        self.emccd = CheckBox(value=False, text="EMCCD")
        self.qe = FloatSpinBox(value=1.0, min=0.01, max=1.0, step=0.01, label="QE")
        self.em_gain = FloatSpinBox(value=100.0, min=1.01, max=MAX_EM_GAIN, label="EM gain")
        self.threshold = FloatSpinBox(value=5.0, min=0.1, max=100.0, label="threshold (σ)")
        self.out_dir = FileEdit(mode="d", label="save to",
                                tooltip="optional folder: simulation.yaml, calibration.html, "
                                        "calibration.png")
        self.estimate = TextEdit(value="", label="estimate")
        self.estimate.native.setReadOnly(True)
        self.send_button = PushButton(text="Send camera to Localize", enabled=False)
        self.extend([self.movie, self.pixel_size_nm, self.first_frame, self.n_frames, self.emccd,
                     self.qe, self.em_gain, self.threshold, self.out_dir])
        self.add_job_controls()
        self.extend([self.estimate, self.send_button])
        self.result = None
        self.localize_target = None  # a LocalizeWidget; default: the viewer's dock widget
        self.send_button.changed.connect(self._on_send)
        self._on_movie(self.movie.value)

    def run(self) -> None:
        layer = self.chosen_movie()
        start, stop = self.frame_range()
        settings = CalibrateSettings(
            pixel_size_nm=float(self.pixel_size_nm.value) or None, start=start, stop=stop,
            emccd=bool(self.emccd.value), qe=float(self.qe.value),
            em_gain=float(self.em_gain.value), threshold=float(self.threshold.value),
            out_dir=folder_or_none(self.out_dir))
        self.send_button.enabled = False
        self.start_job(run_calibrate, movie_source_of_layer(layer), settings,
                       on_result=lambda result: self._show(layer, result))

    def _show(self, layer: Any, result) -> None:
        self.result = (layer, result)
        self.estimate.value = calibration_summary(result)
        self.status.value = "done" + (f"; wrote {result.outputs['config'].parent}"
                                      if result.outputs else "")
        self.send_button.enabled = True

    def _on_send(self, *_) -> None:
        from stormfold.napari._base import notify_error

        try:
            self.send_camera()
        except Exception as exc:
            notify_error(self.title, exc)

    def send_camera(self) -> Any:
        """Fill the Localize widget's movie and camera with this calibration; returns it."""
        if self.result is None:
            raise UserError("run the calibration first")
        layer, result = self.result
        target = self.localize_target
        if target is None:
            from stormfold.napari._localize import localize_widget_of

            target = localize_widget_of(self.viewer)
        if layer in self.viewer.layers:
            target.movie.value = layer
        target.set_camera(result.simulation["camera"], f"calibration of {layer.name}",
                          camera_file=result.outputs.get("config"))
        return target
