"""Output sets as transactions (io.outputs, io.manifest): a failed command leaves the old set
as it was, staging folders of dead processes are removed, the disk space is checked before
any work, and errors of the environment are one line naming the user's path."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from stormfold.errors import UserError
from stormfold.io import outputs as outputs_module
from stormfold.io.manifest import MANIFEST, STAGING_PREFIX, read_manifest, verify_manifest
from stormfold.io.outputs import OutputFiles, OutputFolder, check_free_space


def _write_set(folder: Path, files: dict, command: str = "test", fail: bool = False) -> None:
    out = OutputFolder(folder, command, list(files))
    with out:
        for name, text in files.items():
            out.path(name).parent.mkdir(parents=True, exist_ok=True)
            out.path(name).write_text(text)
        if fail:
            raise RuntimeError("the work failed")
        out.commit({"n": len(files)})


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def test_a_complete_set_has_a_manifest_that_lists_every_file(tmp_path):
    out = tmp_path / "out"
    _write_set(out, {"a.csv": "1\n", "b.yaml": "x: 1\n", "sub/c.txt": "c"})
    manifest = read_manifest(out)
    assert manifest["complete"] is True and manifest["command"] == "test"
    assert [f["path"] for f in manifest["files"]] == ["a.csv", "b.yaml", "sub/c.txt"]
    assert verify_manifest(out) == []
    assert [p.name for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)] == []
    (out / "a.csv").write_text("2\n")  # same size, other content
    assert verify_manifest(out, checksums=False) == []
    assert any("content differs" in line for line in verify_manifest(out))
    (out / "b.yaml").unlink()
    assert any("missing" in line for line in verify_manifest(out))


def test_old_set_untouched_when_the_new_one_fails(tmp_path):
    out = tmp_path / "out"
    _write_set(out, {"a.csv": "old\n", "b.yaml": "old: 1\n"})
    before = _tree(out)
    with pytest.raises(RuntimeError):
        _write_set(out, {"a.csv": "new\n", "c.png": "new"}, fail=True)
    assert _tree(out) == before and verify_manifest(out) == []


def test_new_set_replaces_the_old_and_removes_its_stale_files(tmp_path):
    out = tmp_path / "out"
    (tmp_path / "out").mkdir()
    (out / "notes.txt").write_text("the user's own file")
    _write_set(out, {"a.csv": "old\n", "old_only.png": "x"})
    _write_set(out, {"a.csv": "new\n"})
    assert (out / "a.csv").read_text() == "new\n"
    assert not (out / "old_only.png").exists()
    assert (out / "notes.txt").read_text() == "the user's own file"  # not the set's: kept
    assert verify_manifest(out) == []


def test_a_failed_command_leaves_no_folder_it_created(tmp_path):
    out = tmp_path / "new" / "deeper" / "out"
    with pytest.raises(RuntimeError):
        _write_set(out, {"a.csv": "1\n"}, fail=True)
    assert not (tmp_path / "new").exists()


def test_interrupted_commit_leaves_no_manifest(tmp_path, monkeypatch):
    """A commit that stops after the first file moved (as a kill would) leaves a folder
    without manifest: incomplete, never a manifest that disagrees with the files."""
    out = tmp_path / "out"
    _write_set(out, {"a.csv": "old\n", "b.csv": "old\n"})
    real = os.replace
    calls = []

    def replace_once(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real(src, dst)

    monkeypatch.setattr(outputs_module.os, "replace", replace_once)
    with pytest.raises(KeyboardInterrupt):
        _write_set(out, {"a.csv": "new\n", "b.csv": "new\n"})
    monkeypatch.setattr(outputs_module.os, "replace", real)
    assert not (out / MANIFEST).exists()
    assert verify_manifest(out) == [f"{out}: no {MANIFEST} (incomplete or not a stormfold output)"]
    _write_set(out, {"a.csv": "new\n", "b.csv": "new\n"})  # the next run completes it
    assert verify_manifest(out) == [] and (out / "b.csv").read_text() == "new\n"


def test_stale_staging_of_dead_processes_is_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    stale = out / f"{STAGING_PREFIX}{dead}.abcdef"
    stale.mkdir()
    (stale / "localizations.csv").write_text("half")
    alive = out / f"{STAGING_PREFIX}{os.getppid()}.abcdef"  # another running process's
    alive.mkdir()
    _write_set(out, {"a.csv": "1\n"})
    assert not stale.exists()
    assert alive.exists()
    assert verify_manifest(out) == []


def test_hard_linked_staged_file_is_moved_in(tmp_path):
    """A staged file that is a hard link of the file it replaces (a resumed run's table)."""
    out = tmp_path / "out"
    _write_set(out, {"a.csv": "same\n"})
    target = OutputFolder(out, "test", ["a.csv"])
    with target:
        os.link(out / "a.csv", target.path("a.csv"))
        target.commit()
    assert verify_manifest(out) == []
    assert [p.name for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)] == []


