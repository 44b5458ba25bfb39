"""Hostile training configurations (review 9): sizes without bounds, diverged training,
damaged deepstorm checkpoints, a collapsed SOFI σ, cross-engine resume and an empty --init.

Every refused command line exits with code 2, prints one line on stderr without a
traceback, and leaves its folder byte-for-byte as it was.
"""
from __future__ import annotations

import json
import math
import resource
from pathlib import Path

import pytest
import torch

from stormfold.errors import UserError
from stormfold.training import Budget, TrainingDiverged, run_loop
from test_hostile_post9 import folder  # noqa: F401  (a fixture: the test runs in tmp_path)

# A tiny Deep-STORM training that takes seconds (as in test_deepstorm.py).
DS_TINY = ["train", "deepstorm", "--preset", "zerocost", "--set",
           "architecture.channels=[4,4,8,8]", "--set", "schedule.precision=float32", "--set",
           "simulation.n_frames=6", "--set", "calibration.n_frames=2", "--patches", "16",
           "--batch-size", "8", "--quiet"]
GN = ["train", "gridnet", "--preset", "zerocost", "--steps", "1", "--quiet", "--out", "g"]
SOFI = ["train", "sofi", "--patterns", "2", "--frames", "20", "--outer-iterations", "2",
        "--quiet", "--out", "s"]


def _files(root: Path) -> dict:
    """Every file under ``root`` with its bytes (the folders here hold a few small files)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture()
def limited_memory():
    """The memory tests run under a 4 GB address-space limit: a check that failed would
    end in a MemoryError here, not in the machine's out-of-memory killer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = 4_000_000 * 1024
    if hard != resource.RLIM_INFINITY and hard < limit:
        limit = hard
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture()
def refused(run_cli, folder, limited_memory):
    """Run a command that must be refused; returns its one stderr line."""

    def _run(*argv: str) -> str:
        files = _files(folder)
        code, _, err = run_cli(*argv)
        assert (code, _files(folder)) == (2, files), err
        assert "Traceback" not in err and "internal error" not in err, err
        (line,) = [text for text in err.splitlines() if text.strip()]
        return line

    return _run


# ------------------------------------------------------------- 1. sizes and memory (#5)
@pytest.mark.parametrize("setting, match", [
    ("schedule.frame_px=100000", "schedule.frame_px must be ≤ 256"),
    ("schedule.batch_size=100000000", "schedule.batch_size must be ≤ 1,024"),
    ("validation.frame_px=100000", "validation.frame_px must be ≤ 512"),
    ("validation.n_samples=1000000", "validation.n_samples must be ≤ 5,000"),
    ("validation.calibration_samples=1000000", "validation.calibration_samples must be ≤"),
    ("schedule.lr=1e9", r"schedule.lr must be in \(0, 0.1\]"),
    ("schedule.lr=0", r"schedule.lr must be in \(0, 0.1\]"),
])
def test_gridnet_sizes_and_lr_are_bounded(refused, setting, match):
    import re

    assert re.search(match, refused(*GN, "--set", setting))


def test_gridnet_memory_is_estimated_before_training(refused):
    line = refused(*GN, "--set", "schedule.batch_size=1024", "--set", "schedule.frame_px=256")
    assert "gridnet training" in line and "memory" in line and "GiB" in line


def test_gridnet_memory_estimate_admits_the_defaults():
    from stormfold.gridnet.config import build_train_config
    from stormfold.gridnet.network import ArchitectureConfig
    from stormfold.gridnet.train import check_training_memory, training_memory_bytes

    config = build_train_config(steps=1, init="none")
    assert config.architecture == ArchitectureConfig()
    check_training_memory(config)  # the defaults fit
    assert 1e8 < training_memory_bytes(config) < 4e9


@pytest.mark.parametrize("args, match", [
    (["--patches", "1000000000"], "patches.n_patches (--patches) must be ≤ 1,000,000"),
    (["--batch-size", "100000"], "schedule.batch_size (--batch-size) must be ≤ 1,024"),
    (["--set", "patches.patch_px=100000"], "patches.patch_px must be ≤ 128"),
    (["--set", "architecture.channels=[4,4,8,100000]"], "architecture.channels must be ≤"),
    (["--lr", "1e9"], "schedule.lr (--lr) must be in (0, 0.1]"),
    (["--batch-size", "1024", "--set", "architecture.channels=[32,64,128,512]", "--set",
      "architecture.upsampling=16", "--set", "patches.patch_px=64"], "deepstorm training"),
])
def test_deepstorm_sizes_lr_and_memory_are_bounded(refused, args, match):
    assert match in refused(*DS_TINY, "--epochs", "1", "--out", "d", *args)


