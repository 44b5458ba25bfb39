"""Hostile inputs to the table commands, post-processing, evaluation and engines (review 7).

Every refused command line exits with code 2, prints one line on stderr without a traceback,
and leaves its folder byte-for-byte as it was (every input, no file added).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from stormfold.errors import UserError


def _snapshot(root: Path) -> dict:
    state = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            state[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def _table(n: int = 60, seed: int = 0, frames: int = 10) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"frame": np.arange(n) % frames,
                         "x_nm": rng.uniform(100, 3100, n), "y_nm": rng.uniform(100, 3100, n),
                         "photons": rng.uniform(500, 3000, n)})


def _csv(path: Path, table: pd.DataFrame) -> Path:
    from stormfold.io.thunderstorm import write_thunderstorm_csv

    write_thunderstorm_csv(path, table)
    return path


@pytest.fixture()
def folder(tmp_path):
    """A table ``good.csv`` with the ``simulation.yaml`` that gives its geometry."""
    _csv(tmp_path / "good.csv", _table())
    (tmp_path / "simulation.yaml").write_text(yaml.safe_dump(
        {"pixel_size_nm": 100.0, "n_rows": 32, "n_cols": 32, "n_frames": 10}))
    (tmp_path / "truth.csv").write_bytes((tmp_path / "good.csv").read_bytes())
    old = Path.cwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(old)


@pytest.fixture()
def refused(run_cli, folder):
    """Run a command that must be refused; returns its one stderr line."""

    def _run(*argv: str) -> str:
        before = _snapshot(folder)
        code, _, err = run_cli(*argv)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, err
        assert len(lines) == 1, err
        assert "Traceback" not in err
        assert "internal error" not in err
        assert _snapshot(folder) == before
        return lines[0]

    return _run


# ---------------------------------------------------------------- 1. inputs never replaced
@pytest.mark.parametrize("argv", [
    ["render", "good.csv", "--out", "simulation.png"],
    ["filter", "good.csv", "--out", "simulation.csv", "--expr", "photons > 0"],
    ["convert", "good.csv", "simulation.hdf5"],
    ["evaluate", "--truth", "truth.csv", "--locs", "good.csv", "--json", "simulation.yaml"],
])
def test_outputs_never_replace_the_geometry_read(refused, argv):
    line = refused(*argv)
    assert "simulation.yaml" in line
    assert "overwrite" in line


def test_convert_api_refuses_the_geometry_as_output(folder):
    from stormfold.io.tables import convert_table

    before = _snapshot(folder)
    with pytest.raises(UserError, match="simulation.yaml"):
        convert_table(folder / "good.csv", folder / "simulation.h5")
    assert _snapshot(folder) == before