def test_another_commands_complete_folder_is_refused(tmp_path):
    out = tmp_path / "out"
    _write_set(out, {"localizations.csv": "x\n", "run.yaml": "y\n"}, command="localize")
    before = _tree(out)
    with pytest.raises(UserError, match="complete outputs of another command"):
        _write_set(out, {"postprocessed.csv": "z\n"}, command="postprocess")
    with pytest.raises(UserError, match="belongs to the complete outputs"):
        OutputFiles([out / "run.yaml"]).check()
    OutputFiles([out / "filtered.csv"]).check()  # a new name beside them is fine
    assert _tree(out) == before


def test_output_replacing_an_input_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    movie = tmp_path / "in" / "widefield.tif"
    movie.write_bytes(b"movie")
    with pytest.raises(UserError, match="would overwrite the input file"):
        OutputFolder(tmp_path / "in", "localize", ["widefield.tif"], [movie]).check()
    with pytest.raises(UserError, match="written into the input folder"):
        OutputFiles([tmp_path / "in" / "x.csv"], [tmp_path / "in"]).check()
    with pytest.raises(UserError, match="lies in the output folder"):
        OutputFolder(tmp_path, "run", ["in"], [movie], subfolders=["in"]).check()
    assert movie.read_bytes() == b"movie"


DiskUsage = namedtuple("DiskUsage", "total used free")


def test_disk_space_is_checked_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs_module.shutil, "disk_usage",
                        lambda path: DiskUsage(10**9, 10**9 - 2_000_000, 2_000_000))
    with pytest.raises(UserError) as info:
        check_free_space(tmp_path / "out", 5e6, "the localize outputs in")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "out") in message
    assert "6.2 MB needed, 2.0 MB free" in message  # 1.05 × 5 MB + 1 MB margin
    check_free_space(tmp_path / "out", 0.5e6, "the outputs")  # fits


@pytest.fixture(scope="module")
def movie(tmp_path_factory):
    from stormfold.simulate import build_config, simulate_to_folder

    folder = tmp_path_factory.mktemp("sim")
    cfg = build_config("thunderstorm", n_frames=8, seed=2, overrides=["n_rows=16", "n_cols=16"])
    simulate_to_folder(cfg, folder, progress=False)
    return folder / "movie.tif"


def _localize(run_cli, movie, out):
    return run_cli("localize", movie, "--engine", "classic", "--out", out, "--quiet")