@pytest.mark.parametrize("args, match", [
    (["--patterns", "100000"], "data.n_patterns (--patterns) must be ≤ 1,000"),
    (["--set", "solver.upsampling=64"], "solver.upsampling must be ≤ 16"),
    (["--set", "solver.iterations=100000"], "solver.iterations must be ≤ 10,000"),
    (["--patterns", "1000", "--iterations", "10000"], "train sofi: 1000 images"),
])
def test_sofi_sizes_and_memory_are_bounded(refused, args, match):
    assert match in refused(*SOFI, *args)


@pytest.mark.parametrize("args, match", [
    (["--set", "solver.upsampling=64"], "solver.upsampling must be ≤ 16"),
    (["--set", "solver.iterations=100000"], "solver.iterations must be ≤ 10,000"),
    (["--set", "optim.adam_lr=1e9"], r"optim.adam_lr must be in (0, 0.1]"),
])
def test_unrolled_sizes_and_lr_are_bounded(refused, args, match):
    assert match in refused("train", "unrolled", "--quiet", "--out", "u", *args)


def test_fit_memory_estimate():
    from stormfold.unrolled.fit import check_fit_memory

    check_fit_memory((16, 64, 64), 4, 100, 4, "train unrolled")  # the defaults fit
    with pytest.raises(UserError, match="train unrolled: 100000 images of 64 x 64 px"):
        check_fit_memory((100000, 64, 64), 4, 100, 1, "train unrolled")


# ----------------------------------------------------------------- 2. divergence (#6)
def test_run_loop_stops_on_a_nan_loss_before_the_checkpoint():
    saved = []
    losses = [1.0, float("nan"), 0.5]
    with pytest.raises(TrainingDiverged,
                       match=r"^training diverged at step 2 \(loss nan\): lower the learning"):
        run_loop(lambda i: {"loss": losses[i]}, 0, Budget(steps=3),
                 after=lambda n, record: saved.append(n))
    assert saved == [1]  # the diverged step was never checkpointed


def test_run_loop_stops_on_nonfinite_weights_and_val_loss():
    model = torch.nn.Linear(2, 1)

    def step(i):
        if i == 1:
            with torch.no_grad():
                model.weight[0, 0] = math.inf
        return {"loss": 1.0}

    with pytest.raises(TrainingDiverged, match=r"epoch 2 \(weight weight is not finite\)"):
        run_loop(step, 0, Budget(steps=3), model=model, unit="epoch")
    with pytest.raises(TrainingDiverged, match=r"step 1 \(val_loss inf\)"):
        run_loop(lambda i: {"loss": 1.0, "val_loss": math.inf}, 0, Budget(steps=3))
    # A finite run is not affected.
    assert run_loop(lambda i: {"loss": 1.0, "val_loss": None}, 0, Budget(steps=3),
                    model=torch.nn.Linear(2, 1)) == 3


def test_diverged_deepstorm_writes_no_model(tmp_path):
    from stormfold.deepstorm.config import build_train_config
    from stormfold.deepstorm.train import train_deepstorm

    config = build_train_config(preset="zerocost", epochs=2, n_patches=16, batch_size=8,
                                overrides=["architecture.channels=[4, 4, 8, 8]",
                                           "schedule.precision=float32",
                                           "simulation.n_frames=6", "calibration.n_frames=2"])
    config.schedule.lr = 1e9  # past the bound, through the API: the loop must still stop it
    with pytest.raises(TrainingDiverged, match="training diverged at epoch 1"):
        train_deepstorm(config, tmp_path / "d", progress=False)
    assert not (tmp_path / "d" / "model.yaml").exists()
    assert not (tmp_path / "d" / "weights.safetensors").exists()


def test_diverged_gridnet_writes_no_model(tmp_path):
    from stormfold.gridnet.config import build_train_config
    from stormfold.gridnet.train import train_gridnet

    over = {"architecture": {"frame_width": 8, "context_width": 8, "levels": 2},
            "schedule": {"batch_size": 4, "frame_px": 16, "threads": 1},
            "validation": {"n_samples": 2, "calibration_samples": 2, "frame_px": 16}}
    config = build_train_config(overrides=over, steps=4, init="none")
    config.schedule.lr = 1e9
    config.schedule.grad_clip = 0.0
    with pytest.raises(TrainingDiverged, match="training diverged at step"):
        train_gridnet(config, tmp_path / "g", progress=False)
    assert not (tmp_path / "g" / "model.yaml").exists()
    assert not (tmp_path / "g" / "weights.safetensors").exists()


