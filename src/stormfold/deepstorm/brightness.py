"""Brightness matching: a movie's emitters brought to the brightness the network knows.

A Deep-STORM network sees frames scaled by one fixed number (:mod:`.normalization`), so it
knows the brightness of its training emitters and nothing else: emitters 2.2× brighter
become two or more detections each, emitters 3× dimmer are mostly lost (review 17; fresh
``zerocost`` movies at 1/µm², JI@100: 0.56 at 5,000 photons, 0.35 at 700, against 0.98 at
its 2,250). Dividing the frames by the movie's brightness relative to the training one
restores it (0.99 and 0.98 on the same movies; `experiments/deepstorm_brightness.py`).

The ratio is measured on a few frames spread over a movie (on its first frames where the
frames come one batch at a time), after the background matching, with
no need of isolated spots (so also at the network's own density), in two steps, each
against the same measure on frames of the training simulation (:func:`training_signal`):

1. **Start: the spots' height.** The median, over the network's detections, of the frame's
   3 × 3 photons above the background around each detection, H, over the training frames'
   H₀. Two detections of one bright emitter share its spot, so splitting does not bias it;
   neighbours add to it (the training frames are crowded, 6/µm² for ``zerocost``), so it
   is a first guess.
2. **Fixed point: the signal per localization.** With the frames divided by s the network
   finds n(s) emitters; S(s) = F / n(s), F the frames' photons above their background
   (:func:`stormfold.localize.domain.background_level`), and the ratio is the s with
   s = S(s) / S₀. n(s) falls as s grows and is flat near the right s (one detection per
   emitter), so s ← S(s) / S₀ converges in a few steps from the start. From s = 1 alone it
   can stop at a false fixed point: emitters 2.2× too bright, each split in 2.2 detections,
   have the training signal per localization.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from stormfold.localize.background import background_level

#: The ratio is measured on at most this many of the frames given (evenly spaced), no more
#: than it takes to hold PROBE_PIXELS pixels (64 × 64: 8 frames; 256 × 256: 1).
PROBE_FRAMES = 8
PROBE_PIXELS = 8 * 64 * 64
#: Fixed-point steps at most, and the relative change that ends them.
MAX_STEPS = 8
CONVERGED = 0.03
#: Ratios inside this interval are taken as 1, so that movies of about the training
#: brightness stay exactly as before. Asymmetric, as the network's tolerance is: on the
#: spot-check record (README) it scores JI@100 0.97 at 1,500 photons (0.67×) but 0.90 at
#: 3,000 (1.33×) and 0.73 at 3,600; and both measures read dense, structured frames low:
#: the real demo movie (2,000–2,500 photons, microtubules) measures 0.79, where matching
#: it would cost 0.878 → 0.819.
KEEP = (0.6, 1.25)
#: The ratio is kept within these bounds.
RANGE = (1 / 8, 8.0)
#: A measure needs at least this many detections; with fewer, the frames are looked at
#: brighter (s halved) at most MAX_HALVINGS times, then the ratio is left unmeasured (1).
#: Halving until something is found made frames without emitters (a dark start) "measure"
#: the floor 1/8 and every frame of the movie was multiplied by 8 (review 22: JI 0.99 → 0.16).
MIN_DETECTIONS = 10
MAX_HALVINGS = 2


def flux(frames: np.ndarray) -> float:
    """Photons of ``frames`` (n, rows, cols) above each frame's background level."""
    frames = np.asarray(frames, dtype=np.float32)
    return float(frames.sum(dtype=np.float64)
                 - frames.shape[1] * frames.shape[2] * background_level(frames).sum())


def spot_height(frames: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                index: np.ndarray) -> float:
    """Median 3 × 3 photons above the frame's background level around the camera pixels
    (``rows``, ``cols``) of frames ``index`` of ``frames`` (NaN without detections)."""
    frames = np.asarray(frames, dtype=np.float32)
    if index.size == 0:
        return float("nan")
    n, h, w = frames.shape
    level = background_level(frames)
    padded = np.pad(frames - level[:, None, None], ((0, 0), (1, 1), (1, 1)))
    r = np.clip(rows, 0, h - 1) + 1
    c = np.clip(cols, 0, w - 1) + 1
    sums = sum(padded[index, r + dr, c + dc] for dr in (-1, 0, 1) for dc in (-1, 0, 1))
    return float(np.median(sums))


def measure(frames: np.ndarray, detect: Callable[[np.ndarray], tuple]) -> tuple[float, float]:
    """(signal per localization, spot height) of ``frames`` as given to the network;
    ``detect(frames)`` returns the detections' (frame index, row, col) in camera pixels."""
    index, rows, cols = detect(frames)
    total = flux(frames)
    n = int(np.size(index))
    return (total / n if n >= MIN_DETECTIONS and total > 0 else float("nan"),
            spot_height(frames, rows, cols, index))


