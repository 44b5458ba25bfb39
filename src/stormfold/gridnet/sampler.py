"""On-the-fly training data: a fresh simulated batch at every step (domain randomisation).

Each sample is a short movie of ``context_frames`` consecutive frames (t−1, t, t+1) of
``frame_px``² camera pixels with the true emitters of the middle frame. Per sample the
sampler draws a PSF σ, a photon level and spread, a background (with a smooth spatial
variation), a density, a structure (uniform or filaments), a camera (sCMOS-like or
EMCCD-like, or the given one with its read noise and gain jittered) and an activation
model: *independent* frames (new positions in every frame, as the ZeroCostDL4Mic
simulator and the Deep-STORM demo movie) or *blinking kinetics* (fixed fluorophores with
two-state telegraph ON/OFF dwell times, so molecules stay ON across frames). Training on
both teaches the network to use temporal context when it exists and to ignore it when it
does not. A fraction of samples repeats the middle frame as a neighbour, as at the edges
of a movie.

The pieces come from the simulator (:mod:`stormfold.simulate`: filament structures,
telegraph kinetics; :func:`stormfold.physics.psf.render_emitters`: the pixel-integrated
Gaussian PSF of all frames of the batch in one call) and the camera model
(:class:`stormfold.physics.Camera`: Poisson/EM/read noise, ADU, and back to photons as at
inference). Emitters are drawn in a margin around the frame, so light from outside the
field of view enters as in real movies; only emitters inside the frame are the truth.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Optional

import numpy as np
import pandas as pd

from stormfold.errors import UserError
from stormfold.physics.camera import Camera
from stormfold.physics.psf import render_emitters
from stormfold.simulate.activation import telegraph_on_fractions
from stormfold.simulate.config import ActivationConfig, SimulationConfig, StructureConfig
from stormfold.simulate.structures import Structure, make_filaments

KINDS = ("independent", "kinetics")


def _range(name: str, value: tuple[float, float], low: float = 0.0, strict: bool = False) -> None:
    a, b = value
    if not (a <= b) or a < low or (strict and a <= low):
        sign = ">" if strict else "≥"
        raise UserError(f"domain.{name} must be [min, max] with {sign} {low:g} and min ≤ max, "
                        f"got {list(value)}")


@dataclass
class DomainConfig:
    """Ranges of the randomised training simulation (stored in model.yaml).

    Ranges are [min, max]; "log" ranges are drawn log-uniformly.

    Attributes
    ----------
    pixel_size_nm : float
        Camera pixel size; converts the densities (per µm²) to pixels. The network itself
        works in pixels.
    sigma_px : [min, max]
        PSF σ in camera pixels (uniform); each emitter varies by ``sigma_jitter`` (relative).
    photons : [min, max]
        Mean photons per emitter and frame of a sample (log); emitters of a sample spread
        around it with a relative standard deviation drawn from ``photons_spread``.
    background : [min, max]
        Background photons per pixel (log above max(min, 1)); a fraction
        ``background_zero_fraction`` of samples has ``min`` exactly. Each sample's
        background varies smoothly in space by up to ``background_variation`` (relative).
    density_per_um2 : [min, max]
        Active emitters per µm² and frame, drawn log-uniformly or, with ``density_sampling:
        linear``, uniformly (more dense samples).
    independent_fraction : float
        Share of samples with independent frames; the others blink with mean ON time
        ``t_on_frames`` (log) and ON probability ``p_on``.
    filament_fraction : float
        Share of samples whose emitters lie on random filaments (label spread
        ``label_spread_nm``) instead of uniformly.
    edge_fraction : float
        Share of samples whose previous or next frame repeats the middle frame (movie edge).
    camera : Camera or None
        A fixed camera (a calibrated microscope), its read noise scaled by
        ``readout_factor`` and EM gain by ``em_gain_factor``; None draws sCMOS-like cameras
        (QE ``qe``, read noise ``readout_e``, ``e_per_adu`` log) and, for a share
        ``emccd_fraction``, EMCCD-like ones (``em_gain`` log, ``emccd_readout_e``,
        ``spurious_charge``); ``normal_noise_fraction`` of them have rounded-normal shot
        noise as the ZeroCostDL4Mic simulator.
    """

    pixel_size_nm: float = 100.0
    sigma_px: tuple[float, float] = (0.7, 2.0)
    sigma_jitter: float = 0.05
    photons: tuple[float, float] = (200.0, 10000.0)
    photons_spread: tuple[float, float] = (0.0, 0.3)
    background: tuple[float, float] = (0.0, 300.0)
    background_zero_fraction: float = 0.15
    background_variation: float = 0.3
    density_per_um2: tuple[float, float] = (0.1, 10.0)
    density_sampling: Literal["log", "linear"] = "log"
    independent_fraction: float = 0.4
    t_on_frames: tuple[float, float] = (0.5, 10.0)
    p_on: tuple[float, float] = (0.05, 0.3)
    filament_fraction: float = 0.3
    label_spread_nm: float = 15.0
    edge_fraction: float = 0.05
    camera: Optional[Camera] = None
    readout_factor: tuple[float, float] = (0.5, 1.5)
    em_gain_factor: tuple[float, float] = (0.7, 1.3)
    qe: tuple[float, float] = (0.7, 1.0)
    readout_e: tuple[float, float] = (0.0, 20.0)
    e_per_adu: tuple[float, float] = (0.25, 4.0)
    emccd_fraction: float = 0.3
    em_gain: tuple[float, float] = (30.0, 300.0)
    emccd_readout_e: tuple[float, float] = (10.0, 80.0)
    spurious_charge: tuple[float, float] = (0.0, 0.005)
    normal_noise_fraction: float = 0.1

    def validate(self) -> None:
        if not self.pixel_size_nm > 0:
            raise UserError(f"domain.pixel_size_nm must be > 0, got {self.pixel_size_nm}")
        _range("sigma_px", self.sigma_px, 0.0, strict=True)
        _range("photons", self.photons, 0.0, strict=True)
        _range("photons_spread", self.photons_spread)
        _range("background", self.background)
        _range("density_per_um2", self.density_per_um2, 0.0, strict=True)
        _range("t_on_frames", self.t_on_frames, 0.0, strict=True)
        _range("p_on", self.p_on, 0.0, strict=True)
        _range("readout_factor", self.readout_factor)
        _range("em_gain_factor", self.em_gain_factor, 0.0, strict=True)
        _range("qe", self.qe, 0.0, strict=True)
        _range("readout_e", self.readout_e)
        _range("e_per_adu", self.e_per_adu, 0.0, strict=True)
        _range("em_gain", self.em_gain, 1.0)
        _range("emccd_readout_e", self.emccd_readout_e)
        _range("spurious_charge", self.spurious_charge)
        if self.p_on[1] >= 1 or self.qe[1] > 1:
            raise UserError("domain.p_on must stay below 1 and domain.qe at most 1")
        for name in ("background_zero_fraction", "independent_fraction", "filament_fraction",
                     "edge_fraction", "emccd_fraction", "normal_noise_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"domain.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.sigma_jitter < 0 or self.background_variation < 0 or self.label_spread_nm < 0:
            raise UserError("domain: sigma_jitter, background_variation and label_spread_nm "
                            "must be ≥ 0")


def domain_around(sim: SimulationConfig, base: DomainConfig | None = None) -> DomainConfig:
    """A domain centred on one microscope (a calibrated or preset ``simulation.yaml``).

    Its camera is fixed (read noise and EM gain jittered); σ varies by ±15 % (more if the
    simulation spreads it), photons by ×0.5–2, the background from 0 to twice its level
    (+10 photons), the density from sparse to at least 10/µm²; filaments are as common as
    in the simulation's structure suggests.
    """
    base = base or DomainConfig()
    px = sim.pixel_size_nm
    e = sim.emitters
    sigma = e.sigma_nm / px
    spread = max(0.15, 2.0 * e.sigma_std_nm / e.sigma_nm)
    mean = e.mean_photons
    if mean <= 0:
        raise UserError("the simulation's emitters have no photons (emitters.photons_*)")
    rel = (e.photons_max - e.photons_min) / (2 * mean) if e.photons_distribution == "uniform" \
        else e.photons_std / mean
    bg = sim.background.photons
    density = sim.activation.density_per_um2 if sim.activation.model == "independent" else \
        sim.activation.fluorophores_per_um2 * sim.activation.t_on_frames / (
            sim.activation.t_on_frames + sim.activation.t_off_frames)
    t_on = sim.activation.t_on_frames
    return replace(base, pixel_size_nm=px,
                   sigma_px=(round(sigma * (1 - spread), 4), round(sigma * (1 + spread), 4)),
                   photons=(round(0.5 * mean, 1), round(2.0 * mean, 1)),
                   photons_spread=(0.0, round(max(0.3, 2 * rel), 3)),
                   background=(0.0, round(2.0 * bg + 10.0, 1)),
                   density_per_um2=(0.1, float(max(10.0, 1.5 * density))),
                   t_on_frames=(0.5, float(max(10.0, 2 * t_on))),
                   filament_fraction=0.5 if sim.structure.kind == "filaments" else 0.2,
                   camera=sim.camera,
                   normal_noise_fraction=0.0)


@dataclass
class Batch:
    """A training batch.

    Attributes
    ----------
    frames : (B, T, rows, cols) float32
        Photons per pixel of frames t−1, t, t+1 (T = context frames).
    emitters : (B, M, 3) float32
        True emitters of the middle frame (x_px, y_px, photons), padded to M.
    mask : (B, M) bool
    bg : (B, rows, cols) float32
        True background of the middle frame, photons per pixel.
    kind : (B,) array of str
        ``independent`` or ``kinetics``.
    params : DataFrame
        Per-sample draws (sigma_px, photons, background, density_per_um2, camera kind ...).
    """

    frames: np.ndarray
    emitters: np.ndarray
    mask: np.ndarray
    bg: np.ndarray
    kind: np.ndarray
    params: pd.DataFrame = field(default_factory=pd.DataFrame)

    def truth_table(self, pixel_size_nm: float) -> pd.DataFrame:
        """Truth as a localization table (frame = sample index), nm."""
        b, m = np.nonzero(self.mask)
        return pd.DataFrame({"frame": b.astype(np.int64),
                             "x_nm": self.emitters[b, m, 0].astype(np.float64) * pixel_size_nm,
                             "y_nm": self.emitters[b, m, 1].astype(np.float64) * pixel_size_nm,
                             "photons": self.emitters[b, m, 2].astype(np.float64)})

    def subset(self, index: np.ndarray) -> "Batch":
        return Batch(self.frames[index], self.emitters[index], self.mask[index], self.bg[index],
                     self.kind[index], self.params.iloc[index].reset_index(drop=True))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


class Sampler:
    """Draws training batches from a :class:`DomainConfig`.

    Parameters
    ----------
    domain : DomainConfig
    frame_px : int
        Side of the simulated frames (camera pixels).
    context_frames : int
        Frames per sample (1 or 3); the truth is the middle frame's.
    margin_px : float
        Emitters are drawn this far outside the frame too (their light leaks in).
    """

    def __init__(self, domain: DomainConfig, frame_px: int = 32, context_frames: int = 3,
                 margin_px: float = 4.0):
        if frame_px < 4:
            raise UserError(f"training frame_px must be ≥ 4, got {frame_px}")
        self.domain = domain
        self.frame_px = int(frame_px)
        self.context_frames = int(context_frames)
        self.margin_px = float(margin_px)

    # ------------------------------------------------------------------ per-sample draws
    def _camera(self, rng: np.random.Generator) -> tuple[Camera, str]:
        d = self.domain
        if d.camera is not None:
            cam = d.camera
            gain = cam.em_gain * rng.uniform(*d.em_gain_factor) if cam.em_gain > 1 else 1.0
            return replace(cam, readout_e=cam.readout_e * rng.uniform(*d.readout_factor),
                           em_gain=max(1.0, gain)), "given"
        noise = "normal" if rng.random() < d.normal_noise_fraction else "poisson"
        if rng.random() < d.emccd_fraction:
            return Camera(qe=rng.uniform(*d.qe), spurious_charge=rng.uniform(*d.spurious_charge),
                          em_gain=_log_uniform(rng, *d.em_gain),
                          readout_e=rng.uniform(*d.emccd_readout_e),
                          e_per_adu=_log_uniform(rng, *d.e_per_adu) * 20.0,
                          baseline_adu=100.0, shot_noise="poisson"), "emccd"
        return Camera(qe=rng.uniform(*d.qe), readout_e=rng.uniform(*d.readout_e),
                      e_per_adu=_log_uniform(rng, *d.e_per_adu), baseline_adu=100.0,
                      shot_noise=noise), "scmos"

    def _positions(self, n: int, filaments: Structure | None, rng: np.random.Generator):
        side = self.frame_px + 2 * self.margin_px
        if filaments is not None:
            x, y = filaments.sample(n, rng)
            return x / self.domain.pixel_size_nm - self.margin_px, \
                y / self.domain.pixel_size_nm - self.margin_px
        return rng.uniform(0, side, n) - self.margin_px, rng.uniform(0, side, n) - self.margin_px

    def _sample(self, rng: np.random.Generator) -> dict:
        """Emitters (frame within the sample, x, y, photons, σ) and settings of one sample."""
        d = self.domain
        T = self.context_frames
        side = self.frame_px + 2 * self.margin_px
        area_um2 = (side * d.pixel_size_nm / 1000.0) ** 2
        kind = "independent" if (T == 1 or rng.random() < d.independent_fraction) else "kinetics"
        sigma = rng.uniform(*d.sigma_px)
        photons = _log_uniform(rng, *d.photons)
        spread = rng.uniform(*d.photons_spread)
        lo, hi = d.background
        bg = lo if rng.random() < d.background_zero_fraction else _log_uniform(rng, max(lo, 1.0),
                                                                                max(hi, 1.0))
        bg = min(max(bg, lo), hi)
        density = _log_uniform(rng, *d.density_per_um2) if d.density_sampling == "log" \
            else rng.uniform(*d.density_per_um2)
        filaments = None
        if rng.random() < d.filament_fraction:
            side_nm = side * d.pixel_size_nm
            curves = make_filaments(int(rng.integers(1, 5)), side_nm, side_nm,
                                    float(rng.uniform(1000, 10000)), rng)
            filaments = Structure(StructureConfig(kind="filaments",
                                                  label_spread_nm=d.label_spread_nm),
                                  side_nm, side_nm, filaments=curves)
        if kind == "independent":
            counts = rng.poisson(density * area_um2, T)
            frame = np.repeat(np.arange(T), counts)
            x, y = self._positions(int(counts.sum()), filaments, rng)
            fraction = np.ones(frame.size)
            brightness = np.ones(frame.size)
        else:
            p_on = rng.uniform(*d.p_on)
            t_on = _log_uniform(rng, *d.t_on_frames)
            n_fluo = int(rng.poisson(density * area_um2 / p_on))
            fx, fy = self._positions(n_fluo, filaments, rng)
            act = ActivationConfig(model="kinetics", t_on_frames=t_on,
                                   t_off_frames=t_on * (1.0 / p_on - 1.0))
            fluo, frame, fraction = telegraph_on_fractions(n_fluo, T, act, rng)
            x, y = fx[fluo], fy[fluo]
            # A fluorophore keeps its brightness across frames.
            brightness = np.maximum(1.0 + spread * rng.normal(size=n_fluo), 0.05)[fluo]
            spread = 0.0
        n = frame.size
        per_frame = np.maximum(1.0 + spread * rng.normal(size=n), 0.05)
        emit_photons = photons * brightness * per_frame * fraction
        sigmas = np.maximum(sigma * (1.0 + d.sigma_jitter * rng.normal(size=n)), 0.3)
        camera, camera_kind = self._camera(rng)
        return {"kind": kind, "frame": frame, "x": x, "y": y, "photons": emit_photons,
                "sigma": sigmas, "camera": camera, "bg": bg,
                "params": {"kind": kind, "sigma_px": sigma, "photons": photons, "background": bg,
                           "density_per_um2": density, "camera": camera_kind,
                           "filaments": filaments is not None}}

    def _background(self, level: float, rng: np.random.Generator) -> np.ndarray:
        """A smooth background image of mean ≈ ``level``: a tilt and a broad bump."""
        n = self.frame_px
        if level <= 0:
            return np.zeros((n, n))
        a = rng.uniform(0, self.domain.background_variation)
        yy, xx = np.mgrid[0:n, 0:n] / n - 0.5
        angle = rng.uniform(0, 2 * np.pi)
        tilt = np.cos(angle) * xx + np.sin(angle) * yy
        cx, cy, w = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.2, 0.6)
        bump = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * w * w)) - 0.5
        return level * np.maximum(1.0 + a * (tilt + bump), 0.0)

    # ------------------------------------------------------------------ batch
    def batch(self, batch_size: int, rng: np.random.Generator) -> Batch:
        """A batch of ``batch_size`` samples drawn with ``rng``."""
        T, n = self.context_frames, self.frame_px
        mid = T // 2
        samples = [self._sample(rng) for _ in range(batch_size)]
        frame = np.concatenate([s["frame"] + i * T for i, s in enumerate(samples)])
        expected = render_emitters((batch_size * T, n, n), frame,
                                   np.concatenate([s["x"] for s in samples]),
                                   np.concatenate([s["y"] for s in samples]),
                                   np.concatenate([s["photons"] for s in samples]),
                                   np.concatenate([s["sigma"] for s in samples]))
        expected = expected.reshape(batch_size, T, n, n)
        frames = np.empty((batch_size, T, n, n), np.float32)
        bg = np.empty((batch_size, n, n), np.float32)
        for i, s in enumerate(samples):
            background = self._background(s["bg"], rng)
            bg[i] = background
            adu = s["camera"].forward(expected[i] + background[None], rng)
            frames[i] = s["camera"].backward(adu)
        if T > 1:
            edge = rng.random(batch_size) < self.domain.edge_fraction
            side = rng.integers(0, 2, batch_size)
            for i in np.nonzero(edge)[0]:
                frames[i, 0 if side[i] == 0 else T - 1] = frames[i, mid]
        truth = []
        for s in samples:
            keep = (s["frame"] == mid) & (s["x"] >= 0) & (s["x"] < n) & (s["y"] >= 0) & (s["y"] < n)
            truth.append(np.stack([s["x"][keep], s["y"][keep], s["photons"][keep]], axis=1))
        m = max(1, max(len(t) for t in truth))
        emitters = np.zeros((batch_size, m, 3), np.float32)
        mask = np.zeros((batch_size, m), bool)
        for i, t in enumerate(truth):
            emitters[i, :len(t)] = t
            mask[i, :len(t)] = True
        return Batch(frames, emitters, mask, bg, np.array([s["kind"] for s in samples]),
                     pd.DataFrame([s["params"] for s in samples]))


def area_density(batch: Batch, pixel_size_nm: float) -> np.ndarray:
    """True emitters per µm² in each sample's middle frame."""
    n = batch.frames.shape[-1]
    return batch.mask.sum(1) / (n * pixel_size_nm / 1000.0) ** 2


def check_sigma(sigma_nm: float, pixel_size_nm: float, domain: DomainConfig, source: str) -> float:
    """σ in pixels, refusing a value outside the model's training range (one line)."""
    sigma_px = float(sigma_nm) / float(pixel_size_nm)
    lo, hi = domain.sigma_px
    if not (lo * 0.97 <= sigma_px <= hi * 1.03) or not math.isfinite(sigma_px):
        wider = f" (or bin the pixels: --set bin={math.ceil(sigma_px / hi)})" \
            if math.isfinite(sigma_px) and sigma_px > hi else ""
        raise UserError(f"PSF sigma {sigma_nm:g} nm = {sigma_px:.2f} px at {pixel_size_nm:g} nm "
                        f"pixels is outside the range {lo:g}–{hi:g} px that {source} was "
                        f"trained for{wider}")
    return sigma_px
