"""The Simulate dock widget: a movie with its ground truth as layers (``stormfold simulate``).

The quickest way to try the tool with no data: simulate, then Localize the movie layer and
compare the points with the truth layer.
"""
from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, FileEdit, SpinBox

from stormfold.napari._base import JobWidget, folder_or_none
from stormfold.napari._jobs import Simulated, run_simulate
from stormfold.napari._layers import WorldFrame, movie_layer_kwargs, table_to_points


def preset_choices() -> list[str]:
    """``demo`` (what ``stormfold demo`` localizes) and every simulator preset."""
    from stormfold.simulate import PRESETS

    return ["demo", *PRESETS]


class SimulateWidget(JobWidget):
    """Simulate an SMLM movie and its ground truth (``stormfold simulate``)."""

    title = "stormfold simulate"

    def __init__(self, napari_viewer: Any):
        super().__init__(napari_viewer, labels=True)
        self.preset = ComboBox(choices=preset_choices(), value="demo", label="preset")
        self.n_frames = SpinBox(value=50, min=1, max=10**7, label="frames")
        self.seed = SpinBox(value=0, min=0, max=2**31 - 1, label="seed")
        self.out_dir = FileEdit(mode="d", label="save to",
                                tooltip="optional folder: movie.tif, truth.csv, "
                                        "simulation.yaml as `stormfold simulate --out` writes")
        self.extend([self.preset, self.n_frames, self.seed, self.out_dir])
        self.add_job_controls()
        self.result: Simulated | None = None

    def run(self) -> None:
        self.start_job(run_simulate, self.preset.value, int(self.n_frames.value),
                       int(self.seed.value), folder_or_none(self.out_dir),
                       on_result=self._add_layers)

    def _add_layers(self, sim: Simulated) -> None:
        from stormfold.config import to_dict

        config = sim.config
        px = float(config.pixel_size_nm)
        name = f"simulated {self.preset.value} (seed {config.seed})"
        meta = {"camera": to_dict(config.camera), "kind": "movie", "seed": config.seed}
        if sim.path is not None:
            meta["source"] = str(sim.path)
        movie = self.viewer.add_image(sim.frames, **movie_layer_kwargs(name, px, meta))
        data, kwargs, _ = table_to_points(sim.truth, f"{name} truth", px, WorldFrame.nm(px),
                                          {"kind": "truth",
                                           "frame_shape": [config.n_rows, config.n_cols]},
                                          color="#00e5ff")
        self.viewer.add_points(data, **kwargs)
        self.result = sim
        self.status.value = (f"{config.n_frames} frames of {config.n_rows}×{config.n_cols} px, "
                             f"{len(sim.truth)} emitters" +
                             (f"; wrote {sim.path.parent}" if sim.path is not None else ""))
        self.viewer.layers.selection.active = movie
