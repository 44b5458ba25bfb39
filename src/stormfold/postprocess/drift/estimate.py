"""The drift step: its parameters, the choice of estimator, and the correction.

``method: rcc`` (:mod:`~stormfold.postprocess.drift.rcc`) or ``method: fiducials``
(:mod:`~stormfold.postprocess.drift.fiducials`); what an estimate may correct is
decided by :mod:`~stormfold.postprocess.drift.reliability`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import pandas as pd

from stormfold.errors import UserError
from stormfold.postprocess.drift.fiducials import estimate_drift_fiducials
from stormfold.postprocess.drift.rcc import estimate_drift_rcc
from stormfold.postprocess.drift.reliability import check_on_unsupported, drift_to_apply
from stormfold.postprocess.drift.trajectory import DriftResult, apply_drift
from stormfold.table import check_length_nm

METHODS = ("rcc", "fiducials")


@dataclass
class DriftParams:
    """Parameters of :func:`estimate_drift` (the ``drift`` section of a post-processing YAML).

    Attributes
    ----------
    method : {"rcc", "fiducials"}
        Redundant cross-correlation, or fiducial tracks.
    bins : int
        RCC: number of time bins (≥ 2).
    pixel_nm : float
        RCC: pixel size (nm) of the bin renderings.
    max_shift_nm : float or None
        RCC: largest drift between two bins searched (nm; None: the whole image).
    max_residual_nm : float or None
        RCC: pairs whose least-squares residual exceeds this are rejected
        (nm; None: 2 × pixel_nm).
    blur_nm : float or None
        RCC: Gaussian σ (nm) applied to the bin renderings (None: pixel_nm).
    interpolation : {"cubic", "linear"}
        RCC: how bin drifts are interpolated to every frame.
    radius_nm, max_dark : float, int
        Fiducials: linking radius (nm) and allowed dark frames.
    min_fraction : float
        Fiducials: a track present in at least this fraction of the frames is a fiducial.
    smooth_frames : int
        Fiducials: moving-average window (frames) of the averaged track (1: none).
    max_drift_fraction : float
        RCC: an estimated drift larger than this fraction of the field is taken as a
        failure of the estimate (raise it for a stage known to drift that far).
    on_unsupported : {"error", "warn"}
        An estimate the data do not support (RCC: :class:`DriftReliability`; fiducials:
        fewer than 10 frames with a fiducial, :class:`FiducialSupport`) stops the chain with
        a one-line error, or is reported as a warning; nothing is applied.
    """

    method: Literal["rcc", "fiducials"] = "rcc"
    bins: int = 10
    pixel_nm: float = 20.0
    max_shift_nm: Optional[float] = None
    max_residual_nm: Optional[float] = None
    blur_nm: Optional[float] = None
    interpolation: Literal["cubic", "linear"] = "cubic"
    radius_nm: float = 50.0
    max_dark: int = 2
    min_fraction: float = 0.5
    smooth_frames: int = 1
    max_drift_fraction: float = 0.2
    on_unsupported: Literal["error", "warn"] = "error"

    def validate(self) -> None:
        if self.bins < 2:
            raise UserError(f"drift: bins must be ≥ 2, got {self.bins}")
        for name in ("pixel_nm", "radius_nm"):
            check_length_nm(getattr(self, name), f"drift: {name}")
        for name in ("max_shift_nm", "max_residual_nm", "blur_nm"):
            if getattr(self, name) is not None:
                check_length_nm(getattr(self, name), f"drift: {name} (or null)")
        if self.max_dark < 0:
            raise UserError(f"drift: max_dark must be ≥ 0, got {self.max_dark}")
        if not 0 < self.min_fraction <= 1:
            raise UserError(f"drift: min_fraction must be in (0, 1], got {self.min_fraction}")
        if not 0 < self.max_drift_fraction <= 1:
            raise UserError(f"drift: max_drift_fraction must be in (0, 1], got "
                            f"{self.max_drift_fraction}")
        if self.smooth_frames < 1:
            raise UserError(f"drift: smooth_frames must be ≥ 1, got {self.smooth_frames}")
        check_on_unsupported(self.on_unsupported)


def estimate_drift(table: pd.DataFrame, method: str = "rcc", n_frames: Optional[int] = None,
                   **params) -> DriftResult:
    """Estimate the drift with ``method`` (``"rcc"`` or ``"fiducials"``).

    ``params`` are the keyword arguments of :func:`estimate_drift_rcc` or
    :func:`estimate_drift_fiducials`; :class:`DriftParams` fields are accepted too
    (``bins`` for ``n_bins``; fields of the other method are ignored).
    """
    if method == "rcc":
        keys = {"bins": "n_bins", "n_bins": "n_bins", "pixel_nm": "pixel_nm",
                "max_shift_nm": "max_shift_nm", "max_residual_nm": "max_residual_nm",
                "blur_nm": "blur_nm", "interpolation": "interpolation", "field_nm": "field_nm",
                "max_drift_fraction": "max_drift_fraction"}
        return estimate_drift_rcc(table, n_frames=n_frames,
                                  **{keys[k]: v for k, v in params.items() if k in keys})
    if method == "fiducials":
        keys = ("radius_nm", "max_dark", "min_fraction", "smooth_frames", "iterations")
        return estimate_drift_fiducials(table, n_frames=n_frames,
                                        **{k: v for k, v in params.items() if k in keys})
    raise UserError(f"unknown drift method {method!r}: choose one of {', '.join(METHODS)}")


def correct_drift(table: pd.DataFrame, method: str = "rcc", n_frames: Optional[int] = None,
                  on_unsupported: str = "error", **params) -> tuple[pd.DataFrame, DriftResult]:
    """Estimate the drift (:func:`estimate_drift`) and subtract what the estimate's
    reliability allows (:func:`drift_to_apply`, :func:`apply_drift`).

    Parameters
    ----------
    on_unsupported : {"error", "warn"}
        An estimate the data do not support raises :class:`DriftUnsupported`, or
        warns; either way nothing is subtracted. A drift that is not significant is not
        subtracted either (no error).

    Returns
    -------
    corrected : pandas.DataFrame
    result : DriftResult
    """
    check_on_unsupported(on_unsupported)
    result = estimate_drift(table, method, n_frames=n_frames, **params)
    return apply_drift(table, drift_to_apply(result, on_unsupported)), result
