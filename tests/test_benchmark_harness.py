"""The benchmark harness (benchmarks/_common.py): a failed, crashed or hung case is a marked
FAILED row and a non-zero exit, never a silent "-" (issue 13)."""
from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def common(tmp_path, monkeypatch):
    # Imported by name, as the benchmarks do: the spawned case process imports it again.
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module("_common")
    monkeypatch.setattr(module, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(module, "_FAILED_TABLES", [])
    return module


# Case functions run in a spawned process: module level, importable by name.
def ok_case(value):
    return {"case": "ok", "value": value}


def raising_case():
    raise RuntimeError("boom")


def dying_case():
    os._exit(3)


def hanging_case():
    time.sleep(60)
    return {"case": "late"}


def test_cases_that_fail_crash_or_hang_become_error_rows(common):
    assert common.run_isolated(ok_case, 7)["value"] == 7
    assert common.run_isolated(raising_case) == {"error": "RuntimeError: boom"}
    assert "ended (exit code 3) without a result" in common.run_isolated(dying_case)["error"]
    t0 = time.monotonic()
    assert common.run_isolated(hanging_case, timeout_s=3) == {"error": "timed out after 3 s"}
    assert time.monotonic() - t0 < 40  # terminated, not waited for


def test_failed_case_is_marked_and_the_benchmark_exits_non_zero(common, capsys):
    rows = [{"case": "a", "seconds": 1.0}, {"case": "b", "error": "RuntimeError: boom"}]

    def main():
        common.report("demo", rows, ["case", "seconds"])

    with pytest.raises(SystemExit) as info:
        common.run_main(main)
    assert info.value.code == 1
    out = capsys.readouterr().out
    assert "FAILED" in out.splitlines()[2] and "ok" in out.splitlines()[1]
    assert "FAILED case=b: RuntimeError: boom" in out
    record = json.loads((common.RESULTS / "demo.json").read_text())
    assert record["failed"] == 1 and record["rows"][1]["status"] == "FAILED"


def test_benchmark_without_failures_exits_normally(common, capsys):
    common.run_main(lambda: common.report("fine", [{"case": "a", "seconds": 1.0}],
                                          ["case", "seconds"]))
    out = capsys.readouterr().out
    assert "status" not in out and "FAILED" not in out
