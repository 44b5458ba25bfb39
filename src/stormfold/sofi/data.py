"""Training and test data of the SOFI semi-blind model: fluctuating stacks and their truth.

A *pattern* is one simulated blinking movie (preset ``sofi``: dense filaments, ON/OFF
kinetics, hundreds of frames). Each pattern becomes one training pair:

- the measured cumulant image Ĝ₂(lag) of the movie (photons², camera grid), streamed with
  :class:`~stormfold.sofi.statistics.CumulantAccumulator` while the movie is simulated
  chunk by chunk (the movie is never held in memory), and the camera-noise offset s of the
  variance-domain model (lag 0: v(F̄)(1 − 1/T) from the camera model, lag 1: −v/T);
- the fine-grid ground truth r̄: every fluorophore's *empirical* intensity cumulant over the
  same frames (the same estimator applied to its noise-free photon series), summed in the
  fine pixel that contains it — the "variance of the fluctuating sample" of the paper.

Patterns are either the simulator's random filaments (a new draw per pattern) or, as in the
paper, ``superposed`` patterns: one base set of filaments, of which each pattern superposes
``copies`` randomly rotated and translated copies (rendered as a label-density mask for the
simulator's ``mask`` structure).
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import pandas as pd

from stormfold.errors import UserError
from stormfold.sofi.statistics import CumulantAccumulator, check_order_lag
from stormfold.sofi.theory import noise_offset
from stormfold.training.guards import check_at_most

PATTERNS = ("superposed", "filaments")
#: Largest number of training patterns (50× the default): each is a simulated movie reduced
#: to its cumulant, and every outer iteration unrolls the solver on all of them.
MAX_PATTERNS = 1000


@dataclass
class SofiDataConfig:
    """How the fluctuating stacks are simulated.

    Attributes
    ----------
    preset : str
        Simulator preset (default ``sofi``); must use blinking kinetics.
    simulation : dict
        Overrides of the simulation parameters, nested like ``simulation.yaml``
        (e.g. ``{"emitters": {"sigma_nm": 140}}``).
    n_patterns : int
        Number of training patterns (one movie each; all used in every outer iteration).
    n_frames : int, optional
        Frames per movie (default: the preset's).
    lag : {0, 1}
        Time lag of the cumulant.
    patterns : {"superposed", "filaments"}
        Superposed rotated/translated copies of a base set of filaments, or the simulator's
        random filaments.
    base_filaments, copies : int
        ``superposed``: filaments in the base set and copies superposed per pattern.
    max_shift_fraction : float
        ``superposed``: largest translation as a fraction of the field of view.
    mask_pixel_nm : float
        ``superposed``: pixel of the rendered label-density mask.
    """

    preset: str = "sofi"
    simulation: dict = field(default_factory=dict)
    n_patterns: int = 20
    n_frames: Optional[int] = None
    lag: int = 0
    patterns: Literal["superposed", "filaments"] = "superposed"
    base_filaments: int = 3
    copies: int = 2
    max_shift_fraction: float = 0.25
    mask_pixel_nm: float = 5.0

    def validate(self) -> None:
        check_order_lag(2, self.lag)
        if self.n_patterns < 1:
            raise UserError(f"data.n_patterns must be ≥ 1, got {self.n_patterns}")
        check_at_most(self.n_patterns, MAX_PATTERNS, "data.n_patterns (--patterns)",
                      "each pattern is a simulated movie, all are fitted at every iteration")
        if self.n_frames is not None and self.n_frames < 2:
            raise UserError(f"data.n_frames must be ≥ 2, got {self.n_frames}")
        if self.base_filaments < 1 or self.copies < 1:
            raise UserError("data.base_filaments and data.copies must be ≥ 1")
        if not 0 <= self.max_shift_fraction <= 1 or not self.mask_pixel_nm > 0:
            raise UserError("data.max_shift_fraction must be in [0, 1] and data.mask_pixel_nm > 0")


# --------------------------------------------------------------------------- targets
def emitter_cumulants(truth: pd.DataFrame, n_frames: int, lag: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Empirical cumulant Ĝ₂(lag) of each fluorophore's noise-free photon series.

    Frames in which a fluorophore is absent from the truth count as 0 photons.

    Returns
    -------
    x_nm, y_nm, cumulant : ndarray (n_fluorophores,)
        Mean position and cumulant (photons²) of every fluorophore in the truth.
    """
    check_order_lag(2, lag)
    for col in ("emitter_id", "photons"):
        if col not in truth.columns:
            raise UserError(f"the ground truth has no {col!r} column (needed for SOFI targets)")
    if len(truth) == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    T = int(n_frames)
    _, inv = np.unique(truth["emitter_id"].to_numpy(), return_inverse=True)
    n_e = int(inv.max()) + 1
    intensity = truth["photons"].to_numpy(np.float64)
    frame = truth["frame"].to_numpy(np.int64)
    count = np.bincount(inv, minlength=n_e)
    mean = np.bincount(inv, weights=intensity, minlength=n_e) / T
    x = np.bincount(inv, weights=truth["x_nm"].to_numpy(), minlength=n_e) / count
    y = np.bincount(inv, weights=truth["y_nm"].to_numpy(), minlength=n_e) / count
    dev = intensity - mean[inv]
    if lag == 0:
        # Absent frames deviate by −mean each.
        m2 = np.bincount(inv, weights=dev * dev, minlength=n_e) + (T - count) * mean * mean
        return x, y, m2 / T
    # Σ_{t=0}^{T−2} (X_t − m)(X_{t+1} − m) with X = 0 in absent frames: pairs of present
    # consecutive frames give dev·dev'; every other pair involves a zero (deviation −m).
    order = np.lexsort((frame, inv))
    e, f, d = inv[order], frame[order], dev[order]
    nxt = (e[1:] == e[:-1]) & (f[1:] == f[:-1] + 1)
    both = np.bincount(e[:-1][nxt], weights=d[:-1][nxt] * d[1:][nxt], minlength=n_e)
    n_both = np.bincount(e[:-1][nxt], minlength=n_e)
    # Present frames t whose pair partner (t−1 or t+1, inside the movie) is absent.
    has_prev = np.zeros(len(e), bool)
    has_prev[1:] = nxt
    has_next = np.zeros(len(e), bool)
    has_next[:-1] = nxt
    single = np.bincount(e, weights=d * ((~has_prev & (f > 0)).astype(float)
                                         + (~has_next & (f < T - 1)).astype(float)),
                         minlength=n_e)
    n_single = np.bincount(e, weights=(~has_prev & (f > 0)).astype(float)
                           + (~has_next & (f < T - 1)).astype(float), minlength=n_e)
    n_zero = (T - 1) - n_both - n_single
    total = both - mean * single + n_zero * mean * mean
    return x, y, total / (T - 1)


def fine_cumulant_target(truth: pd.DataFrame, n_frames: int, fine_shape: tuple[int, int],
                         fine_pixel_nm: float, lag: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine-grid ground truth r̄ (photons² per fine pixel) and the per-fluorophore cumulants.

    Each fluorophore's empirical cumulant goes to the fine pixel that contains its position
    (floor of x/fine_px, SPEC §1), summed when several share a pixel.
    """
    from stormfold.training.targets import fine_grid_sum

    x, y, c = emitter_cumulants(truth, n_frames, lag)
    return fine_grid_sum(x, y, c, fine_shape, fine_pixel_nm)[0], c


# --------------------------------------------------------------------------- patterns
def superposed_mask(base: list[np.ndarray], width_nm: float, height_nm: float, copies: int,
                    rng: np.random.Generator, max_shift_fraction: float = 0.25,
                    mask_pixel_nm: float = 5.0, label_spread_nm: float = 10.0) -> np.ndarray:
    """Label-density image of ``copies`` rotated and translated copies of base filaments.

    Each copy is rotated by a uniform angle about the centre of the field and shifted by up
    to ``max_shift_fraction`` of the field along each axis; the polylines are sampled every
    mask pixel/4, histogrammed on a grid of ``mask_pixel_nm`` and blurred by the label
    spread. Returns a (rows, cols) float64 image (not normalised); empty copies are redrawn.
    """
    from scipy.ndimage import gaussian_filter

    cols = max(1, int(round(width_nm / mask_pixel_nm)))
    rows = max(1, int(round(height_nm / mask_pixel_nm)))
    centre = np.array([width_nm / 2, height_nm / 2])
    pts = []
    for poly in base:
        seg = np.diff(poly, axis=0)
        n = np.maximum(np.ceil(np.linalg.norm(seg, axis=1) / (mask_pixel_nm / 4)), 1).astype(int)
        t = np.concatenate([np.arange(k) / k for k in n])
        pts.append(np.repeat(poly[:-1], n, axis=0) + np.repeat(seg, n, axis=0) * t[:, None])
    pts = np.concatenate(pts) - centre
    image = np.zeros(rows * cols)
    done = 0
    for _ in range(50 * copies):
        angle = rng.uniform(0, 2 * np.pi)
        shift = rng.uniform(-max_shift_fraction, max_shift_fraction, 2) * [width_nm, height_nm]
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        p = pts @ rot.T + centre + shift
        c = np.floor(p[:, 0] / mask_pixel_nm).astype(np.int64)
        r = np.floor(p[:, 1] / mask_pixel_nm).astype(np.int64)
        ok = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
        if ok.mean() < 0.2:  # a copy mostly outside the field: draw another transform
            continue
        image += np.bincount(r[ok] * cols + c[ok], minlength=rows * cols)
        done += 1
        if done == copies:
            break
    if done < copies:
        raise UserError("could not place the filament copies inside the field of view")
    image = image.reshape(rows, cols)
    if label_spread_nm > 0:
        image = gaussian_filter(image, label_spread_nm / mask_pixel_nm, mode="constant")
    return np.maximum(image, 0.0)


def pattern_seed(seed: int, index: int) -> int:
    """Simulation seed of pattern ``index`` of a data set with seed ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def pattern_config(data: SofiDataConfig, seed: int, index: int, mask_dir: Path | None = None):
    """The :class:`SimulationConfig` of pattern ``index`` (writes its mask into ``mask_dir``)."""
    from stormfold.config import merge
    from stormfold.simulate import build_config
    from stormfold.simulate.structures import make_filaments

    sim_seed = pattern_seed(seed, index)
    cfg = build_config(preset=data.preset, overrides=dict(data.simulation),
                       n_frames=data.n_frames, seed=sim_seed)
    if cfg.activation.model != "kinetics":
        raise UserError(f"SOFI needs blinking kinetics: preset {data.preset!r} has "
                        f"activation.model={cfg.activation.model}")
    if cfg.drift.active:
        raise UserError("SOFI training data must be drift-free (drift.* must be 0)")
    if data.patterns == "filaments":
        return cfg
    if data.patterns != "superposed":
        raise UserError(f"unknown data.patterns {data.patterns!r}: use {' or '.join(PATTERNS)}")
    import tifffile

    width, height = cfg.n_cols * cfg.pixel_size_nm, cfg.n_rows * cfg.pixel_size_nm
    base = make_filaments(data.base_filaments, width, height, cfg.structure.persistence_length_nm,
                          np.random.default_rng([int(seed), 7]))
    mask = superposed_mask(base, width, height, data.copies,
                           np.random.default_rng([int(seed), 8, int(index)]),
                           data.max_shift_fraction, data.mask_pixel_nm,
                           cfg.structure.label_spread_nm)
    path = Path(mask_dir) / f"pattern_{index:04d}.tif"
    tifffile.imwrite(path, mask.astype(np.float32))
    overrides = merge(dict(data.simulation), {"structure": {"kind": "mask", "mask": str(path)}})
    return build_config(preset=data.preset, overrides=overrides, n_frames=data.n_frames,
                        seed=sim_seed)


# --------------------------------------------------------------------------- samples
@dataclass
class SofiSample:
    """One pattern: its statistics (camera grid, photons) and fine-grid truth."""

    cumulant: np.ndarray      # (rows, cols) Ĝ₂(lag), photons²
    offset: np.ndarray        # (rows, cols) camera-noise term s, photons²
    mean: np.ndarray          # (rows, cols) temporal mean, photons
    target: np.ndarray        # (rows·L, cols·L) r̄, photons² per fine pixel
    emitter_cumulants: np.ndarray
    truth_xy_nm: np.ndarray   # (n_fluorophores, 2) positions (x, y)
    config: Any


def simulate_sample(config: Any, lag: int, upsampling: int) -> SofiSample:
    """Simulate one fluctuating movie chunk by chunk and reduce it to a :class:`SofiSample`."""
    from stormfold.simulate.simulator import iter_movie, simulate_truth

    truth, _ = simulate_truth(config)
    acc = CumulantAccumulator()
    for _, frames in iter_movie(config, truth):
        acc.update(frames)
    stats = acc.result().to_photons(config.camera)
    L = int(upsampling)
    fine_shape = (config.n_rows * L, config.n_cols * L)
    target, per_emitter = fine_cumulant_target(truth, config.n_frames, fine_shape,
                                               config.pixel_size_nm / L, lag)
    x, y, _ = emitter_cumulants(truth, config.n_frames, lag)
    return SofiSample(stats.cumulant(lag), noise_offset(config.camera, stats.mean,
                                                       config.n_frames, lag),
                      stats.mean, target, per_emitter, np.column_stack([x, y]), config)


@dataclass
class SofiDataset:
    """Stacked samples: arrays (M, ...) ready for the solver, and their configurations."""

    cumulants: np.ndarray
    offsets: np.ndarray
    means: np.ndarray
    targets: np.ndarray
    emitter_cumulants: list[np.ndarray]
    truth_xy_nm: list[np.ndarray]
    configs: list[Any]
    lag: int
    upsampling: int

    @property
    def pixel_size_nm(self) -> float:
        return float(self.configs[0].pixel_size_nm)

    @property
    def sigma_nm(self) -> float:
        return float(self.configs[0].emitters.sigma_nm)

    def __len__(self) -> int:
        return len(self.configs)


def build_dataset(data: SofiDataConfig, seed: int, upsampling: int, first_index: int = 0,
                  n_patterns: int | None = None, progress: bool = False) -> SofiDataset:
    """Simulate patterns ``first_index … first_index + n − 1`` of the data set ``seed``.

    Training uses indices 0 … n_patterns−1; held-out test sets continue after them, so they
    share the base filaments (``superposed``) but never a movie.
    """
    from tqdm import tqdm

    data.validate()
    n = data.n_patterns if n_patterns is None else int(n_patterns)
    samples = []
    with tempfile.TemporaryDirectory(prefix="stormfold-sofi-") as tmp:
        for index in tqdm(range(first_index, first_index + n), desc="simulate SOFI patterns",
                          unit="pattern", disable=not progress, leave=False):
            cfg = pattern_config(data, seed, index, Path(tmp))
            samples.append(simulate_sample(cfg, data.lag, upsampling))
    shapes = {s.cumulant.shape for s in samples}
    if len(shapes) != 1:
        raise UserError("all SOFI patterns must have the same frame size")
    return SofiDataset(np.stack([s.cumulant for s in samples]),
                       np.stack([s.offset for s in samples]),
                       np.stack([s.mean for s in samples]),
                       np.stack([s.target for s in samples]),
                       [s.emitter_cumulants for s in samples],
                       [s.truth_xy_nm for s in samples],
                       [s.config for s in samples], data.lag, int(upsampling))
