"""gridnet: a camera-grid CNN engine after DECODE (Speiser et al., Nat. Methods 2021), SPEC §10.

- :mod:`~stormfold.gridnet.network` — frame U-Net + temporal-context U-Net + 1×1 head;
- :mod:`~stormfold.gridnet.normalization` — photons → network input;
- :mod:`~stormfold.gridnet.outputs` — raw channels → p, offsets, photons, σ's, background;
- :mod:`~stormfold.gridnet.loss` — count + Gaussian-mixture likelihood + background loss;
- :mod:`~stormfold.gridnet.decode` — the cluster decoder (components grouped by position)
  and SPEC §10's 3×3 peaks, table;
- :mod:`~stormfold.gridnet.sampler` — on-the-fly randomised simulation of training batches;
- :mod:`~stormfold.gridnet.train` — AdamW, time budget, checkpoints, threshold calibration;
- :mod:`~stormfold.gridnet.engine` — batched inference with per-frame feature reuse;
- :mod:`~stormfold.gridnet.loader` — model files → engine.
"""
from stormfold.gridnet.decode import decode
from stormfold.gridnet.engine import GridnetEngine
from stormfold.gridnet.loss import gridnet_loss
from stormfold.gridnet.network import ArchitectureConfig, GridNet
from stormfold.gridnet.sampler import DomainConfig, Sampler

__all__ = ["ArchitectureConfig", "DomainConfig", "GridNet", "GridnetEngine", "Sampler", "decode",
           "gridnet_loss"]
