"""Simulation parameters (SPEC §2) as dataclasses, with the named presets.

A configuration is assembled from a preset, an optional YAML file (e.g. the
``simulation.yaml`` written by ``stormfold calibrate`` or by an earlier simulation) and
``key=value`` overrides, in that order.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

from stormfold.config import from_dict, load_yaml, merge, parse_overrides, to_dict
from stormfold.errors import UserError
from stormfold.io.metadata import check_camera_pixel_size
from stormfold.physics.camera import ADU_MAX, Camera
from stormfold.physics.psf import sigma_from_fwhm


@dataclass
class StructureConfig:
    """Where fluorophores can be.

    Attributes
    ----------
    kind : {"uniform", "filaments", "mask"}
        ``uniform`` in the field of view; ``filaments``: random smooth (worm-like) curves,
        microtubule-like; ``mask``: density proportional to the pixel values of an image
        stretched over the field of view.
    n_filaments : int
        Number of filaments (``filaments``).
    persistence_length_nm : float
        Stiffness of the filaments: the direction decorrelates over this arc length.
    label_spread_nm : float
        Standard deviation of the label positions across a filament (label cloud width).
    mask : str or None
        Path of the mask image (TIFF, PNG) for ``kind: mask``.
    """

    kind: Literal["uniform", "filaments", "mask"] = "uniform"
    n_filaments: int = 8
    persistence_length_nm: float = 5000.0
    label_spread_nm: float = 15.0
    mask: Optional[str] = None

    def validate(self) -> None:
        if self.kind == "mask" and not self.mask:
            raise UserError("structure.mask: a mask image path is needed for structure.kind=mask")
        if self.n_filaments < 1:
            raise UserError(f"structure.n_filaments must be ≥ 1, got {self.n_filaments}")
        if not (self.persistence_length_nm > 0 and self.label_spread_nm >= 0):
            raise UserError("structure: persistence_length_nm must be > 0 and label_spread_nm ≥ 0")


@dataclass
class ActivationConfig:
    """Which fluorophores emit in each frame.

    Attributes
    ----------
    model : {"independent", "kinetics"}
        ``independent``: every frame draws n ~ round(Normal(ρ·A, σ_ρ·A)) new positions
        (ZeroCostDL4Mic). ``kinetics``: fixed fluorophores, each an ON/OFF telegraph process
        with exponential dwell times and optional bleaching (needed for linking and SOFI).
    density_per_um2, density_std_per_um2 : float
        ``independent``: mean and standard deviation of active emitters per µm² and frame.
    fluorophores_per_um2 : float
        ``kinetics``: labelled fluorophores per µm² of field of view.
    t_on_frames, t_off_frames : float
        ``kinetics``: mean ON and OFF dwell times, in frames.
    t_bleach_frames : float or None
        ``kinetics``: mean time to photobleaching, in frames (None: no bleaching).
    """

    model: Literal["independent", "kinetics"] = "independent"
    density_per_um2: float = 1.0
    density_std_per_um2: float = 0.0
    fluorophores_per_um2: float = 20.0
    t_on_frames: float = 2.0
    t_off_frames: float = 100.0
    t_bleach_frames: Optional[float] = None

    def validate(self) -> None:
        if not (self.density_per_um2 >= 0 and self.density_std_per_um2 >= 0):
            raise UserError("activation: densities must be ≥ 0")
        if not self.fluorophores_per_um2 >= 0:
            raise UserError("activation.fluorophores_per_um2 must be ≥ 0")
        if not (self.t_on_frames > 0 and self.t_off_frames > 0):
            raise UserError("activation: t_on_frames and t_off_frames must be > 0")
        if self.t_bleach_frames is not None and not self.t_bleach_frames > 0:
            raise UserError("activation.t_bleach_frames must be > 0 (or null for no bleaching)")


#: Largest photon count of an emitter or background pixel per frame: 1000 × a bright dye's.
MAX_PHOTONS = 1e9


@dataclass
class EmitterConfig:
    """Brightness and PSF width of each emitter.

    Attributes
    ----------
    photons_distribution : {"normal", "uniform"}
        Photons per emitter and frame: Normal(photons_mean, photons_std) clipped ≥ 0, or
        Uniform(photons_min, photons_max).
    photons_mean, photons_std, photons_min, photons_max : float
        Photons reaching the camera per emitter and frame (before QE).
    sigma_nm, sigma_std_nm : float
        Gaussian PSF σ drawn Normal(sigma_nm, sigma_std_nm) per emitter, in nm.

    A spread (``photons_std``, ``sigma_std_nm``) of ``null`` is *unknown* — what
    ``stormfold calibrate`` writes when it cannot estimate it — and is simulated as no
    spread (every emitter gets the mean); see :attr:`photons_spread` and
    :attr:`sigma_spread_nm`.
    """

    photons_distribution: Literal["normal", "uniform"] = "normal"
    photons_mean: float = 2000.0
    photons_std: Optional[float] = 0.0
    photons_min: float = 0.0
    photons_max: float = 0.0
    sigma_nm: float = 110.0
    sigma_std_nm: Optional[float] = 0.0

    def validate(self) -> None:
        # Written as "not ≥" so that NaN (possible from the API) fails the checks too.
        if self.photons_distribution == "normal" and not (self.photons_mean >= 0
                                                          and self.photons_spread >= 0):
            raise UserError("emitters: photons_mean and photons_std must be ≥ 0")
        if self.photons_distribution == "uniform" and not 0 <= self.photons_min <= self.photons_max:
            raise UserError("emitters: need 0 ≤ photons_min ≤ photons_max for a uniform distribution")
        if not (self.sigma_nm > 0 and self.sigma_spread_nm >= 0):
            raise UserError("emitters: sigma_nm must be > 0 and sigma_std_nm ≥ 0")
        for key in ("photons_mean", "photons_std", "photons_min", "photons_max"):
            value = getattr(self, key)
            # Far above any dye; larger means overflow numpy's Poisson draw (an internal error).
            if value is not None and value > MAX_PHOTONS:
                raise UserError(f"emitters.{key} must be ≤ {MAX_PHOTONS:.0e} photons, "
                                f"got {value:g}")

    @property
    def photons_spread(self) -> float:
        """Standard deviation of the photons drawn: ``photons_std``, 0 when unknown (null)."""
        return 0.0 if self.photons_std is None else float(self.photons_std)

    @property
    def sigma_spread_nm(self) -> float:
        """Standard deviation of the PSF σ drawn: ``sigma_std_nm``, 0 when unknown (null)."""
        return 0.0 if self.sigma_std_nm is None else float(self.sigma_std_nm)

    @property
    def mean_photons(self) -> float:
        if self.photons_distribution == "uniform":
            return 0.5 * (self.photons_min + self.photons_max)
        return self.photons_mean


@dataclass
class BackgroundConfig:
    """Background photons per pixel and frame: ``photons`` × (map normalised to mean 1)."""

    photons: float = 0.0
    map: Optional[str] = None

    def validate(self) -> None:
        if not self.photons >= 0:
            raise UserError(f"background.photons must be ≥ 0, got {self.photons}")
        if self.photons > MAX_PHOTONS:
            raise UserError(f"background.photons must be ≤ {MAX_PHOTONS:.0e} photons, "
                            f"got {self.photons:g}")


@dataclass
class DriftConfig:
    """Lateral sample drift: constant velocity plus a Gaussian random walk.

    Attributes
    ----------
    velocity_nm_per_frame : (float, float)
        Drift velocity (x, y) in nm per frame.
    random_walk_nm : float
        Standard deviation of the per-frame random-walk step, in nm.
    """

    velocity_nm_per_frame: tuple[float, float] = (0.0, 0.0)
    random_walk_nm: float = 0.0

    def validate(self) -> None:
        if not self.random_walk_nm >= 0:
            raise UserError("drift.random_walk_nm must be ≥ 0")

    @property
    def active(self) -> bool:
        return any(v != 0 for v in self.velocity_nm_per_frame) or self.random_walk_nm > 0


#: Largest frame count and image side: frame and pixel indices stay 32-bit integers (TIFF
#: pages, table columns) and products of them cannot overflow 64 bits.
MAX_COUNT = 2**31 - 1


@dataclass
class SimulationConfig:
    """Everything a simulation needs; ``stormfold simulate`` writes it to ``simulation.yaml``."""

    preset: str = "zerocost"
    seed: int = 0
    n_frames: int = 20
    n_rows: int = 64
    n_cols: int = 64
    pixel_size_nm: float = 100.0
    structure: StructureConfig = field(default_factory=StructureConfig)
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    emitters: EmitterConfig = field(default_factory=EmitterConfig)
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    camera: Camera = field(default_factory=Camera)

    def validate(self) -> None:
        if not 1 <= self.n_frames <= MAX_COUNT:
            raise UserError(f"n_frames must be in [1, {MAX_COUNT}], got {self.n_frames}")
        if not (1 <= self.n_rows <= MAX_COUNT and 1 <= self.n_cols <= MAX_COUNT):
            raise UserError(f"image size must be 1 to {MAX_COUNT} pixels a side, got "
                            f"{self.n_rows}×{self.n_cols}")
        check_camera_pixel_size(self.pixel_size_nm, "pixel_size_nm")
        if not 0 <= self.camera.baseline_adu < ADU_MAX:
            # A uint16 movie clips below 0: a negative offset would cut off half the noise.
            raise UserError(f"camera.baseline_adu must be in [0, {ADU_MAX}) ADU (the range of "
                            f"the uint16 movie), got {self.camera.baseline_adu:g}")
        if self.seed < 0:
            raise UserError(f"seed must be ≥ 0, got {self.seed}")

    @property
    def area_um2(self) -> float:
        return self.n_rows * self.n_cols * (self.pixel_size_nm / 1000.0) ** 2


_PRESETS: dict[str, dict[str, Any]] = {
    # ZeroCostDL4Mic Deep-STORM simulator defaults.
    "zerocost": {
        "n_frames": 20, "n_rows": 64, "n_cols": 64, "pixel_size_nm": 100.0,
        "structure": {"kind": "uniform"},
        "activation": {"model": "independent", "density_per_um2": 6.0, "density_std_per_um2": 0.0},
        "emitters": {"photons_distribution": "normal", "photons_mean": 2250.0, "photons_std": 250.0,
                     "sigma_nm": 110.0, "sigma_std_nm": 5.0},
        "background": {"photons": 0.0},
        "camera": {"qe": 1.0, "em_gain": 1.0, "e_per_adu": 1.0, "readout_e": 4.5,
                   "baseline_adu": 50.0, "spurious_charge": 0.0},
    },
    # ThunderSTORM "generator of simulated data" defaults (camera: ThunderSTORM's camera setup).
    "thunderstorm": {
        "n_frames": 1000, "n_rows": 64, "n_cols": 64, "pixel_size_nm": 100.0,
        "structure": {"kind": "uniform"},
        "activation": {"model": "independent", "density_per_um2": 0.1},
        "emitters": {"photons_distribution": "uniform", "photons_min": 700.0, "photons_max": 900.0,
                     "sigma_nm": round(sigma_from_fwhm(250.0), 3), "sigma_std_nm": 10.0},
        "background": {"photons": 30.0},
        "camera": {"qe": 1.0, "em_gain": 1.0, "e_per_adu": 3.6, "readout_e": 0.0,
                   "baseline_adu": 414.0},
    },
    # SMLM challenge 2016, 2D, EMCCD modality.
    "challenge2016": {
        "n_frames": 1000, "n_rows": 64, "n_cols": 64, "pixel_size_nm": 100.0,
        "structure": {"kind": "filaments", "n_filaments": 6},
        "activation": {"model": "independent", "density_per_um2": 0.5},
        "emitters": {"photons_distribution": "normal", "photons_mean": 3000.0, "photons_std": 500.0,
                     "sigma_nm": round(sigma_from_fwhm(258.0), 3), "sigma_std_nm": 0.0},
        "background": {"photons": 50.0},
        "camera": {"qe": 0.9, "em_gain": 300.0, "e_per_adu": 45.0, "readout_e": 74.4,
                   "baseline_adu": 100.0, "spurious_charge": 0.002},
    },
    # Dense blinking filaments for SOFI: many emitters ON at once, hundreds of frames.
    "sofi": {
        "n_frames": 500, "n_rows": 32, "n_cols": 32, "pixel_size_nm": 100.0,
        "structure": {"kind": "filaments", "n_filaments": 4, "label_spread_nm": 10.0},
        "activation": {"model": "kinetics", "fluorophores_per_um2": 200.0, "t_on_frames": 3.0,
                       "t_off_frames": 12.0},
        "emitters": {"photons_distribution": "normal", "photons_mean": 500.0, "photons_std": 100.0,
                     "sigma_nm": 120.0, "sigma_std_nm": 0.0},
        "background": {"photons": 20.0},
        "camera": {"qe": 1.0, "em_gain": 1.0, "e_per_adu": 1.0, "readout_e": 2.0, "baseline_adu": 100.0},
    },
}

PRESETS = tuple(_PRESETS)
# Keys of a written simulation.yaml that record provenance, not parameters.
PROVENANCE_KEYS = ("stormfold_version", "provenance")


def preset_dict(name: str) -> dict[str, Any]:
    """The parameters of a named preset as a nested dict (a copy)."""
    if name not in _PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return merge({"preset": name}, copy.deepcopy(_PRESETS[name]))


def build_config(preset: str | None = None, config_file: str | Path | None = None,
                 overrides: list[str] | dict | None = None, n_frames: int | None = None,
                 seed: int | None = None) -> SimulationConfig:
    """Assemble a :class:`SimulationConfig`: preset → YAML file → overrides → n_frames/seed.

    The preset defaults to the file's ``preset`` key, else ``zerocost``. Unknown keys,
    wrong types and unknown presets raise :class:`UserError` naming the key.
    """
    file_data: dict[str, Any] = {}
    if config_file is not None:
        loaded = load_yaml(config_file)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{config_file}: expected a mapping of simulation parameters")
        # Files written by stormfold carry provenance next to the parameters.
        file_data = {k: v for k, v in loaded.items() if k not in PROVENANCE_KEYS}
        if "simulation" in file_data:
            # A training file's section: its training keys stay with the training, but a
            # simulation key beside the section would be silently ignored here.
            names = {f.name for f in fields(SimulationConfig)} | {"preset"}
            beside = sorted(str(k) for k in file_data if k != "simulation" and k in names)
            if beside and isinstance(file_data["simulation"], dict):
                raise UserError(f"{config_file}: simulation key(s) beside the 'simulation' "
                                f"section ({', '.join(beside)}) would be ignored: move them "
                                f"into it")
            file_data = file_data["simulation"]
        if not isinstance(file_data, dict):
            raise UserError(f"{config_file}: simulation: expected a mapping of simulation "
                            f"parameters, got {type(file_data).__name__}")
    name = preset or file_data.get("preset") or "zerocost"
    data = preset_dict(name)
    data = merge(data, file_data)
    data["preset"] = name
    if isinstance(overrides, dict):
        data = merge(data, overrides)
    else:
        data = merge(data, parse_overrides(overrides))
    if n_frames is not None:
        data["n_frames"] = n_frames
    if seed is not None:
        data["seed"] = seed
    return from_dict(SimulationConfig, data)


def read_training_yaml(config_file: str | Path | None,
                       training_sections: tuple[str, ...]) -> tuple[dict[str, Any], bool]:
    """A trainer's ``--config`` file: a training configuration or a ``simulation.yaml``.

    Training configurations have sections of their own (``training_sections``); a
    ``simulation.yaml`` of ``stormfold simulate``/``calibrate`` has simulation keys only, and
    then describes the training data. ``seed`` is both a simulation and a training key: a
    file holding ``seed`` and no simulation-only key (``seed: 7``) is a training
    configuration, its seed the training seed (read as a simulation, the seed would seed
    the data and the run turn into a fine-tune). ``seed`` with ``preset`` alone is refused
    as ambiguous; ``preset`` alone names the training data.

    Returns
    -------
    mapping : dict
        The file's content (empty without a file); for a simulation file, its simulation
        parameters (provenance keys dropped).
    is_simulation : bool
    """
    if config_file is None:
        return {}, False
    loaded = load_yaml(config_file) or {}
    if not isinstance(loaded, dict):
        raise UserError(f"{config_file}: expected a mapping of training parameters")
    sim_keys = {f.name for f in dataclasses.fields(SimulationConfig)}
    keys = set(loaded) - set(PROVENANCE_KEYS)
    if "seed" in keys and keys <= {"seed", "preset"}:
        if "preset" in keys:
            raise UserError(f"{config_file}: 'seed' and 'preset' alone are ambiguous (the "
                            f"training's seed or the simulation's?): give the preset with "
                            f"--preset, or put it in a simulation section")
        return loaded, False
    if keys and keys <= sim_keys and not keys & set(training_sections):
        return {k: v for k, v in loaded.items() if k not in PROVENANCE_KEYS}, True
    return loaded, False


def config_to_dict(config: SimulationConfig) -> dict[str, Any]:
    """Plain nested dict of a configuration (YAML-safe)."""
    return to_dict(config)
