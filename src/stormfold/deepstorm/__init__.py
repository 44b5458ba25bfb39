"""Deep-STORM: the image-to-image CNN of Nehme et al. (2018) as adapted by ZeroCostDL4Mic.

- :mod:`~stormfold.deepstorm.model` — the faithful network (:class:`DeepSTORM`);
- :mod:`~stormfold.deepstorm.loss` — blurred-L2 + L1 loss;
- :mod:`~stormfold.deepstorm.data` — patches and target spike maps;
- :mod:`~stormfold.deepstorm.normalization` — the one input normalisation;
- :mod:`~stormfold.deepstorm.config` — the training configuration;
- :mod:`~stormfold.deepstorm.train` — its trainer on :mod:`stormfold.training` (patches, epochs,
  calibration decoder);
- :mod:`~stormfold.deepstorm.engine` — tiled batched inference and localization extraction.
"""
from stormfold.deepstorm.engine import DeepStormEngine, load_engine
from stormfold.deepstorm.loss import DeepStormLoss
from stormfold.deepstorm.model import DeepSTORM, count_parameters
from stormfold.deepstorm.normalization import Normalization
from stormfold.deepstorm.config import DeepStormTrainConfig, build_train_config
from stormfold.deepstorm.train import train_deepstorm, train_from_cli

__all__ = ["DeepSTORM", "DeepStormLoss", "DeepStormEngine", "DeepStormTrainConfig",
           "Normalization", "build_train_config", "count_parameters", "load_engine",
           "train_deepstorm", "train_from_cli"]
