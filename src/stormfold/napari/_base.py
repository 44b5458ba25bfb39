"""What the three dock widgets share: a job in a worker thread with a progress bar and a
Cancel button, one-line error notifications, and a chooser of the viewer's image layers."""
from __future__ import annotations

import math
from typing import Any, Callable

from magicgui.widgets import (ComboBox, Container, FileEdit, FloatSpinBox, Label, ProgressBar,
                              PushButton, SpinBox)
from qtpy.QtCore import QObject, Signal

from stormfold.errors import UserError
from stormfold.napari._jobs import Cancelled


class _ProgressRelay(QObject):
    """Carries (done, total-so-far) from the worker thread to the widget (queued by Qt)."""

    advanced = Signal(int, int)


def one_line(exc: BaseException) -> str:
    """The message a user sees: a UserError's own line, else the type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, UserError):
        return text
    return f"internal error: {type(exc).__name__}" + (f": {text}" if text else "")


def notify_error(title: str, exc: BaseException) -> None:
    """A napari error notification with one line (never a traceback dialog)."""
    from napari.utils.notifications import show_error

    show_error(f"{title}: {one_line(exc)}")


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


class JobWidget(Container):
    """A dock widget that runs one job at a time in a napari worker thread.

    Subclasses add their fields, then call :meth:`add_job_controls` and, on Run,
    :meth:`start_job`. ``worker`` is the running worker (None when idle).
    """

    title = "stormfold"

    def __init__(self, napari_viewer: Any, **kwargs):
        super().__init__(**kwargs)
        self.viewer = napari_viewer
        self.worker = None
        self._relay = _ProgressRelay()
        self._relay.advanced.connect(self._on_advanced)
        self._total = 0
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, visible=False, label="progress")
        self.status = Label(value="")
        self.run_button.changed.connect(self._on_run)
        self.cancel_button.changed.connect(self.cancel)

    def add_job_controls(self) -> None:
        self.extend([self.run_button, self.cancel_button, self.progress, self.status])

    # ------------------------------------------------------------------ running
    def _on_run(self, *_) -> None:
        if self.worker is not None:
            return
        try:
            self.run()
        except Exception as exc:  # a bad field: reported, nothing started
            notify_error(self.title, exc)

    def run(self) -> None:
        """Read the fields and call :meth:`start_job` (subclasses)."""
        raise UserError("nothing to run")

    def progress_callback(self) -> Callable[[int, int], None]:
        """A callback for the job: reports progress and raises :class:`Cancelled` when the
        user pressed Cancel (checked between batches)."""
        relay = self._relay

        def callback(done: int, count: int) -> None:
            worker = self.worker
            if worker is not None and worker.abort_requested:
                raise Cancelled()
            relay.advanced.emit(int(done), int(count))

        return callback

    def start_job(self, func: Callable, *args, total: int = 0,
                  on_result: Callable[[Any], None]) -> None:
        """Run ``func(*args)`` in a worker thread; ``on_result`` gets its value in the GUI
        thread. ``total`` > 0 makes the progress bar count up to it, else it is busy."""
        from napari.qt.threading import create_worker

        # errors are ours to report (one line); napari would re-raise them in the GUI thread
        worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda value: self._on_returned(on_result, value))
        worker.errored.connect(self._on_errored)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._total = int(total)
        self.progress.min, self.progress.max = 0, max(int(total), 0)
        self.progress.value = 0
        self.progress.visible = True
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = "running…"
        worker.start()

    def cancel(self, *_) -> None:
        """Ask the running job to stop (at its next batch; a job without batches finishes in
        the background and its result is dropped)."""
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "cancelling…"

    def _on_advanced(self, done: int, count: int) -> None:
        if self._total > 0:
            self.progress.value = min(done, self._total)
            self.status.value = f"{done} / {self._total} frames, {count} localizations"

    def _on_returned(self, on_result: Callable[[Any], None], value: Any) -> None:
        if self.worker is not None and self.worker.abort_requested:
            self.status.value = "cancelled"
            notify_info(f"{self.title}: cancelled")
            return
        try:
            on_result(value)
        except Exception as exc:
            notify_error(self.title, exc)
            self.status.value = "failed"

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, Cancelled):
            self.status.value = "cancelled"
            notify_info(f"{self.title}: cancelled")
            return
        self.status.value = "failed: " + one_line(exc)
        notify_error(self.title, exc)

    def _on_finished(self) -> None:
        self.worker = None
        self.progress.visible = False
        self.run_button.enabled = True
        self.cancel_button.enabled = False


class PixelSizeBox(FloatSpinBox):
    """The pixel-size field: a value that is not a finite number (NaN, inf) reads as 0,
    "unknown", where Qt would clamp it to the field's maximum and show 100000 nm."""

    @property
    def value(self) -> float:
        return FloatSpinBox.value.fget(self)

    @value.setter
    def value(self, number: Any) -> None:
        try:
            finite = math.isfinite(float(number))
        except (TypeError, ValueError):
            finite = False
        FloatSpinBox.value.fset(self, number if finite else 0.0)


