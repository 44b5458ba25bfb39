"""How far a drift estimate can be trusted, and what is applied (SPEC §8).

:func:`~stormfold.postprocess.drift.rcc.estimate_drift_rcc` measures a
:class:`DriftReliability` (localizations per bin, correlation-peak prominence, rejected and
residual pairs, split-half and temporal precision, drift against the field);
:func:`assess_rcc` turns the figures into a verdict with the criteria below, measured in docs/postprocess.md ("Drift
reliability"). :func:`~stormfold.postprocess.drift.fiducials.estimate_drift_fiducials`
gives a :class:`FiducialSupport` (:func:`assess_fiducials`): enough frames hold a fiducial
to follow a drift, or not. :func:`drift_to_apply` gives the trajectory to subtract: the
estimate, or zeros when it is unsupported (an error or a warning) or not significant.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from stormfold.errors import UserError
from stormfold.postprocess.drift.trajectory import DriftResult, rounded


ON_UNSUPPORTED = ("error", "warn")


class _Verdict:
    """What :func:`drift_to_apply` and the records need of a reliability check."""

    verdict: str
    problems: list

    @property
    def applied(self) -> bool:
        return self.verdict == "applied"

    def to_dict(self) -> dict:
        """Plain numbers and strings (YAML-safe), for the chain's record and the report."""
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, float):
                value = rounded(value)
            out[name] = list(value) if isinstance(value, list) else value
        out["applied"] = self.applied
        return out


@dataclass
class DriftReliability(_Verdict):
    """How far an RCC estimate can be trusted, and what is done with it.

    Attributes
    ----------
    locs_per_bin_min, locs_per_bin_median : float
        Localizations per time bin (all bins).
    peak_z_min, peak_z_median : float
        Prominence of the cross-correlation peaks of the bin pairs: (peak − mean) /
        standard deviation of the correlation image. Bins that show one structure give
        sharp peaks (z ≳ 10); structureless or too sparse data give the largest of many
        random values (z ≈ 4–6).
    pairs, pairs_rejected : int
        Bin pairs, and pairs dropped as inconsistent with the others.
    pair_residual_rms_nm : float
        RMS residual of the kept pairs in the least-squares system.
    precision_nm : float or None
        Error (nm) of the trajectory: ``precision_split_half_nm`` and
        ``precision_temporal_nm`` added in quadrature. None when a half is too sparse.
    precision_split_half_nm : float or None
        Localization-noise part (nm): the data of every bin are split into two halves
        (interleaved blocks of frames), RCC is run on each, and the RMS difference of the
        two trajectories (mean removed) / 2 estimates the error of the full estimate.
    precision_temporal_nm : float or None
        Temporal part (nm): the drift between the bins' times, which the spline through
        the bins does not see (random walks, fast oscillations). Each interior bin's drift
        is predicted from the other bins; the RMS of the misses × ``LEAVE_ONE_OUT_SCALE``
        (0.6, :mod:`~stormfold.postprocess.drift.rcc`), the split-half part removed in
        quadrature. None with fewer than 3 bins. Measured against the true error (README,
        "Post-processing"): within 0.7–1.4× where the split-half figure alone was 2.5–15×
        below.
    advice : list of str
        "use more bins" when the temporal part exceeds both twice the split-half part and
        1 nm (:data:`TEMPORAL_DOMINANCE`, :data:`MIN_TEMPORAL_ADVICE_NM`); also warned.
    drift_rms_nm : float
        RMS of the estimated bin drifts about their mean (what would be corrected).
    drift_max_nm : float
        Largest estimated displacement from frame 0.
    field_nm : float
        Smaller side of the field (camera field of view, else the localizations' extent).
    verdict : {"applied", "not significant", "unsupported"}
        ``applied``: the drift is corrected; ``not significant``: the estimate does not
        exceed :data:`SIGNIFICANCE` × its precision, nothing is applied; ``unsupported``:
        the data do not support an estimate (see ``problems``), nothing is applied.
    problems : list of str
        Why the estimate is unsupported (empty otherwise).
    """

    locs_per_bin_min: float
    locs_per_bin_median: float
    peak_z_min: float
    peak_z_median: float
    pairs: int
    pairs_rejected: int
    pair_residual_rms_nm: float
    precision_nm: Optional[float]
    drift_rms_nm: float
    drift_max_nm: float
    field_nm: float
    precision_split_half_nm: Optional[float] = None
    precision_temporal_nm: Optional[float] = None
    verdict: str = "applied"
    problems: list = field(default_factory=list)
    advice: list = field(default_factory=list)

    def summary(self) -> str:
        """One line: the verdict and its figures."""
        precision = "n/a" if self.precision_nm is None else f"{self.precision_nm:.1f} nm"
        if self.precision_temporal_nm is not None and self.precision_split_half_nm is not None:
            precision += (f" (noise {self.precision_split_half_nm:.1f}, temporal "
                          f"{self.precision_temporal_nm:.1f})")
        figures = (f"RMS {self.drift_rms_nm:.1f} nm, precision {precision}, "
                   f"{self.locs_per_bin_min:.0f} localizations per bin, peak z "
                   f"{self.peak_z_median:.1f}, {self.pairs_rejected}/{self.pairs} pairs rejected")
        if self.verdict == "unsupported":
            return f"estimate not supported by the data: {'; '.join(self.problems)} ({figures})"
        if self.verdict == "not significant":
            return f"no significant drift, nothing applied ({figures})"
        return f"corrected ({figures}){''.join('; ' + a for a in self.advice)}"


