"""Killed at random points: ``stormfold localize`` and ``stormfold run`` processes get SIGKILL
after seeded random delays; no folder may then hold a manifest that disagrees with its files,
and a rerun (localize) or ``--resume`` (run) gives the result of an uninterrupted run. SIGTERM
and SIGINT end a command with exit 143 and 130, one line, and nothing half-written.

The processes are forked from a server that has imported stormfold and run each command once,
so that a kill lands in the work, not in Python's start-up (seconds of imports here): each
child runs the command line's ``main`` as ``stormfold`` does, with real signals.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml

from stormfold.io.manifest import MANIFEST, STAGING_PREFIX, verify_manifest

SEED = 13
N_FRAMES = 40

SERVER = r'''
import contextlib, io, json, os, signal, sys, time
# Ctrl-C raises KeyboardInterrupt, as in a terminal (a shell's background job ignores SIGINT,
# and Python keeps an ignored SIGINT ignored).
signal.signal(signal.SIGINT, signal.default_int_handler)
import torch
torch.set_num_threads(1)  # no thread pool in the parent: forking stays safe
from stormfold.cli import main

with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    for argv in json.loads(sys.argv[1]):  # warm-up: imports and first-call costs
        assert main(argv) == 0, argv
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(request.get("stderr") or os.devnull, os.O_WRONLY | os.O_CREAT, 0o644)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(fd, 2)
            code = main(request["argv"])
            sys.stderr.flush()
            os._exit(code)
        finally:
            os._exit(99)
    if request.get("delay") is not None:
        time.sleep(request["delay"])
        try:
            os.kill(pid, request.get("signal", 9))
        except ProcessLookupError:
            pass
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    print(json.dumps({"code": code, "seconds": time.monotonic() - t0}), flush=True)
'''


class Forks:
    """The fork server: ``call(argv, delay, signal)`` → (exit code or -signal, seconds)."""

    def __init__(self, cwd: Path, warm_up: list[list[str]]):
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(warm_up)],
                                     cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def call(self, argv, delay=None, signal=9, stderr=None) -> tuple[int, float]:
        request = {"argv": [str(a) for a in argv], "delay": delay, "signal": signal,
                   "stderr": None if stderr is None else str(stderr)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        return reply["code"], reply["seconds"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A 60-frame movie, run configurations over two frame ranges, the fork server."""
    from stormfold.simulate import build_config, simulate_to_folder

    root = tmp_path_factory.mktemp("kill")
    cfg = build_config("thunderstorm", n_frames=N_FRAMES, seed=SEED,
                       overrides=["n_rows=24", "n_cols=24", "activation.density_per_um2=1.0"])
    simulate_to_folder(cfg, root / "sim", progress=False)
    settings = {"movie": str(root / "sim" / "movie.tif"),
                "engine": {"engine": "classic", "batch_frames": 4}, "postprocess": {},
                "report": False, "chunk_frames": 4}
    for name, frames in (("A", [0, N_FRAMES // 2]), ("B", [0, N_FRAMES])):
        for out in ("run_out", f"ref_run_{name}"):
            config = {**settings, "frames": frames, "output": str(root / out)}
            (root / f"{out}_{name}.yaml").write_text(yaml.safe_dump(config))
    warm = {**settings, "frames": [0, 4], "output": str(root / "warm_run")}
    (root / "warm.yaml").write_text(yaml.safe_dump(warm))
    forks = Forks(root, [_localize("warm_loc", "0:4"), ["run", "warm.yaml", "--quiet"]])
    yield root, forks
    forks.close()


def _localize(out: str, frames: str) -> list[str]:
    return ["localize", "sim/movie.tif", "--engine", "classic", "--batch-frames", "4",
            "--frames", frames, "--out", out, "--quiet"]


RANGES = {"A": f"0:{N_FRAMES // 2}", "B": f"0:{N_FRAMES}"}


def _rerun(forks: Forks, root: Path, argv: list[str]) -> float:
    """Run to the end (a failure shows its stderr); returns the seconds it took."""
    err = root / "rerun_stderr.txt"
    err.unlink(missing_ok=True)
    code, seconds = forks.call(argv, stderr=err)
    assert code == 0, err.read_text()
    return seconds


def _images(folder: Path) -> list[np.ndarray]:
    return [tifffile.imread(folder / name) for name in ("superres.tif", "widefield.tif")]


def _staging(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX)] \
        if folder.is_dir() else []


def _complete_and_intact(folder: Path) -> bool:
    """A manifest, if there is one, agrees with every file; True when there is one."""
    if not (folder / MANIFEST).exists():
        return False
    assert verify_manifest(folder) == [], f"{folder}: manifest and files disagree"
    return True


def test_kill_9_at_random_points(lab):
    root, forks = lab
    rng = np.random.default_rng(SEED)
    ref = {}
    seconds = {}
    for name, frames in RANGES.items():
        code, seconds[f"localize {name}"] = forks.call(_localize(f"ref_loc_{name}", frames))
        assert code == 0
        ref[f"localize {name}"] = (root / f"ref_loc_{name}" / "localizations.csv").read_bytes()
        code, seconds[f"run {name}"] = forks.call(["run", f"ref_run_{name}_{name}.yaml", "--quiet"])
        assert code == 0
        for table in ("localizations.csv", "localizations_raw.csv"):
            ref[f"run {name} {table}"] = (root / f"ref_run_{name}" / table).read_bytes()
        ref[f"run {name} images"] = _images(root / f"ref_run_{name}")
    assert ref["localize A"] != ref["localize B"]

    # Delays are drawn over the duration of the last uninterrupted call of the same command
    # (it follows the machine's load); attempts go on until each command was killed 10 times.
    kills = {"localize": 0, "run": 0}
    loc_out, run_out = root / "loc_out", root / "run_out"
    for attempt in range(40):
        if min(kills.values()) >= 10:
            break
        name = "AB"[attempt % 2]  # each kill writes over the other range's complete set
        other = "AB"[1 - attempt % 2]

        # --- localize: kill, check, rerun
        delay = rng.uniform(0.0, seconds[f"localize {name}"])
        code, _ = forks.call(_localize("loc_out", RANGES[name]), delay=delay)
        assert code in (0, -9)
        kills["localize"] += code == -9
        if _complete_and_intact(loc_out):
            assert (loc_out / "localizations.csv").read_bytes() in (ref[f"localize {name}"],
                                                                    ref[f"localize {other}"])
        seconds[f"localize {name}"] = _rerun(forks, root, _localize("loc_out", RANGES[name]))
        assert _complete_and_intact(loc_out) and _staging(loc_out) == []
        assert (loc_out / "localizations.csv").read_bytes() == ref[f"localize {name}"], delay

        # --- run: kill, check, resume
        config = f"run_out_{name}.yaml"
        delay = rng.uniform(0.0, seconds[f"run {name}"])
        code, _ = forks.call(["run", config, "--quiet"], delay=delay)
        assert code in (0, -9)
        kills["run"] += code == -9
        if _complete_and_intact(run_out):
            assert (run_out / "localizations.csv").read_bytes() in (
                ref[f"run {name} localizations.csv"], ref[f"run {other} localizations.csv"])
        seconds[f"run {name}"] = _rerun(forks, root, ["run", config, "--quiet", "--resume"])
        assert _complete_and_intact(run_out) and _staging(run_out) == []
        assert not (run_out / ".stormfold-run").exists()
        for table in ("localizations.csv", "localizations_raw.csv"):
            assert (run_out / table).read_bytes() == ref[f"run {name} {table}"], (delay, table)
        for got, expected in zip(_images(run_out), ref[f"run {name} images"]):
            np.testing.assert_array_equal(got, expected)  # sums of each chunk once
    print(f"kills: {kills} in {attempt} attempts")
    assert min(kills.values()) >= 10


@pytest.mark.parametrize("signal,code", [(15, 143), (2, 130)], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_leave_nothing_half_written(lab, signal, code):
    root, forks = lab
    err = root / f"stderr_{signal}.txt"
    # localize into a new folder: neither the folder nor a staging folder is left.
    out = root / f"fresh_{signal}"
    seconds = forks.call(_localize(f"probe_{signal}", RANGES["B"]))[1]  # the signal lands mid-way
    got, _ = forks.call(_localize(out.name, RANGES["B"]), delay=0.4 * seconds, signal=signal,
                        stderr=err)
    assert got == code
    lines = err.read_text().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert not out.exists()
    # run over a complete earlier run: the old set stays complete and as it was.
    config = root / "run_out_B.yaml"
    run_out = root / "run_out"
    if not _complete_and_intact(run_out):
        assert forks.call(["run", config.name, "--quiet"])[0] == 0
    before = {p.name: p.read_bytes() for p in run_out.iterdir() if p.is_file()}
    seconds = forks.call(["run", "ref_run_B_B.yaml", "--quiet"])[1]
    err.unlink()
    got, _ = forks.call(["run", config.name, "--quiet"], delay=0.4 * seconds, signal=signal,
                        stderr=err)
    assert got == code
    lines = err.read_text().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert _staging(run_out) == []
    assert _complete_and_intact(run_out)
    assert {p.name: p.read_bytes() for p in run_out.iterdir() if p.is_file()} == before


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_an_interrupt_inside_a_clean_up_is_still_an_interrupt(run_cli, monkeypatch, tmp_path):
    """Ctrl-C while numpy closes an .npz comes back as zipfile's ValueError, with the
    KeyboardInterrupt as its context, and a finaliser error follows: still exit 130, one
    line."""
    import io
    import zipfile

    from stormfold.cli import data as data_cli

    def interrupted_in_clean_up(args):
        zf = zipfile.ZipFile(io.BytesIO(), "w")
        handle = zf.open("a.npy", "w")
        handle.write(b"x")
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            zf.close()  # ValueError: an open writing handle; zf's finaliser fails again later

    monkeypatch.setattr(data_cli, "_cmd_evaluate", interrupted_in_clean_up)
    t = tmp_path / "t.csv"
    t.write_text("x [nm],y [nm],frame\n1,1,1\n")
    code, out, err = run_cli("evaluate", "--truth", t, "--locs", t)
    assert code == 130, err
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err
