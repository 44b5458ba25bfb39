"""One training lifecycle for every learned engine.

A trainer is an engine's model, loss and decoder plugged into these pieces:

- :mod:`~stormfold.training.data` — the data source: :func:`simulated_data` (a simulation
  preset or a ``simulation.yaml``), :func:`movie_data` (a movie and its ground truth), both
  giving a :class:`TrainingData` in photons with its :class:`~stormfold.physics.FrameGeometry`;
  a :class:`Sampler` for trainers that draw fresh data at every step; :func:`read_config_file`
  for the ``--config`` file;
- :mod:`~stormfold.training.targets` — the fine-grid target maker (:func:`fine_grid_sum`,
  :func:`fine_targets`);
- :mod:`~stormfold.training.loop` — the model folder and its checkpoint with exact resume
  (:class:`TrainingRun`) and the loop that stops on steps or time (:func:`run_loop`,
  :class:`Budget`);
- :mod:`~stormfold.training.calibrate` — the extraction threshold by Jaccard on held-back
  frames, for any decoder (:func:`calibrate_threshold`);
- :mod:`~stormfold.training.output` — the history CSV and figure (:func:`write_history`); the
  model files go through :func:`stormfold.modelfile.save_model`.

``stormfold run`` trains through the engine registry (:mod:`stormfold.localize.registry`),
so a new engine plugs in without touching the pipeline; see docs/architecture.md.
"""
from stormfold.training.calibrate import Calibration, calibrate_threshold
from stormfold.training.data import (Sampler, TrainingData, movie_data, read_config_file,
                                    simulated_data)
from stormfold.training.guards import (MAX_LR, TrainingDiverged, check_at_most, check_finite,
                                      check_lr)
from stormfold.training.loop import CHECKPOINT_DIR, Budget, TrainingRun, run_loop, without
from stormfold.training.output import write_history
from stormfold.training.targets import fine_grid_sum, fine_targets

__all__ = ["Budget", "CHECKPOINT_DIR", "Calibration", "MAX_LR", "TrainingDiverged",
           "check_at_most", "check_finite", "check_lr", "Sampler", "TrainingData", "TrainingRun",
           "calibrate_threshold", "fine_grid_sum", "fine_targets", "movie_data",
           "read_config_file", "run_loop", "simulated_data", "without", "write_history"]
