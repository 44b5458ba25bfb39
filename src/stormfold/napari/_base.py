"""What the three dock widgets share: a job in a worker thread with a progress bar and a
Cancel button, one-line error notifications, and a chooser of the viewer's image layers."""
from __future__ import annotations

from typing import Any, Callable

from magicgui.widgets import ComboBox, Container, Label, ProgressBar, PushButton
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
        self.reset_choices()
