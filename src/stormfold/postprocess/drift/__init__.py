"""Lateral drift estimation and correction (SPEC §8).

Convention: the drift d(t) = (dx_nm, dy_nm) of frame t is where the sample has moved
by then, so a measured position is the true position plus d(t) and the correction
subtracts it. Only drift *changes* can be measured, so the trajectory is anchored at
d(0) = 0 (the first frame keeps its coordinates, as in the simulator's ``drift.csv``).

Drift files (``drift.csv`` of ``stormfold simulate``, of the drift step and of ``run``,
``OUT_drift.csv`` of ``stormfold drift``) are CSV with columns ``frame``, ``dx_nm``,
``dy_nm`` and **1-based frames**, like every CSV stormfold writes (:func:`write_drift_csv`);
in memory frames are 0-based. :func:`read_drift_csv` also reads the 0-based files of
stormfold 0.1: those always start at frame 0, which a 1-based file never holds.

One module per concept:

* :mod:`~stormfold.postprocess.drift.rcc` — redundant cross-correlation of time bins,
  without fiducials (Wang et al., Opt. Express 22:15982, 2014);
* :mod:`~stormfold.postprocess.drift.fiducials` — averaged tracks of long-lived emitters;
* :mod:`~stormfold.postprocess.drift.reliability` — whether the data support an RCC or
  fiducial estimate and whether it is significant, hence what is applied;
* :mod:`~stormfold.postprocess.drift.trajectory` — the result, applying and reading a
  trajectory, comparing two;
* :mod:`~stormfold.postprocess.drift.estimate` — the step's parameters, the choice of
  estimator and the correction.
"""
from stormfold.postprocess.drift.estimate import (METHODS, DriftParams, correct_drift,
                                                  estimate_drift)
from stormfold.postprocess.drift.fiducials import estimate_drift_fiducials
from stormfold.postprocess.drift.rcc import estimate_drift_rcc, rcc_shifts
from stormfold.postprocess.drift.reliability import (DriftReliability, DriftUnsupported,
                                                     FiducialSupport, assess_rcc,
                                                     drift_to_apply)
from stormfold.postprocess.drift.trajectory import (DRIFT_COLUMNS, DriftResult, apply_drift,
                                                    read_drift_csv, residual_rms_nm,
                                                    write_drift_csv)

__all__ = [
    "DRIFT_COLUMNS", "METHODS", "DriftParams", "DriftResult", "DriftReliability", "DriftUnsupported",
    "FiducialSupport", "apply_drift", "assess_rcc", "correct_drift", "drift_to_apply",
    "estimate_drift", "estimate_drift_fiducials", "estimate_drift_rcc", "rcc_shifts", "read_drift_csv",
    "residual_rms_nm", "write_drift_csv",
]
