"""``stormfold run``: one configuration from movie to report.

- :mod:`~stormfold.pipeline.config` — :class:`RunConfig` (the YAML file) and its checks;
- :mod:`~stormfold.pipeline.run` — :func:`run` = :func:`plan` → :func:`stream` → :func:`finish`;
- :mod:`~stormfold.pipeline.state` — what an interrupted run keeps for ``--resume``;
- :mod:`~stormfold.pipeline.truth` — evaluation against a drifting ground truth.
"""
from stormfold.pipeline.config import (CameraSpec, EngineSpec, EvaluationSpec, RunConfig, TrainSpec,
                                       check_inputs, load_run_config)
from stormfold.pipeline.run import LOG_FILE, RunPlan, RunResult, finish, plan, run, stream
from stormfold.pipeline.state import STATE_DIR, RunState
from stormfold.pipeline.truth import truth_in_corrected_frame

__all__ = ["CameraSpec", "EngineSpec", "EvaluationSpec", "LOG_FILE", "RunConfig", "RunPlan",
           "RunResult", "RunState", "STATE_DIR", "TrainSpec", "check_inputs", "finish",
           "load_run_config", "plan", "run", "stream", "truth_in_corrected_frame"]
