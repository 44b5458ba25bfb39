"""Structures: where fluorophores can be (uniform, filaments, image mask)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stormfold.errors import UserError
from stormfold.simulate.config import SimulationConfig, StructureConfig


@dataclass
class Structure:
    """A sampler of label positions inside a field of view of ``width_nm`` × ``height_nm``."""

    config: StructureConfig
    width_nm: float
    height_nm: float
    filaments: list[np.ndarray] | None = None  # (n_points, 2) polylines in nm, for "filaments"
    mask: np.ndarray | None = None  # normalised probabilities, for "mask"

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draw ``n`` positions (x_nm, y_nm) inside the field of view."""
        if n == 0:
            return np.zeros(0), np.zeros(0)
        kind = self.config.kind
        if kind == "uniform":
            return rng.uniform(0, self.width_nm, n), rng.uniform(0, self.height_nm, n)
        if kind == "filaments":
            return self._sample_filaments(n, rng)
        return self._sample_mask(n, rng)

    # ------------------------------------------------------------------ filaments
    def _sample_filaments(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        segments = np.concatenate([np.stack([p[:-1], p[1:]], axis=1) for p in self.filaments])
        lengths = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1)
        # Oversample, then keep points that land in the field of view (filaments cross its edge).
        xs, ys = [], []
        need = n
        while need > 0:
            m = int(need * 1.5) + 16
            seg = rng.choice(len(segments), size=m, p=lengths / lengths.sum())
            t = rng.uniform(0, 1, m)[:, None]
            a, b = segments[seg, 0], segments[seg, 1]
            points = a + t * (b - a)
            tangent = (b - a) / lengths[seg, None]
            normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
            points += normal * rng.normal(0, self.config.label_spread_nm, m)[:, None]
            inside = ((points[:, 0] >= 0) & (points[:, 0] < self.width_nm)
                      & (points[:, 1] >= 0) & (points[:, 1] < self.height_nm))
            points = points[inside][:need]
            xs.append(points[:, 0])
            ys.append(points[:, 1])
            need -= len(points)
        return np.concatenate(xs), np.concatenate(ys)

    # ------------------------------------------------------------------ mask
    def _sample_mask(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        rows, cols = self.mask.shape
        flat = rng.choice(self.mask.size, size=n, p=self.mask.ravel())
        r, c = np.divmod(flat, cols)
        x = (c + rng.uniform(0, 1, n)) * (self.width_nm / cols)
        y = (r + rng.uniform(0, 1, n)) * (self.height_nm / rows)
        return x, y


def make_filaments(n_filaments: int, width_nm: float, height_nm: float,
                   persistence_length_nm: float, rng: np.random.Generator,
                   step_nm: float = 20.0) -> list[np.ndarray]:
    """Random worm-like-chain curves crossing a ``width_nm`` × ``height_nm`` field.

    Each filament starts at a random point of the field with a random direction and grows
    both ways with steps of ``step_nm`` whose direction changes by
    Normal(0, √(step/persistence)) radians, until it leaves a margin around the field.
    Vectorised over filaments; the loop runs over steps.

    Returns
    -------
    list of (n_points, 2) arrays of (x_nm, y_nm) vertices.
    """
    margin = 0.25 * max(width_nm, height_nm)
    n_steps = int(np.ceil(2.5 * (width_nm + height_nm + 2 * margin) / step_nm))
    start = np.stack([rng.uniform(0, width_nm, n_filaments),
                      rng.uniform(0, height_nm, n_filaments)], axis=1)
    angle0 = rng.uniform(0, 2 * np.pi, n_filaments)
    halves = []
    for direction in (0.0, np.pi):
        turns = rng.normal(0, np.sqrt(step_nm / persistence_length_nm), (n_steps, n_filaments))
        angle = angle0 + direction + np.cumsum(turns, axis=0)
        steps = step_nm * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
        halves.append(start[None] + np.cumsum(steps, axis=0))  # (n_steps, n_filaments, 2)
    curves = []
    for f in range(n_filaments):
        path = np.concatenate([halves[1][::-1, f], start[f:f + 1], halves[0][:, f]])
        inside = ((path[:, 0] > -margin) & (path[:, 0] < width_nm + margin)
                  & (path[:, 1] > -margin) & (path[:, 1] < height_nm + margin))
        # Keep the contiguous run through the start point, not pieces that wander back in.
        centre = n_steps
        lo = centre - np.argmin(inside[centre::-1]) + 1 if not inside[centre::-1].all() else 0
        hi = centre + np.argmin(inside[centre:]) if not inside[centre:].all() else len(path)
        curves.append(path[lo:hi])
    return curves


def load_mask(path: str | Path, key: str = "structure.mask") -> np.ndarray:
    """Read a mask image as a 2-D array of probabilities (non-negative, sums to 1); ``key``
    is the configuration key that named it (``background.map`` uses the same reader)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: file not found: {path}")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            image = tifffile.imread(path)
        else:
            import matplotlib.image

            image = matplotlib.image.imread(path)
    except Exception as exc:  # any decoder failure is a bad user file
        raise UserError(f"{key}: cannot read {path} as an image ({exc})") from None
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:  # colour or stack: average to one plane
        image = image.mean(axis=-1 if image.shape[-1] in (3, 4) else 0)
    if image.ndim != 2 or not np.all(np.isfinite(image)) or image.min() < 0 or image.sum() <= 0:
        raise UserError(f"{key}: {path} must be a non-negative 2-D image with some signal")
    return image / image.sum()


def make_structure(config: SimulationConfig, rng: np.random.Generator) -> Structure:
    """Instantiate the structure of a simulation (filament curves are drawn here, once)."""
    width = config.n_cols * config.pixel_size_nm
    height = config.n_rows * config.pixel_size_nm
    sc = config.structure
    if sc.kind == "filaments":
        curves = make_filaments(sc.n_filaments, width, height, sc.persistence_length_nm, rng)
        return Structure(sc, width, height, filaments=curves)
    if sc.kind == "mask":
        return Structure(sc, width, height, mask=load_mask(sc.mask))
    return Structure(sc, width, height)