class MovieJobWidget(JobWidget):
    """A job on a movie layer: the movie chooser, its pixel size (prefilled from the movie)
    and a frame range; subclasses place these widgets among their own."""

    def __init__(self, napari_viewer: Any, **kwargs):
        super().__init__(napari_viewer, **kwargs)
        self.movie = ImageLayerChoice(napari_viewer, label="movie")
        self.pixel_size_nm = PixelSizeBox(value=0.0, min=0.0, max=1e5, step=1.0,
                                          label="pixel size (nm)",
                                          tooltip="camera pixel size; 0 = unknown")
        self.first_frame = SpinBox(value=0, min=0, max=10**9, label="first frame")
        self.n_frames = SpinBox(value=0, min=0, max=10**9, label="frames",
                                tooltip="0 = to the end of the movie")
        self.movie.changed.connect(self._on_movie)

    def _on_movie(self, layer: Any) -> None:
        """Prefill from the movie's metadata (as the command line's defaults)."""
        from stormfold.napari._jobs import movie_facts, movie_source_of_layer

        if layer is None:
            return
        try:
            facts = movie_facts(movie_source_of_layer(layer), tuple(layer.scale))
        except Exception as exc:  # a movie that cannot be read: say so, keep the fields
            notify_error(self.title, exc)
            return
        self.pixel_size_nm.value = facts.pixel_size_nm or 0.0
        self.movie_changed(facts)

    def movie_changed(self, facts: Any) -> None:
        """More prefilling from the movie's :class:`~stormfold.napari._jobs.MovieFacts`."""

    def frame_range(self) -> tuple[int, int | None]:
        """``(start, stop)`` of the frame fields (stop None: to the end)."""
        first, count = int(self.first_frame.value), int(self.n_frames.value)
        return first, (first + count if count else None)

    def chosen_movie(self) -> Any:
        layer = self.movie.value
        if layer is None:
            raise UserError("no movie layer: open a movie or simulate one first")
        return layer


def folder_or_none(edit: FileEdit) -> Any:
    """The folder of an optional FileEdit, None when left empty."""
    from pathlib import Path

    value = edit.value
    return Path(value) if value is not None and str(value).strip() not in ("", ".") else None


class ImageLayerChoice(ComboBox):
    """A chooser of the viewer's image layers that follows layers being added or removed."""

    def __init__(self, viewer: Any, **kwargs):
        super().__init__(choices=self._layers, **kwargs)
        self._viewer = viewer
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)
        viewer.layers.events.moved.connect(self._refresh)
        self._refresh()

    def _layers(self, widget: Any = None) -> list:
        from napari.layers import Image

        viewer = getattr(self, "_viewer", None)
        if viewer is None:
            return []
        from stormfold.napari._layers import stormfold_metadata

        # Renderings made by the Localize widget are images too, but not movies.
        return [(layer.name, layer) for layer in viewer.layers if isinstance(layer, Image)
                and stormfold_metadata(layer).get("kind") != "render"]

    def _refresh(self, *_) -> None:
        try:
            self.reset_choices()
        except RuntimeError:  # the Qt widget is gone (dock closed) while the viewer lives on
            for event in ("inserted", "removed", "moved"):
                getattr(self._viewer.layers.events, event).disconnect(self._refresh)
