"""The camera: photons → ADU (with noise) and ADU → photons, in one object.

The chain (SPEC §2): photo-electrons ``e ~ Poisson(QE·photons + spurious)``; electron
multiplication ``Gamma(e, gain)`` when the EM gain exceeds 1 (excess-noise factor 2);
read noise ``Normal(0, readout_e)`` electrons; ``ADU = e / e_per_adu + baseline``; round and
clip to the 16-bit range.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from stormfold.errors import UserError

ADU_MAX = 65535


def check_baseline(baseline_adu: float, p99_adu: float, source: str = "baseline") -> None:
    """Refuse a negative baseline, or one above the movie's 99th percentile of pixel values.

    The baseline is the camera's dark offset: background and emitters add to it, so most
    pixels of a movie lie above it. Above the 99th percentile, ≥ 99 % of the pixels would
    become negative photon counts and the engines find thousands of 1-photon "emitters"
    in the noise.

    Parameters
    ----------
    baseline_adu : float
        The baseline to be used (ADU).
    p99_adu : float
        The 99th percentile of the movie's pixels (ADU), e.g. from
        :func:`stormfold.io.movie_checks.sample_statistics`.
    source : str
        Where the baseline came from, for the message (``--baseline``, a camera file).

    Raises
    ------
    UserError
    """
    if not np.isfinite(baseline_adu):
        raise UserError(f"{source}: baseline must be a finite number of ADU, got {baseline_adu}")
    if baseline_adu < 0:
        raise UserError(f"{source}: baseline {baseline_adu:g} ADU is negative; the baseline is "
                        f"the camera's dark offset, 0 or more (0 for a movie already in photons)")
    if baseline_adu > p99_adu:
        raise UserError(f"{source}: baseline {baseline_adu:g} ADU is above the 99th percentile "
                        f"of the movie's pixels ({p99_adu:g} ADU): almost every pixel would "
                        f"be negative; the baseline is the camera's dark offset (read it on "
                        f"dark frames or with `stormfold calibrate`)")


@dataclass
class Camera:
    """Camera parameters and its forward / backward model.

    Attributes
    ----------
    qe : float
        Quantum efficiency (photo-electrons per photon), 0 < qe ≤ 1.
    spurious_charge : float
        Clock-induced charge, electrons per pixel and frame (before EM gain).
    em_gain : float
        Electron-multiplying gain (1 = no EM register, e.g. sCMOS).
    readout_e : float
        Read-out noise standard deviation in electrons (after EM gain, i.e. at the amplifier).
    e_per_adu : float
        Electrons per ADU (conversion factor / sensitivity).
    baseline_adu : float
        Offset added by the camera, ADU.
    shot_noise : {"poisson", "normal", "none"}
        Photon-counting noise. ``"normal"`` draws ``round(Normal(m, √m))`` as the
        ZeroCostDL4Mic simulator does; ``"none"`` gives the expected value (no read noise
        either) — for tests and noise-free references.
    """

    qe: float = 1.0
    spurious_charge: float = 0.0
    em_gain: float = 1.0
    readout_e: float = 0.0
    e_per_adu: float = 1.0
    baseline_adu: float = 0.0
    shot_noise: Literal["poisson", "normal", "none"] = "poisson"

    def validate(self) -> None:
        if not 0.0 < self.qe <= 1.0:
            raise UserError(f"camera.qe must be in (0, 1], got {self.qe}")
        if not self.spurious_charge >= 0:
            raise UserError(f"camera.spurious_charge must be ≥ 0, got {self.spurious_charge}")
        if not self.em_gain >= 1.0:
            raise UserError(f"camera.em_gain must be ≥ 1 (1 = no EM gain), got {self.em_gain}")
        if not self.readout_e >= 0:
            raise UserError(f"camera.readout_e must be ≥ 0, got {self.readout_e}")
        if not self.e_per_adu > 0 or not np.isfinite(self.e_per_adu):
            raise UserError(f"camera.e_per_adu must be > 0, got {self.e_per_adu}")
        if not np.isfinite(self.baseline_adu):
            raise UserError(f"camera.baseline_adu must be a finite number, got {self.baseline_adu}")

    # ------------------------------------------------------------------ forward
    def mean_electrons(self, photons: np.ndarray) -> np.ndarray:
        """Expected photo-electrons per pixel (before EM gain)."""
        return self.qe * np.asarray(photons, dtype=np.float64) + self.spurious_charge

    def mean_adu(self, photons: np.ndarray) -> np.ndarray:
        """Expected ADU for expected photons per pixel (no rounding, no clipping)."""
        return self.mean_electrons(photons) * self.em_gain / self.e_per_adu + self.baseline_adu

    def forward(self, photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Noisy uint16 ADU frame(s) from expected photons per pixel."""
        if self.shot_noise == "none":
            return np.clip(np.rint(self.mean_adu(photons)), 0, ADU_MAX).astype(np.uint16)
        mean_e = self.mean_electrons(photons)
        if self.shot_noise == "poisson":
            electrons = rng.poisson(mean_e).astype(np.float64)
        else:
            electrons = np.maximum(np.rint(rng.normal(mean_e, np.sqrt(mean_e))), 0.0)
        if self.em_gain > 1.0:
            # Gamma with shape 0 is 0: pixels without electrons stay dark.
            electrons = rng.gamma(electrons, self.em_gain)
        if self.readout_e > 0:
            electrons += rng.normal(0.0, self.readout_e, size=electrons.shape)
        adu = electrons / self.e_per_adu + self.baseline_adu
        return np.clip(np.rint(adu), 0, ADU_MAX).astype(np.uint16)

    # ------------------------------------------------------------------ backward
    def backward(self, adu: np.ndarray) -> np.ndarray:
        """Photons per pixel from ADU: (ADU − baseline)·e_per_adu / EM gain / QE (float32)."""
        adu = np.asarray(adu, dtype=np.float32)
        scale = np.float32(self.e_per_adu / self.em_gain / self.qe)
        return (adu - np.float32(self.baseline_adu)) * scale

    # ------------------------------------------------------------------ theory
    def adu_variance(self, photons: np.ndarray) -> np.ndarray:
        """Theoretical ADU variance for expected photons per pixel (before rounding).

        Poisson: var(e) = m; EM gain multiplies by 2·gain² (excess-noise factor 2);
        read noise adds readout_e²; rounding to integers adds 1/12 ADU².
        """
        m = self.mean_electrons(photons)
        excess = 2.0 if self.em_gain > 1.0 else 1.0
        var_e = excess * self.em_gain ** 2 * m + self.readout_e ** 2
        return var_e / self.e_per_adu ** 2 + 1.0 / 12.0

    def binned(self, b: int) -> "Camera":
        """The camera of b × b super-pixels whose ADU are sums of b² pixels' ADU.

        Means add (baseline and clock-induced charge × b²) and so do independent
        variances (read noise × b in e⁻ rms); QE, gain and EM excess noise are per electron
        and stay. Exact but for the rounding of each pixel to whole ADU (b²/12 ADU² instead of
        1/12 in :meth:`adu_variance`).
        """
        return replace(self, baseline_adu=self.baseline_adu * b * b,
                       spurious_charge=self.spurious_charge * b * b, readout_e=self.readout_e * b)

    @property
    def photons_per_adu(self) -> float:
        """Photons represented by one ADU above baseline (mean gain)."""
        return self.e_per_adu / (self.em_gain * self.qe)
