"""Is a movie inside the domain a model was trained on? A cheap one-line warning if not.

Deep-STORM and the unrolled solver learn from one simulation (``model.yaml`` records it)
and degrade silently away from it (review 12: 300-photon emitters give no localization,
a background of 300 photons per pixel gives 9× too many). The engine measures three
numbers on the first batch of frames it gets (already in photons; nothing else is read),
compares them with the training simulation and warns once when one is clearly outside:

* background, photons per pixel: per frame, the 10th percentile p of the pixels raised by
  1.28·√(p + 1) (where the 10th percentile of Poisson noise around b lies), median over
  the frames;
* signal per localization, photons: the frames' total photons above that background
  (clamped at 0) divided by the number of localizations. It is the emitters' photons when
  the engine finds them, and grows when it misses them (no localization: infinite);
* localizations per µm² per frame.

The classic MLE and gridnet have no training simulation to compare with but a density
beyond which they are badly wrong: :class:`DensityCheck` warns on it.

The margins (:data:`MARGINS`, :data:`UNROLLED_MARGINS`) were chosen from simulations of the
training simulations with one parameter changed and from the real movies (README,
"Training domain").
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from stormfold.localize.background import background_level

#: A movie is outside the domain when its background exceeds the training background by
#: more than ``background_above`` × the training photons per emitter, when its signal per
#: localization is below ``photons_below`` × or above ``photons_above`` × the training
#: photons, or when its localization density exceeds ``density_above`` × the training
#: density. Deep-STORM (zerocost, 2250 photons): background > 45 photons/px, signal outside
#: 750–6750 photons, more than 12 localizations/µm².
MARGINS = {"background_above": 0.02, "photons_below": 1 / 3, "photons_above": 3.0,
           "density_above": 2.0}
#: The unrolled solver estimates the background per frame: its accuracy holds up to a
#: background of 100 photons at 470 photons per emitter (measured), hence a wider margin.
#: Its model is linear in the photons, so brighter emitters are no harm (`zerocost`, 2,250
#: photons: JI@100 0.985 at 0.5/µm² in benchmarks/engines.py, signal 2,356): only dimmer
#: ones are flagged.
UNROLLED_MARGINS = {**MARGINS, "background_above": 0.2, "photons_above": math.inf}


@dataclass(frozen=True)
class TrainingDomain:
    """What a model's training simulation had (``model.yaml``).

    Attributes
    ----------
    photons : float
        Mean photons per emitter.
    background : float
        Background, photons per pixel.
    density_per_um2 : float
        Active emitters per µm² per frame.
    preset : str
        Name of the simulation preset (for the message).
    sigma_nm : float or None
        PSF σ, nm.
    """

    photons: float
    background: float
    density_per_um2: float
    preset: str = "training"
    sigma_nm: float | None = None

    @classmethod
    def from_simulation(cls, sim) -> "TrainingDomain | None":
        """The domain of a simulation mapping (``simulation`` section); None when it lacks
        one of the numbers."""
        try:
            domain = cls(photons=float(sim["emitters"]["photons_mean"]),
                         background=float(sim["background"]["photons"] or 0.0),
                         density_per_um2=float(sim["activation"]["density_per_um2"]),
                         preset=str(sim.get("preset") or "training"),
                         sigma_nm=float(sim["emitters"]["sigma_nm"]))
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        return domain if domain.photons > 0 and domain.density_per_um2 > 0 else None

    @classmethod
    def from_meta(cls, meta: dict) -> "TrainingDomain | None":
        """The training simulation of a model's metadata: Deep-STORM's
        ``training_data.simulation`` or the unrolled model's ``training.data.simulation``;
        None for a model trained on a movie."""
        for path in (("training_data", "simulation"), ("training", "data", "simulation")):
            node = meta
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
            if isinstance(node, dict):
                return cls.from_simulation(node)
        return None


@dataclass(frozen=True)
class MovieStats:
    """The three numbers measured on a batch (see the module docstring)."""

    background: float  # photons per pixel
    photons: float  # signal per localization (inf: signal but no localization)
    density_per_um2: float  # localizations per µm² per frame


def movie_stats(photons: np.ndarray, n_localizations: int, pixel_size_nm: float) -> MovieStats:
    """Measure a batch of frames in photons.

    Parameters
    ----------
    photons : (n, rows, cols) or (rows, cols) array
        Frames, photons per pixel.
    n_localizations : int
        Localizations the engine found in them.
    pixel_size_nm : float
        Camera pixel size, nm.
    """
    frames = np.asarray(photons, dtype=np.float32)
    frames = frames[None] if frames.ndim == 2 else frames
    n, rows, cols = frames.shape
    bg = background_level(frames)
    flux = float(frames.sum(dtype=np.float64) - rows * cols * bg.sum())
    density = density_per_um2(frames.shape, n_localizations, pixel_size_nm)
    signal = flux / n_localizations if n_localizations else (math.inf if flux > 0 else math.nan)
    return MovieStats(background=float(np.median(bg)), photons=signal,
                      density_per_um2=density)


def density_per_um2(shape: tuple[int, ...], n_localizations: int,
                    pixel_size_nm: float) -> float:
    """Localizations per µm² per frame of a batch.

    Parameters
    ----------
    shape : (n, rows, cols) or (rows, cols)
        Shape of the batch, frames and pixels.
    n_localizations : int
        Localizations the engine found in it.
    pixel_size_nm : float
        Camera pixel size, nm.
    """
    n, rows, cols = (1, *shape) if len(shape) == 2 else shape
    return n_localizations / (n * rows * cols * (pixel_size_nm / 1000.0) ** 2)


def domain_message(stats: MovieStats, domain: TrainingDomain,
                   margins: dict | None = None) -> str | None:
    """One line naming what is outside the training domain, or None."""
    m, out = margins or MARGINS, []
    if stats.background > domain.background + m["background_above"] * domain.photons:
        out.append(f"background {stats.background:.0f} photons/px (trained at "
                   f"{domain.background:g})")
    if math.isfinite(stats.photons) and not (
            m["photons_below"] * domain.photons <= stats.photons
            <= m["photons_above"] * domain.photons):
        out.append(f"{stats.photons:.0f} photons of signal per localization (trained at "
                   f"{domain.photons:g} photons per emitter)")
    elif stats.photons == math.inf:
        out.append("no localization in frames with signal")
    if stats.density_per_um2 > m["density_above"] * domain.density_per_um2:
        out.append(f"{stats.density_per_um2:.1f} localizations/µm² per frame (trained at "
                   f"{domain.density_per_um2:g})")
    if not out:
        return None
    return (f"first frames outside the model's training domain (its simulation, from the "
            f"{domain.preset} preset): {'; '.join(out)}; the table may be badly wrong (use "
            f"gridnet or a model trained for this movie)")


class DomainCheck:
    """Checks the first batch an engine sees against its training domain and warns once
    (:func:`warnings.warn`, a :class:`UserWarning`: one line from the CLI; ``stormfold run``
    also writes it to run.log, run.yaml and the report).

    Parameters
    ----------
    domain : TrainingDomain or None
        None: nothing is checked.
    margins : dict, optional
        :data:`MARGINS` by default.

    Attributes
    ----------
    warn : callable(str) or None
        Where the warning goes instead of :func:`warnings.warn` (``stormfold run`` sets its
        own).
    message : str or None
        The warning given, if any.
    """

    def __init__(self, domain: TrainingDomain | None, margins: dict | None = None):
        self.domain = domain
        self.margins = margins or MARGINS
        self.reset()

    def reset(self, warn=None) -> None:
        """Check the next batch again (a new movie), warning through ``warn``."""
        self.done = self.domain is None
        self.message: str | None = None
        self.warn = warn

    def __call__(self, photons: np.ndarray, n_localizations: int,
                 pixel_size_nm: float) -> None:
        """Check a batch (frames in photons, its number of localizations) unless done."""
        if self.done:
            return
        self.done = True
        stats = movie_stats(photons, n_localizations, pixel_size_nm)
        self.message = domain_message(stats, self.domain, self.margins)
        if self.message:
            emit(self.message, self.warn)


def emit(message: str, warn=None) -> None:
    """Give a one-line warning through ``warn`` or :func:`warnings.warn`."""
    if warn is not None:
        warn(message)
    else:
        warnings.warn(message, UserWarning, stacklevel=4)


#: The classic MLE fits one emitter per spot: warn when its first batch holds more than this
#: many localizations per µm² per frame. It merges crowded neighbours and so reports fewer
#: than there are (experiments/density_warning.py, `zerocost` 64 × 64 × 16 frames, background
#: 0 and 30 photons/px; true → reported (JI@100)): 1.0 → 0.79–0.80 (0.640–0.648), 1.2 →
#: 0.91 (0.583–0.594), 1.5 → 1.09–1.10 (0.571–0.590), 2 → 1.26–1.27 (0.468–0.481), 5 →
#: 1.68–1.69 (0.25). Its JI@100 falls below 0.6 at a true ~1.2/µm²; 1.0 reported (a true
#: ~1.35) stays above a first batch of 4 frames at a true 1.0 (8 seeds: 0.77–0.85). Beyond
#: a true ~8/µm² the reported density falls back below 1 (0.86 at 10/µm², JI 0.08): the
#: check cannot see such movies.
CLASSIC_DENSITY_ABOVE = 1.0
#: gridnet warns when its first batch holds more than this × the model's largest training
#: density (10/µm² for the generalist, so 12). It reports close to the truth up to
#: 15/µm² (experiments/density_warning.py; true → reported (JI@100)): 10 → 10.2 (0.82),
#: 12 → 12.1 (0.78), 15 → 14.6–14.7 (0.75), 20 → 17.0 (0.69), 30 → 20.7 (0.59). 20 % is
#: above the spread of a first batch of 4 frames at the training maximum (true 10/µm²,
#: 8 seeds: 10.7–11.4).
GRIDNET_DENSITY_MARGIN = 1.2


class DensityCheck:
    """Warns once when the first batch an engine sees holds more localizations per µm² per
    frame than the engine handles (:data:`CLASSIC_DENSITY_ABOVE`,
    :data:`GRIDNET_DENSITY_MARGIN`).

    Parameters
    ----------
    limit_per_um2 : float
        Largest density (localizations per µm² per frame) that does not warn.
    consequence : str
        What goes wrong above it and what to do (the end of the one-line message).

    Attributes
    ----------
    warn : callable(str) or None
        As :attr:`DomainCheck.warn`.
    message : str or None
        The warning given, if any.
    density : float or None
        Localizations per µm² per frame of the batch checked.
    """

    def __init__(self, limit_per_um2: float, consequence: str):
        self.limit = float(limit_per_um2)
        self.consequence = consequence
        self.reset()

    def reset(self, warn=None) -> None:
        """Check the next batch again (a new movie), warning through ``warn``."""
        self.done = False
        self.message: str | None = None
        self.density: float | None = None
        self.warn = warn

    def __call__(self, shape: tuple[int, ...], n_localizations: int,
                 pixel_size_nm: float) -> None:
        """Check a batch (its shape, (n, rows, cols), and number of localizations) unless
        done; ``pixel_size_nm`` in nm."""
        if self.done:
            return
        self.done = True
        self.density = density_per_um2(shape, n_localizations, pixel_size_nm)
        if self.density > self.limit:
            self.message = (f"first frames hold {self.density:.1f} localizations/µm² per frame "
                            f"(more than {self.limit:g}): {self.consequence}")
            emit(self.message, self.warn)


#: A fitted σ is "at a bound" within this relative distance of it.
SIGMA_BOUND_TOLERANCE = 0.02
#: Warn when at least this share of the refined emitters sit at one bound (measured on 8
#: frames at 0.5/µm²: 0 % at σ 1.1–1.5 px, ≤ 33 % at 0.8 and 1.9 px, about 50 % on a
#: bound (0.7, 2.0 px), 56–100 % at 0.5, 2.2 and 2.5 px; at 3 px only 37 %: the network
#: then cuts one PSF into several dimmer detections) ...
SIGMA_BOUND_SHARE = 0.4
#: ... or this share at the upper bound. Crowded or noisy frames put fewer emitters there
#: (`experiments/binning.py`: 11–15 % at σ 1.8 px, 26–66 % at 2.2–3.0 px at 1–4/µm² and
#: with an EMCCD). A PSF above the range is also the one binning (``--set bin=2``) brings
#: back into it.
SIGMA_BOUND_SHARE_ABOVE = 0.25
#: ... once at least this many emitters were refined.
SIGMA_MIN_EMITTERS = 50


class SigmaBoundCheck:
    """Counts refined emitters whose fitted PSF σ sits at a bound of the model's σ range
    and warns once when a large share does (the movie's PSF is then likely outside the
    range; see :data:`SIGMA_BOUND_SHARE`).

    Parameters
    ----------
    sigma_range_px : (float, float)
        The model's σ range, px (the refinement's bounds).

    Attributes
    ----------
    warn : callable(str) or None
        As :attr:`DomainCheck.warn`.
    counts : ndarray of int
        Emitters counted, at the lower bound, at the upper bound.
    """

    def __init__(self, sigma_range_px: tuple[float, float]):
        self.lo, self.hi = (float(s) for s in sigma_range_px)
        self.reset()

    def reset(self, warn=None) -> None:
        """Count from zero again (a new movie), warning through ``warn``."""
        self.counts = np.zeros(3, np.int64)
        self.done = False
        self.message: str | None = None
        self.warn = warn

    #: The binning the movie already has (set by :class:`stormfold.localize.binning.
    #: BinnedEngine`): the advice names twice it.
    bin_factor: int = 1

    def _bin_hint(self, side: str) -> str:
        # A PSF too wide in pixels fits the range once pixels are summed 2 × 2 (more).
        return f", or bin the pixels: --set bin={2 * self.bin_factor}" if side == "above" \
            else ""

    def shares(self) -> tuple[float, float]:
        """Shares of the counted emitters at the lower and the upper bound."""
        n = max(int(self.counts[0]), 1)
        return self.counts[1] / n, self.counts[2] / n

    def __call__(self, sigma_px: np.ndarray) -> None:
        """Count a batch's fitted σ (px) and warn once the share at a bound is large."""
        if self.done:
            return
        s = np.asarray(sigma_px, dtype=np.float64)
        s = s[np.isfinite(s)]
        tol = SIGMA_BOUND_TOLERANCE
        self.counts += [s.size, np.count_nonzero(s <= self.lo * (1 + tol)),
                        np.count_nonzero(s >= self.hi * (1 - tol))]
        if self.counts[0] < SIGMA_MIN_EMITTERS:
            return
        low, high = self.shares()
        if high >= SIGMA_BOUND_SHARE_ABOVE or low >= SIGMA_BOUND_SHARE:
            self.done = True
            side, share, bound = ("above", high, self.hi) if high >= SIGMA_BOUND_SHARE_ABOVE \
                else ("below", low, self.lo)
            self.message = (f"{share:.0%} of the first {self.counts[0]} refined emitters "
                            f"have their fitted PSF sigma at the model's bound {bound:g} px: "
                            f"the movie's PSF is probably at the edge of or {side} the range "
                            f"{self.lo:g}–{self.hi:g} px it was trained for (accuracy drops "
                            f"beyond it; give --set sigma_nm= to check{self._bin_hint(side)})")
            emit(self.message, self.warn)
