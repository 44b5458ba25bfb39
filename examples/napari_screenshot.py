"""Make docs/napari.png: the viewer with the Localize widget, the demo movie, the points and
the rendering, taken by napari's own ``viewer.screenshot()``.

    QT_QPA_PLATFORM=offscreen xvfb-run -a python examples/napari_screenshot.py [OUT.png]

(Qt's offscreen platform draws napari's OpenGL canvas through an X server; ``xvfb-run``
provides one on a machine without a screen. On a desktop, run it without both.)
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from stormfold.demo import demo_simulation
from stormfold.simulate import simulate_to_folder

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sim = simulate_to_folder(demo_simulation(n_frames=20), Path(tmp) / "sim", progress=False)
        viewer = napari.Viewer(show=False)
        viewer.window.resize(1500, 860)
        movie = viewer.open(sim / "movie.tif", plugin="napari")[0]
        _, widget = viewer.window.add_plugin_dock_widget("stormfold", "Localize")
        widget.movie.value = movie
        widget.engine.value = "builtin:deepstorm-zerocost"
        widget.render_pixel_nm.value = 20.0
        widget.drift.value = True
        widget.drift_bins.value = 3
        widget._on_run()
        app = QApplication.instance()
        t0 = time.perf_counter()
        while widget.worker is not None and time.perf_counter() - t0 < 600:
            app.processEvents()
            time.sleep(0.05)
        if widget.result is None:
            raise SystemExit(f"the Localize run did not finish: {widget.status.value}")
        outcome, points, image = widget.result
        movie.contrast_limits = (100, float(np.percentile(np.asarray(movie.data), 99.9)))
        image.opacity = 0.8
        viewer.dims.set_point(0, 12)
        viewer.reset_view()
        viewer.camera.zoom *= 1.05
        viewer.layers.selection.active = points
        for _ in range(20):
            app.processEvents()
            time.sleep(0.05)
        shot = viewer.screenshot(canvas_only=False, flash=False)
        import imageio.v3 as iio

        out.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(out, shot)
        print(f"wrote {out} ({shot.shape[1]}×{shot.shape[0]} px): {len(outcome.table)} "
              f"localizations, {outcome.run['timing']['frames_per_s']:.1f} frames/s")
        viewer.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "napari.png")