# ------------------------------------------------------ 3. damaged deepstorm state (#11)
@pytest.mark.parametrize("key, value, match", [
    ("epoch", -5, "epoch is -5"), ("epoch", "abc", "epoch is 'abc'"),
    ("history", None, "history is None"), ("best_val", "x", "best_val is 'x'"),
])
def test_damaged_deepstorm_checkpoint_state(run_cli, refused, folder, key, value, match):
    code, _, err = run_cli(*DS_TINY, "--epochs", "1", "--out", "d")
    assert code == 0, err
    path = folder / "d" / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    state[key] = value
    path.write_text(json.dumps(state))
    line = refused(*DS_TINY, "--epochs", "2", "--out", "d", "--resume")
    assert "damaged checkpoint" in line and match in line
    assert line.endswith("train again without --resume")


def test_checkpoint_fields_accept_a_good_state(tmp_path):
    from stormfold.checkpoint import check_fields

    check_fields(tmp_path, {"epoch": 0, "history": [], "best_val": math.inf,
                            "best_epoch": -1, "scheduler": {}},
                 {"epoch": int, "history": list, "best_val": float, "best_epoch": float,
                  "scheduler": dict})
    with pytest.raises(UserError, match="damaged checkpoint .step is True"):
        check_fields(tmp_path, {"step": True}, {"step": int})


# -------------------------------------------------------------- 4. SOFI σ (#12)
def test_sofi_refuses_a_delta_sigma(refused):
    line = refused(*SOFI, "--sigma-init", "0.001")
    assert "less than 0.3 camera pixels" in line


def _sofi_model(sigma_fine_px: float = 4.0, rho: float = 0.01):
    from stormfold.sofi.model import SofiModel, build_sofi_solver

    solver = build_sofi_solver(4, sigma_fine_px, iterations=2, rho=rho)
    return SofiModel(solver, 100.0, 0, 1.0)


def test_sofi_collapsed_model_is_divergence():
    from stormfold.sofi.train import check_learned

    check_learned(_sofi_model(), 5)  # a healthy model passes
    with pytest.raises(TrainingDiverged, match="σ collapsed"):
        check_learned(_sofi_model(sigma_fine_px=0.01), 5)
    with pytest.raises(TrainingDiverged, match="ρ fell to 0"):
        check_learned(_sofi_model(rho=0.0), 5)
    check_learned(_sofi_model(rho=0.0), 5, rho_init=0.0)  # ρ = 0 as configured
    nan = _sofi_model()
    with torch.no_grad():
        nan.solver.rho.fill_(math.nan)
    with pytest.raises(TrainingDiverged, match="not finite"):
        check_learned(nan, 5)


# ------------------------------------------------------------ 5. messages (#14 d)
def test_cross_engine_resume_names_both_engines(run_cli, refused, folder):
    code, _, err = run_cli(*DS_TINY, "--epochs", "1", "--out", "g")
    assert code == 0, err
    line = refused(*GN, "--resume")
    assert "is a deepstorm training, this is gridnet" in line


def test_empty_init_is_named(refused):
    assert "empty --init" in refused(*GN, "--init", "")
    from stormfold.modelfile import resolve_model_dir

    with pytest.raises(UserError, match="empty model folder name"):
        resolve_model_dir("")


def test_unrolled_and_sofi_resume_check_their_state(tmp_path):
    from stormfold.training import TrainingRun
    from stormfold.unrolled.fit import RESUME_FIELDS

    model = torch.nn.Linear(2, 1)
    run = TrainingRun(tmp_path / "u", False, {"a": 1}, "optim.outer_iterations", engine="unrolled")
    run.save(model, state={"iteration": "3", "history": []})
    again = TrainingRun(tmp_path / "u", True, {"a": 1}, "optim.outer_iterations",
                        engine="unrolled")
    with pytest.raises(UserError, match=r"damaged checkpoint \(iteration is '3'"):
        again.restore(model, fields=RESUME_FIELDS)
    run.save(model, state={"iteration": 3, "history": []})
    assert again.restore(model, fields=RESUME_FIELDS)[1]["iteration"] == 3
    with pytest.raises(UserError, match="is an unrolled training, this is sofi"):
        TrainingRun(tmp_path / "u", True, {"a": 1}, "optim.outer_iterations", engine="sofi")