def signal_ratio(frames: np.ndarray, detect: Callable[[np.ndarray], tuple],
                 reference: tuple[float, float]) -> tuple[float, int]:
    """The brightness ratio s of ``frames`` (photons, background matched) and the number of
    fixed-point steps it took (see the module notes); NaN when it cannot be measured (fewer
    than :data:`MIN_DETECTIONS` detections, also at the start's s / 2**MAX_HALVINGS).

    Parameters
    ----------
    frames : (n, rows, cols) array
        The first frames of the movie, in photons.
    detect : callable
        The network's detections in frames given to it (already divided by s): frame
        index, row and column (camera pixels) arrays.
    reference : (float, float)
        S₀ and H₀ of the training frames (photons).
    """
    total = flux(frames)
    signal0, height0 = reference
    if not (signal0 > 0 and height0 > 0):
        return 1.0, 0
    if not total > 0:
        return float("nan"), 0
    height = measure(frames, detect)[1]
    s = float(np.clip(height / height0, *RANGE)) if np.isfinite(height) and height > 0 else 1.0
    halvings = 0
    for step in range(1, MAX_STEPS + 1):
        signal = measure(frames / s, detect)[0]
        if not np.isfinite(signal):
            # Too little found: dim emitters? Look at them brighter, but not without end.
            if halvings == MAX_HALVINGS or s <= RANGE[0]:
                return float("nan"), step
            halvings += 1
            new = s / 2
        else:
            new = signal * s / signal0  # S = F/n(s)
        new = float(np.clip(new, *RANGE))
        if abs(new / s - 1) < CONVERGED:
            return new, step
        s = new
    return s, MAX_STEPS


def training_signal(simulation: dict, detect: Callable[[np.ndarray], tuple],
                    background: Callable[[np.ndarray], np.ndarray] | None = None,
                    n_frames: int = PROBE_FRAMES, seed: int = 0) -> tuple[float, float] | None:
    """(S₀, H₀): the signal per localization and the spot height of the network's detections
    on ``n_frames`` frames of its training simulation (after ``background``, the engine's
    matching); None when the mapping is not a simulation stormfold can run or nothing is
    found."""
    from stormfold.errors import UserError
    from stormfold.simulate import simulate
    from stormfold.simulate.config import build_config

    data = {k: v for k, v in simulation.items() if k not in ("stormfold_version", "provenance")}
    try:
        cfg = build_config(overrides=data, n_frames=n_frames, seed=seed)
    except (UserError, TypeError, ValueError):
        return None
    frames = cfg.camera.backward(simulate(cfg).movie).astype(np.float32)
    if background is not None:
        frames = background(frames)
    signal, height = measure(frames, detect)
    return (signal, height) if np.isfinite(signal) and height > 0 else None


@dataclass
class BrightnessMatch:
    """The ratio of one movie (None until its first frames are measured).

    Attributes
    ----------
    simulation : dict
        The model's training simulation (model.yaml), for S₀ and H₀.
    given : float or None
        A ratio given by the user (``--set brightness=R``): used as it is.
    reference : (float, float) or None
        S₀ and H₀ (photons): model.yaml's ``brightness_reference``, else measured on the
        first movie (:func:`training_signal`, a few seconds).
    """

    simulation: dict
    given: float | None = None
    reference: tuple[float, float] | None = None
    ratio: float | None = None
    steps: int = 0
    measured: float | None = None
    probe_frames: int = 0

    def reset(self) -> None:
        """A new movie: measure again (the training reference is kept)."""
        self.ratio, self.steps, self.measured, self.probe_frames = None, 0, None, 0

    def choose(self, frames: np.ndarray, detect: Callable[[np.ndarray], tuple],
               background: Callable[[np.ndarray], np.ndarray] | None) -> float:
        """The ratio for the movie whose frames (photons, background matched; its first, or
        frames spread over it) are ``frames``: measured on up to :data:`PROBE_FRAMES` of
        them, evenly spaced; 1 with ``measured`` None when it cannot be measured."""
        if self.given is not None:
            self.ratio = self.given
            return self.ratio
        if self.reference is None:
            self.reference = training_signal(self.simulation, detect, background) or (0.0, 0.0)
        per_frame = frames.shape[-1] * frames.shape[-2]
        k = max(1, min(PROBE_FRAMES, -(-PROBE_PIXELS // per_frame), len(frames)))
        probe = frames[np.unique(np.linspace(0, len(frames) - 1, k).round().astype(int))]
        self.probe_frames = len(probe)
        measured, self.steps = signal_ratio(probe, detect, self.reference)
        self.measured = measured if np.isfinite(measured) else None
        self.ratio = measured if self.measured is not None and \
            not KEEP[0] <= measured <= KEEP[1] else 1.0
        return self.ratio
