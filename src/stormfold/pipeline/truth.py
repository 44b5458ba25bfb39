"""Evaluation of a run against a drifting ground truth."""
from __future__ import annotations

import pandas as pd

from stormfold.errors import UserError


def truth_in_corrected_frame(truth: pd.DataFrame, true_drift: pd.DataFrame,
                             estimated: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Move a drifting truth into the frame of drift-corrected localizations.

    Localizations at p + d(f) corrected with an estimate d̂ = d − c sit at p + c: drift
    correction cannot know the constant c, so the truth gets the same constant, taken as the
    mean of d − d̂ over the frames (the convention of the residual, see
    :func:`stormfold.postprocess.drift.residual_rms_nm`).

    Returns
    -------
    truth : pandas.DataFrame
        The truth at p + c (nm).
    true_drift : pandas.DataFrame
        d − c: the true trajectory comparable with the estimate (nm).
    residual_nm : float
        RMS of d̂ − d after removing c.
    """
    from stormfold.postprocess.drift import apply_drift, residual_rms_nm

    merged = true_drift.merge(estimated, on="frame", suffixes=("_true", "_est"))
    if not len(merged):
        raise UserError("evaluation.truth_drift: shares no frame with the estimated drift")
    shifted = true_drift.copy()
    shifted["dx_nm"] -= float((merged["dx_nm_true"] - merged["dx_nm_est"]).mean())
    shifted["dy_nm"] -= float((merged["dy_nm_true"] - merged["dy_nm_est"]).mean())
    return apply_drift(truth, shifted), shifted, residual_rms_nm(estimated, true_drift)
