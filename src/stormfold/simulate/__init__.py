"""Simulator of SMLM movies with ground truth (SPEC §2)."""
from stormfold.simulate.config import (PRESETS, ActivationConfig, BackgroundConfig, DriftConfig,
                                       EmitterConfig, SimulationConfig, StructureConfig,
                                       build_config, preset_dict)
from stormfold.simulate.simulator import (Simulation, background_image, expected_photons,
                                          iter_movie, simulate, simulate_to_folder, simulate_truth)

__all__ = ["PRESETS", "ActivationConfig", "BackgroundConfig", "DriftConfig", "EmitterConfig",
           "SimulationConfig", "StructureConfig", "build_config", "preset_dict", "Simulation",
           "background_image", "expected_photons", "iter_movie", "simulate", "simulate_to_folder",
           "simulate_truth"]
