"""A complete (toy) stormfold engine: a learned 3×3 filter, local maxima, a calibrated threshold.

Plug it in with one registry entry (see docs/architecture.md):

    from stormfold.localize.registry import register_engine
    register_engine("toy", loader="toy_engine:load_engine", trainer="toy_engine:train")
"""
import numpy as np
import torch
import torch.nn.functional as F

from stormfold.localize.engine import Engine, EngineOutput
from stormfold.localize.peaks import find_peaks, peaks_to_table
from stormfold.modelfile import load_model, save_model
from stormfold.simulate import build_config
from stormfold.training import (Budget, TrainingRun, calibrate_threshold, fine_targets, run_loop,
                                simulated_data)


class Filter(torch.nn.Module):
    """The model: one 3×3 kernel, initialised to the identity."""

    def __init__(self):
        super().__init__()
        self.kernel = torch.nn.Parameter(F.pad(torch.ones(1, 1), (1, 1, 1, 1)))

    def forward(self, photons: torch.Tensor) -> torch.Tensor:
        return F.conv2d(photons[:, None], self.kernel[None, None], padding=1)[:, 0]


class ToyEngine(Engine):
    """Local maxima of the filtered frames above ``threshold``, on the camera grid (L = 1)."""

    name = "toy"

    def __init__(self, model: Filter, threshold: float, pixel_size_nm: float):
        self.model, self.threshold, self.pixel_size_nm = model, float(threshold), pixel_size_nm

    def maps(self, photons: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.model(torch.from_numpy(np.asarray(photons, np.float32)))

    def decode(self, maps: torch.Tensor, first_frame: int, pixel_size_nm: float,
               threshold: float | None = None):
        peaks = find_peaks(maps, self.threshold if threshold is None else threshold)
        return peaks_to_table(peaks, first_frame, pixel_size_nm)

    def process(self, photons, first_frame, pixel_size_nm):
        return EngineOutput(self.decode(self.maps(photons), first_frame, pixel_size_nm))

    def training_pixel_size_nm(self):
        return self.pixel_size_nm

    def describe(self):
        return {"engine": self.name, "threshold": self.threshold}


def load_engine(spec, meta, device=None, threshold=None, options=None) -> ToyEngine:
    """Registry loader: ``model.yaml`` says ``engine: toy``."""
    tensors, meta = load_model(spec, engine="toy")
    model = Filter()
    model.load_state_dict(tensors)
    return ToyEngine(model, meta["threshold"] if threshold is None else threshold,
                     meta["pixel_size_nm"])


def train(out, preset=None, config_file=None, overrides=None, seed=None, device=None,
          progress=True, resume=None, command=None, steps=40):
    """Registry trainer: fit the filter to photon targets, calibrate the threshold, save."""
    seed = 0 if seed is None else seed
    resume = TrainingRun.unfinished(out) if resume is None else resume
    run = TrainingRun(out, resume, {"preset": preset, "overrides": overrides, "seed": seed},
                      "nothing", command)
    data = simulated_data(build_config(preset or "zerocost", overrides=overrides, n_frames=8,
                                       seed=seed))
    px = data.pixel_size_nm
    target = torch.from_numpy(fine_targets(data.truth, data.n_frames, data.geometry.shape, px))
    photons = torch.from_numpy(data.photons)
    model = Filter()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    restored = run.restore(model, optimizer)

    def step(i: int) -> dict:
        loss = ((model(photons) - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"step": i + 1, "loss": loss.item()}

    run.out_dir.mkdir(parents=True, exist_ok=True)
    run_loop(step, restored[1]["step"] if restored else 0, Budget(steps=steps), run,
             after=lambda done, record: run.save(model, optimizer, {"step": done}))
    engine = ToyEngine(model, 1.0, px)
    maps = engine.maps(data.photons)
    cal = calibrate_threshold(lambda t: engine.decode(maps, 0, px, t), data.truth,
                              np.geomspace(10, 1e4, 31), 100.0, data.n_frames, "training frames")
    save_model(out, model.state_dict(), {"engine": "toy", "threshold": cal.threshold,
                                         "pixel_size_nm": px, "jaccard": cal.jaccard})
