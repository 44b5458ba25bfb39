"""Turn the checkpoint of a running gridnet training into a usable model folder.

The weights of ``TRAIN_DIR/checkpoint`` get a threshold calibrated on held-back simulated
samples of the run's domain and are written with a model.yaml to ``OUT`` (marked as a
snapshot, with the step). Lets the long generalist training be evaluated while it runs.

Usage: python experiments/gridnet_snapshot.py TRAIN_DIR OUT [--samples 64]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def main() -> None:
    from stormfold.checkpoint import load_checkpoint
    from stormfold.config import from_dict
    from stormfold.gridnet.network import GridNet
    from stormfold.gridnet.train import (GridnetTrainConfig, decoder_variants, held_back,
                                         jaccard_curve, model_metadata)
    from stormfold.modelfile import save_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = json.loads((args.train_dir / "checkpoint" / "state.json").read_text())
    config = from_dict(GridnetTrainConfig, state["config"])
    model = GridNet(config.architecture)
    load_checkpoint(args.train_dir / "checkpoint", model, restore_rng=False)
    v = config.validation
    sets = held_back(config.domain, v, config.architecture.context_frames, args.samples,
                     config.seed, 3)
    curve = jaccard_curve(model, config.normalization, sets, config.domain.pixel_size_nm,
                          v.thresholds, decoder_variants(v), v.tolerance_nm)
    meta = model_metadata(config, model, None, curve, state["history"], state["step"],
                          state["total_steps"], state["seconds"], state["seconds"],
                          state.get("commands", []))
    meta["snapshot"] = {"of": str(args.train_dir), "step": state["step"]}
    save_model(args.out, {k: t.detach() for k, t in model.state_dict().items()}, meta)
    print(f"step {state['step']}: threshold {meta['threshold']}, held-back JI "
          f"{meta['calibration']['jaccard']}; wrote {args.out}")


if __name__ == "__main__":
    main()
