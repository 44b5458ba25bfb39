"""SOFI: second-order fluctuation statistics and semi-blind deconvolution (SPEC §6).

- :func:`sofi_cumulant`, :class:`CumulantAccumulator` — streaming second-order cumulants
  (lag 0: variance; lag 1) of a movie in one numerically stable pass;
- :mod:`~stormfold.sofi.theory` — the expected cumulant of a simulated blinking movie
  (the variance-domain model with its derivation);
- :class:`SofiModel`, :func:`train_sofi`, :func:`run_sofi` — the unrolled solver that learns
  σ, ρ, α_k (and τ), its training and its application to a movie.
"""
from stormfold.sofi.data import (SofiDataConfig, SofiDataset, build_dataset, emitter_cumulants,
                                 fine_cumulant_target)
from stormfold.sofi.model import SofiModel, build_sofi_solver, load_sofi_model, save_sofi_model
from stormfold.sofi.run import run_sofi
from stormfold.sofi.statistics import (CumulantAccumulator, SofiStatistics, movie_statistics,
                                       sofi_cumulant)
from stormfold.sofi.theory import expected_cumulant, noise_offset
from stormfold.sofi.train import SofiTrainConfig, load_sofi_train_config, train_sofi

__all__ = ["CumulantAccumulator", "SofiStatistics", "movie_statistics", "sofi_cumulant",
           "expected_cumulant", "noise_offset", "SofiModel",
           "build_sofi_solver", "save_sofi_model", "load_sofi_model", "SofiDataConfig",
           "SofiDataset", "build_dataset", "emitter_cumulants", "fine_cumulant_target",
           "SofiTrainConfig", "load_sofi_train_config", "train_sofi", "run_sofi"]