#: Criteria of :func:`assess_rcc` (measured: docs/postprocess.md, "Drift reliability").
#: Fewer localizations per bin than this gave bin drifts off by 13–1700 nm (≥ 185: ≤ 7 nm).
MIN_RELIABLE_LOCS_PER_BIN = 150
#: Median correlation-peak prominence below this: no structure common to the bins.
MIN_PEAK_Z = 8.0
#: More pairs than this rejected as inconsistent: the pair system contradicts itself.
MAX_REJECTED_FRACTION = 1.0 / 3.0
#: Default: a drift larger than this fraction of the field is taken as a failure.
MAX_DRIFT_FRACTION = 0.2
#: A drift whose RMS is below this multiple of its split-half precision is not corrected
#: (the temporal error is no noise that could fake a drift: a random walk of 11.7 nm RMS,
#: estimated to 4.6 nm, is worth correcting although 11.7 < 3 × 4.9).
SIGNIFICANCE = 3.0
#: A temporal error above this multiple of the split-half precision (and above
#: :data:`MIN_TEMPORAL_ADVICE_NM`) earns the advice to use more bins: the bins, not the
#: localizations, limit the estimate.
TEMPORAL_DOMINANCE = 2.0
#: Below this temporal error (nm) more bins gain nothing worth a warning.
MIN_TEMPORAL_ADVICE_NM = 1.0


def assess_rcc(reliability: DriftReliability,
               max_drift_fraction: float = MAX_DRIFT_FRACTION) -> DriftReliability:
    """Set ``verdict``, ``problems`` and ``advice`` of ``reliability`` from the criteria
    above."""
    r = reliability
    problems = []
    if r.locs_per_bin_min < MIN_RELIABLE_LOCS_PER_BIN:
        problems.append(f"too few localizations per bin ({r.locs_per_bin_min:.0f} < "
                        f"{MIN_RELIABLE_LOCS_PER_BIN}: use fewer bins)")
    if r.peak_z_median < MIN_PEAK_Z:
        problems.append(f"no structure common to the time bins (correlation peak z "
                        f"{r.peak_z_median:.1f} < {MIN_PEAK_Z:g})")
    if r.pairs and r.pairs_rejected / r.pairs > MAX_REJECTED_FRACTION:
        problems.append(f"inconsistent pairs ({r.pairs_rejected} of {r.pairs} rejected)")
    if r.drift_max_nm > max_drift_fraction * r.field_nm:
        problems.append(f"estimated drift {r.drift_max_nm:.0f} nm exceeds "
                        f"{max_drift_fraction:.0%} of the {r.field_nm:.0f} nm field")
    if r.precision_nm is None:
        problems.append("a half of the data is too sparse to check the estimate")
    r.problems = problems
    if problems:
        r.verdict = "unsupported"
    elif r.drift_rms_nm <= SIGNIFICANCE * (r.precision_split_half_nm or r.precision_nm):
        r.verdict = "not significant"
    else:
        r.verdict = "applied"
    temporal, noise = r.precision_temporal_nm, r.precision_split_half_nm
    if (r.verdict == "applied" and temporal is not None and noise is not None
            and temporal > max(TEMPORAL_DOMINANCE * noise, MIN_TEMPORAL_ADVICE_NM)):
        r.advice = [f"the drift changes faster than the time bins follow (temporal error "
                    f"{temporal:.1f} nm > {TEMPORAL_DOMINANCE:g} × noise {noise:.1f} nm): "
                    f"use more bins"]
    return r


#: Fewer frames holding a fiducial than this do not define a trajectory: one or two frames
#: give a "drift" that is the beads' localization noise (or none at all, RMS 0).
MIN_FIDUCIAL_FRAMES = 10
#: A fiducial is rigid: its detections scatter about the common trajectory by its localization
#: precision (beads: 1–10 nm). Tracks scattering by more are other molecules picked up within
#: the linking radius (review 15: a "bead" jumping 500 nm gave 388 nm).
MAX_FIDUCIAL_SCATTER_NM = 50.0
#: Stage drift moves by well under a nanometre per frame (the demo: 80 nm in 200 frames); a
#: trajectory whose frame-to-frame steps are this large (RMS) follows jumps, not a drift.
MAX_FIDUCIAL_STEP_NM = 50.0


