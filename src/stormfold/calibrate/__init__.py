"""Calibration of the simulator from a user's movie (``stormfold calibrate``).

Estimates the camera (baseline, ADU per photo-electron, read noise), the background, the
PSF σ, the photons per emitter and the emitter density, and writes a ``simulation.yaml``
that ``stormfold simulate --config`` and ``stormfold train ... --config`` accept.
"""
from stormfold.calibrate.core import CalibrationResult, calibrate, parse_roi
from stormfold.calibrate.estimate import CameraEstimate, EmitterEstimate, estimate_camera
from stormfold.calibrate.scan import ScanSettings

__all__ = ["calibrate", "CalibrationResult", "parse_roi", "CameraEstimate", "EmitterEstimate",
           "estimate_camera", "ScanSettings"]
