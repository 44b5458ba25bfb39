"""The unrolled accelerated projected-gradient method with learned parameters (SPEC §5).

Its forward operator H = S·K_σ is :class:`stormfold.physics.BandedBlurDownsample`.

- :class:`UnrolledAPG` — K iterations of Algorithm 1 as an ``nn.Module`` (LS or KL fidelity,
  smoothed projection, learned θ = (ρ, α_k, τ), optional background and PSF σ);
- :mod:`~stormfold.unrolled.losses` — reconstruction (13) and localization (14–16) losses;
- :class:`SGP` / :class:`ProjectedAdam` — upper-level optimisers with box bounds;
- :func:`train_unrolled` / :func:`fit` — training; :class:`UnrolledEngine` — inference.
"""
from stormfold.unrolled.losses import (binarise, huber, localization_loss,
                                       reconstruction_loss)
from stormfold.unrolled.model import build_solver, load_unrolled_model, save_unrolled_model
from stormfold.unrolled.sgp import SGP, ProjectedAdam
from stormfold.unrolled.solver import UnrolledAPG, estimate_background, smooth_projection
from stormfold.unrolled.train import (UnrolledTrainConfig, fine_targets, fit, load_train_config,
                                      train_unrolled)

__all__ = ["UnrolledAPG", "smooth_projection", "estimate_background",
           "huber", "binarise", "reconstruction_loss", "localization_loss", "SGP",
           "ProjectedAdam", "UnrolledTrainConfig", "fine_targets", "fit", "load_train_config",
           "train_unrolled", "build_solver", "save_unrolled_model", "load_unrolled_model"]