@dataclass
class FiducialSupport(_Verdict):
    """Whether fiducial tracks support a drift trajectory (:func:`assess_fiducials`).

    Attributes
    ----------
    n_fiducials : int
        Tracks taken as fiducials.
    frames_with_fiducials : int
        Frames holding at least one fiducial detection.
    n_frames : int
        Movie length (frames).
    uncovered_frames : list of [int, int]
        Frame spans (1-based, inclusive) before the first and after the last frame with a
        fiducial: the drift there is held at the nearest covered value, not extrapolated.
    scatter_rms_nm : float
        RMS per axis of the fiducials' detections about the common trajectory, nm.
    step_rms_nm : float
        RMS per axis of the trajectory's steps between consecutive frames with fiducials, nm.
    verdict : {"applied", "unsupported"}
    problems : list of str
    """

    n_fiducials: int
    frames_with_fiducials: int
    n_frames: int
    uncovered_frames: list = field(default_factory=list)
    scatter_rms_nm: float = 0.0
    step_rms_nm: float = 0.0
    verdict: str = "applied"
    problems: list = field(default_factory=list)

    def summary(self) -> str:
        """One line: the verdict and its figures."""
        figures = (f"{self.n_fiducials} fiducial track(s) in {self.frames_with_fiducials} "
                   f"of {self.n_frames} frames")
        if self.verdict == "unsupported":
            return f"estimate not supported by the data: {'; '.join(self.problems)} ({figures})"
        return f"corrected ({figures})"


def assess_fiducials(support: FiducialSupport) -> FiducialSupport:
    """Set ``verdict`` and ``problems`` of ``support``: at least
    :data:`MIN_FIDUCIAL_FRAMES` frames must hold a fiducial, the fiducials must scatter by at
    most :data:`MAX_FIDUCIAL_SCATTER_NM` about the trajectory, and the trajectory must not
    step by more than :data:`MAX_FIDUCIAL_STEP_NM` (RMS) from frame to frame."""
    problems = []
    if support.frames_with_fiducials < MIN_FIDUCIAL_FRAMES:
        problems.append(f"fiducials seen in only {support.frames_with_fiducials} frame(s) "
                        f"(< {MIN_FIDUCIAL_FRAMES}: too few to follow a drift)")
    if support.scatter_rms_nm > MAX_FIDUCIAL_SCATTER_NM:
        problems.append(f"the fiducials scatter by {support.scatter_rms_nm:.0f} nm RMS about "
                        f"their common trajectory (> {MAX_FIDUCIAL_SCATTER_NM:g} nm: not rigid "
                        f"beads; lower --radius-nm)")
    if support.step_rms_nm > MAX_FIDUCIAL_STEP_NM:
        problems.append(f"the trajectory jumps by {support.step_rms_nm:.0f} nm RMS from frame "
                        f"to frame (> {MAX_FIDUCIAL_STEP_NM:g} nm: not a stage drift; the "
                        f"tracks follow other molecules, lower --radius-nm)")
    support.problems = problems
    support.verdict = "unsupported" if problems else "applied"
    return support


def check_on_unsupported(value: object) -> str:
    """``on_unsupported`` checked: ``"error"`` or ``"warn"``."""
    if value not in ON_UNSUPPORTED:
        raise UserError(f"on_unsupported must be one of {', '.join(ON_UNSUPPORTED)}, got "
                        f"{value!r}")
    return str(value)


class DriftUnsupported(UserError):
    """A drift estimate the data do not support (refused: nothing is applied)."""


def drift_to_apply(result: DriftResult, on_unsupported: str = "error") -> pd.DataFrame:
    """The trajectory to subtract: the estimate when its reliability says ``applied``,
    else zeros.

    Parameters
    ----------
    result : DriftResult
    on_unsupported : {"error", "warn"}
        An unsupported estimate raises :class:`DriftUnsupported` (a one-line UserError
        naming the reasons), or gives a warning; either way nothing is applied.
    """
    check_on_unsupported(on_unsupported)
    reliability = result.reliability
    if reliability is None or reliability.applied:
        return result.drift
    if reliability.verdict == "unsupported":
        method = "RCC" if result.stats.get("method", "rcc") == "rcc" else "fiducials"
        message = f"drift ({method}): {reliability.summary()}"
        if on_unsupported == "error":
            raise DriftUnsupported(message + "; nothing applied (in `stormfold run`, the "
                                             "drift step's on_unsupported: warn continues "
                                             "without the correction)")
        warnings.warn(message + "; nothing applied", UserWarning, stacklevel=2)
    zeros = result.drift.copy()
    zeros[["dx_nm", "dy_nm"]] = 0.0
    return zeros
