"""Threshold calibration: the extraction threshold with the best Jaccard index on held-back
frames (SPEC §4, §10), for any engine.

The engine supplies a *decoder*: ``decode(threshold) -> localization table`` on frames it has
already processed once (the network or solver runs once; only the cheap extraction is
repeated per candidate). The table is matched against the truth at ``tolerance_nm``; the
best candidate wins, the lowest one among ties.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd


@dataclass
class Calibration:
    """Result of the threshold calibration.

    Attributes
    ----------
    threshold : float
        The chosen candidate (in the engine's threshold unit).
    jaccard : float
        Its Jaccard index at ``tolerance_nm``.
    tolerance_nm : float
        Matching radius.
    curve : list of (threshold, jaccard)
        Every candidate, ascending.
    n_frames : int
        Frames (or patches) the calibration ran on.
    source : str
        What they were (recorded in ``model.yaml``).
    """

    threshold: float
    jaccard: float
    tolerance_nm: float
    curve: list[tuple[float, float]]
    n_frames: int
    source: str


def calibrate_threshold(decode: Callable[[float], pd.DataFrame], truth: pd.DataFrame,
                        thresholds: Sequence[float], tolerance_nm: float = 100.0,
                        n_frames: int = 0, source: str = "") -> Calibration:
    """The candidate threshold maximising the Jaccard index of ``decode(threshold)``.

    Parameters
    ----------
    decode : callable(threshold) -> DataFrame
        The engine's extraction at a threshold (frames 0-based like ``truth``).
    truth : DataFrame
        Ground truth of the same frames.
    thresholds : sequence of float
        Candidates (sorted here).
    tolerance_nm : float
        Matching radius of the Jaccard index.
    n_frames, source
        Recorded in the result.

    Notes
    -----
    A best candidate at either end of the list triggers a warning: the range should be
    widened.
    """
    from stormfold.evaluate import evaluate

    candidates = sorted(float(t) for t in thresholds)
    curve = []
    for t in candidates:
        # A high candidate leaves frames empty: no sign of a mismatched table here.
        metrics = evaluate(truth, decode(t), tolerances_nm=(tolerance_nm,),
                           check_inputs=False)
        curve.append((t, float(metrics["jaccard"].iloc[0])))
    jaccards = np.nan_to_num(np.array([j for _, j in curve]), nan=0.0)
    best = int(np.argmax(jaccards))
    if len(curve) > 1 and best in (0, len(curve) - 1) and jaccards[best] > 0:
        warnings.warn(f"calibrated threshold {curve[best][0]:g} is at the edge of the candidates "
                      f"({candidates[0]:g}–{candidates[-1]:g}); widen the candidate thresholds")
    return Calibration(threshold=curve[best][0], jaccard=float(jaccards[best]),
                       tolerance_nm=tolerance_nm, curve=curve, n_frames=int(n_frames),
                       source=source)