def test_cli_full_disk_before_any_work(movie, tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(outputs_module.shutil, "disk_usage",
                        lambda path: DiskUsage(10**9, 10**9 - 1000, 1000))
    code, out, err = _localize(run_cli, movie, tmp_path / "out")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "not enough free disk space" in err
    assert str(tmp_path / "out") in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("number,cause", [(errno.ENOSPC, "no space left on the disk"),
                                          (errno.EACCES, "permission denied")])
def test_cli_environment_error_while_writing_names_the_users_path(movie, tmp_path, run_cli,
                                                                  monkeypatch, number, cause):
    """The disk fills up (or a permission is lost) while the images are written: one line
    naming OUT/superres.tif (not the hidden temporary file), exit 2, the old set intact."""
    from stormfold.io import atomic
    from stormfold.localize import runner

    out = tmp_path / "out"
    assert _localize(run_cli, movie, out)[0] == 0
    before = _tree(out)

    def failing(superres_path, *args, **kwargs):
        hidden = Path(superres_path).with_name(f".{Path(superres_path).name}.0123abcd.tmp")
        hidden.write_bytes(b"half an image")
        raise OSError(number, os.strerror(number), str(hidden))

    monkeypatch.setattr(runner, "write_images", failing)
    code, stdout, err = _localize(run_cli, movie, out)
    assert code == 2 and stdout == ""
    assert err == f"stormfold localize: error: cannot write {out / 'superres.tif'}: {cause}\n"
    assert _tree(out) == before and verify_manifest(out) == []
    assert atomic is not None


def test_cli_unwritable_destination_names_it(movie, tmp_path, run_cli, monkeypatch):
    """mkdir refused (EACCES; simulated, as root ignores chmod): one line naming --out."""
    real = Path.mkdir
    target = tmp_path / "locked" / "out"

    def mkdir(self, *args, **kwargs):
        if Path(self) == target:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, stdout, err = _localize(run_cli, movie, target)
    assert code == 2
    assert err == f"stormfold localize: error: cannot write {target}: permission denied\n"
    assert not (tmp_path / "locked").exists()


def test_evaluate_json_to_an_unwritable_path_prints_no_metrics(movie, tmp_path, run_cli):
    truth = movie.parent / "truth.csv"
    target = tmp_path / "a_file"
    target.write_text("")
    code, stdout, err = run_cli("evaluate", "--truth", truth, "--locs", truth,
                                "--json", target / "e.json")
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert str(target) in err


def test_manifest_records_the_command_and_its_parameters(movie, tmp_path, run_cli):
    out = tmp_path / "out"
    assert _localize(run_cli, movie, out)[0] == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["command"] == "localize"
    assert isinstance(manifest["command_line"], list)  # sys.argv (pytest's, in-process)
    first = manifest["fingerprint"]
    assert _localize(run_cli, movie, out)[0] == 0
    assert json.loads((out / MANIFEST).read_text())["fingerprint"] == first  # same parameters
    assert run_cli("localize", movie, "--engine", "classic", "--out", out, "--quiet",
                   "--frames", "0:4")[0] == 0
    assert json.loads((out / MANIFEST).read_text())["fingerprint"] != first
    shutil.rmtree(out)


def test_training_history_written_in_place_makes_the_model_incomplete(tmp_path):
    """A new training in a complete model's folder rewrites its history epoch by epoch: the
    old manifest goes first, so a kill mid-training never leaves it describing other files."""
    from stormfold.training.output import write_history

    model = tmp_path / "model"
    _write_set(model, {"weights.safetensors": "w", "model.yaml": "engine: x\n",
                       "training.csv": "epoch\n1\n"}, command="model")
    write_history(model, [{"epoch": 1}, {"epoch": 2}], "training.csv")
    assert not (model / MANIFEST).exists()
    assert (model / "training.csv").read_text() == "epoch\n1\n2\n"


def test_sigterm_during_the_commit_waits_for_its_end(tmp_path, monkeypatch):
    """SIGTERM while the new files are moved in arrives after the manifest is written: the
    folder is the complete new set, not a mix."""
    import signal as signal_module

    out = tmp_path / "out"
    _write_set(out, {"a.csv": "old\n", "b.csv": "old\n"})
    real = os.replace
    received = []

    def replace_and_signal(src, dst):
        if not received:
            received.append(True)
            os.kill(os.getpid(), signal_module.SIGTERM)
        real(src, dst)

    def handler(signum, frame):
        raise KeyboardInterrupt("SIGTERM")

    previous = signal_module.signal(signal_module.SIGTERM, handler)
    try:
        monkeypatch.setattr(outputs_module.os, "replace", replace_and_signal)
        with pytest.raises(KeyboardInterrupt):
            _write_set(out, {"a.csv": "new\n", "b.csv": "new\n"})
    finally:
        signal_module.signal(signal_module.SIGTERM, previous)
    assert received and verify_manifest(out) == []
    assert (out / "a.csv").read_text() == (out / "b.csv").read_text() == "new\n"


def test_a_set_cut_short_then_a_smaller_set_leaves_no_orphan_refused_later(tmp_path,
                                                                          monkeypatch):
    """Review 16: set {a, c}; a commit of {a} cut short; {a} again; then {a, c} was refused
    because c (written by stormfold) was no longer listed anywhere."""
    out = tmp_path / "out"
    _write_set(out, {"a.csv": "1\n", "c.csv": "1\n"})
    real = os.replace

    def replace_once(src, dst):
        real(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(outputs_module.os, "replace", replace_once)
    with pytest.raises(KeyboardInterrupt):
        _write_set(out, {"a.csv": "2\n"})
    monkeypatch.setattr(outputs_module.os, "replace", real)
    _write_set(out, {"a.csv": "2\n"})  # completes; c.csv, the old set's, is stale and goes
    assert not (out / "c.csv").exists() and verify_manifest(out) == []
    _write_set(out, {"a.csv": "3\n", "c.csv": "3\n"})  # not refused
    assert verify_manifest(out) == [] and (out / "c.csv").read_text() == "3\n"
