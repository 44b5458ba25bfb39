"""Shared fixtures: the third-party data folder and CLI runner."""
from __future__ import annotations

import os
from pathlib import Path

# Qt without a window system (the napari plugin tests); set before anything imports Qt.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
import torch  # noqa: E402

# Keep the test suite predictable on small CI machines.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("STORMFOLD_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_torch():
    """Seed torch's global generator per test: a test's random draws never depend on test order.

    An unseeded draw once made a statistical tolerance fail in CI; every test now sees the same
    numbers on every run, so a failure is a real change, not luck.
    """
    torch.manual_seed(20261129)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real third-party data (../shared/data); tests skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"third-party data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture()
def run_cli(capsys):
    """Run the stormfold CLI in-process; returns (exit_code, stdout, stderr)."""
    from stormfold.cli import main

    def _run(*argv: str):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse errors
            code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return _run


def _picasso_keeps(locs):
    """Rows whose values pass Picasso Render's loading checks (``picasso.lib.ensure_sanity``):
    every field finite; lpx, lpy, photons, sx, sy ≥ 0; older Picasso versions also need
    lpx, lpy > 0. (Picasso also drops x < 0 or y < 0: a position in the outer half of the
    first pixel column or row, as its own fits can give; not checked here.)"""
    import numpy as np

    keep = np.ones(len(locs), bool)
    for name in locs.dtype.names:
        keep &= np.isfinite(locs[name].astype(np.float64))
    for name in ("lpx", "lpy", "photons", "sx", "sy"):
        if name in locs.dtype.names:
            keep &= locs[name] >= 0
    return keep & (locs["lpx"] > 0) & (locs["lpy"] > 0)


@pytest.fixture()
def picasso_keeps():
    """The row filter Picasso applies to a localization file it opens (see _picasso_keeps)."""
    return _picasso_keeps


@pytest.fixture()
def map_simulation(tmp_path):
    """``make(level, n_frames, seed, overrides)``: a ``zerocost`` simulation whose background
    (photons/px) follows the 2-D array ``level``; returns (config, simulation, photons)."""
    import numpy as np
    import tifffile

    from stormfold.simulate import build_config, simulate

    def make(level, n_frames: int, seed: int, overrides=()):
        path = tmp_path / f"background_map_{seed}.tif"
        tifffile.imwrite(path, np.asarray(level, np.float32))
        rows, cols = np.shape(level)
        cfg = build_config("zerocost", n_frames=n_frames, seed=seed, overrides=[
            f"n_rows={rows}", f"n_cols={cols}", *overrides,
            f"background.photons={float(np.mean(level))}", f"background.map={path}"])
        sim = simulate(cfg)
        return cfg, sim, cfg.camera.backward(sim.movie)

    return make
