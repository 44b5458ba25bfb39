"""A doctored manifest.json must never make stormfold touch anything outside its folder."""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from stormfold.io.manifest import MANIFEST, is_member_path, read_manifest, verify_manifest


@pytest.mark.parametrize("path,ok", [
    ("localizations.csv", True), ("model/weights.safetensors", True), ("a b/ü.png", True),
    ("", False), ("..", False), ("../victim.txt", False), ("a/../../x", False), ("./a", False),
    ("a//b", False), ("/etc/hostname", False), ("C:/x", False), ("a\\b", False), ("a\0", False),
    (None, False), (3, False), (["a"], False),
])
def test_member_paths_stay_inside_the_folder(path, ok):
    assert is_member_path(path) is ok


def _movie(path: Path) -> Path:
    rng = np.random.default_rng(0)
    frames = rng.poisson(20.0, (6, 16, 16)).astype(np.uint16) + 100
    frames[:, 8, 8] += 400
    tifffile.imwrite(path, frames, photometric="minisblack")
    return path


def _doctor(folder: Path, path) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"].append({"path": path, "bytes": 1, "sha256": "0" * 64})
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("doctored", ["../victim.txt", "..", "", "/tmp", "a/../.."])
def test_a_doctored_manifest_removes_nothing_outside_the_output(tmp_path, run_cli, doctored):
    home = tmp_path / "p1"
    home.mkdir()
    victim = home / "victim.txt"
    victim.write_text("keep me")
    movie = _movie(tmp_path / "movie.tif")
    out = home / "out"
    args = ["localize", movie, "--engine", "classic", "--pixel-size", "100", "--baseline", "100",
            "--out", out]
    code, _, err = run_cli(*args)
    assert code == 0, err
    _doctor(out, doctored)
    assert read_manifest(out) is None
    assert verify_manifest(out) == [f"{out}: no {MANIFEST} (incomplete or not a stormfold output)"]
    code, _, err = run_cli(*args, "--threshold", "3")
    assert code == 0, err
    assert victim.read_text() == "keep me"
    assert verify_manifest(out) == []
    listed = json.loads((out / MANIFEST).read_text())["files"]
    assert all(is_member_path(f["path"]) for f in listed)


def test_verify_does_not_read_files_a_manifest_points_outside_to(tmp_path):
    folder = tmp_path / "o"
    folder.mkdir()
    (folder / MANIFEST).write_text(json.dumps(
        {"files": [{"path": "../secret", "bytes": 3, "sha256": "0" * 64}]}))
    (tmp_path / "secret").write_text("abc")
    problems = verify_manifest(folder)
    assert len(problems) == 1 and "no manifest.json" in problems[0]
