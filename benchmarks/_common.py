"""Shared helpers for the benchmarks: isolated runs with peak memory, a table, a JSON file.

Each case runs in a fresh process so its peak resident memory (ru_maxrss) is its own, and
within a time limit (:data:`CASE_TIMEOUT_S`, or ``timeout_s=``): a case that raises, dies or
runs out of time becomes a row with an ``error``. Results go to
``benchmarks/results/<name>.json`` and are printed as a table, failed cases marked. A
benchmark's ``main`` runs under :func:`run_main`, which exits with status 1 when any case
failed, so ``make bench`` and CI notice.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import queue as queue_module
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"
#: Longest a case may run (s): 4 h (the 10⁵-frame scale run takes about one); override with
#: the environment variable STORMFOLD_BENCH_TIMEOUT_S or per case with ``timeout_s=``.
CASE_TIMEOUT_S = float(os.environ.get("STORMFOLD_BENCH_TIMEOUT_S", 4 * 3600))
# How often the parent checks that the case process is still alive while it waits.
_POLL_S = 2.0
# Tables reported with failed cases, in this process (read by run_main).
_FAILED_TABLES: list[str] = []


def _child(queue, fn, args, kwargs):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    try:
        result = fn(*args, **kwargs)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        queue.put(result)
    except Exception as exc:  # report, don't hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_isolated(fn: Callable[..., dict], *args: Any, timeout_s: float | None = None,
                 **kwargs: Any) -> dict:
    """Run ``fn(*args, **kwargs)`` in a new process; add its peak RSS in MB to the result.

    Returns ``{"error": ...}`` when ``fn`` raises, when the process dies without a result
    (e.g. killed for lack of memory) or when it runs longer than ``timeout_s`` (default
    :data:`CASE_TIMEOUT_S`; the process is then terminated).
    """
    limit = CASE_TIMEOUT_S if timeout_s is None else float(timeout_s)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args, kwargs))
    proc.start()
    deadline = time.monotonic() + limit
    result = None
    while result is None:
        try:
            result = queue.get(timeout=max(min(_POLL_S, deadline - time.monotonic()), 0.01))
        except queue_module.Empty:
            if not proc.is_alive():
                try:  # a result put just before the process ended may still be in transit
                    result = queue.get(timeout=_POLL_S)
                except queue_module.Empty:
                    result = {"error": f"the case process ended (exit code {proc.exitcode}) "
                                       f"without a result"}
            elif time.monotonic() >= deadline:
                proc.terminate()
                result = {"error": f"timed out after {limit:g} s"}
    proc.join(timeout=30)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=30)
    return result


def report(name: str, rows: list[dict], columns: list[str]) -> Path:
    """Print ``rows`` as a fixed-width table and write them with machine info to JSON.

    Rows with an ``error`` are marked FAILED in a ``status`` column and their errors are
    printed below the table; :func:`run_main` then exits with status 1.
    """
    failed = [r for r in rows if "error" in r]
    if failed:
        columns = [*columns, "status"]
        rows = [{**r, "status": "FAILED" if "error" in r else "ok"} for r in rows]
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print(" ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print(" ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths)))
    for r in failed:
        label = ", ".join(f"{c}={r[c]}" for c in columns[:2] if c in r and c != "status")
        print(f"FAILED {label or name}: {r['error']}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "machine": machine(), "failed": len(failed), "rows": rows}
    path.write_text(json.dumps(payload, indent=2))
    print(f"(written to {path})")
    if failed:
        _FAILED_TABLES.append(name)
    return path


def run_main(main: Callable[[], None]) -> None:
    """Run a benchmark's ``main``; exit with status 1 if any of its tables had a failed case."""
    main()
    if _FAILED_TABLES:
        print(f"failed cases in: {', '.join(_FAILED_TABLES)}", file=sys.stderr)
        raise SystemExit(1)


def machine() -> dict:
    """CPU model, its native-bf16 flags, core count, platform and the load average now (the
    machine is shared: timings are only comparable within one run)."""
    from stormfold.device import BF16_CPU_FLAGS, cpu_flags, cpu_model

    return {"cpu": cpu_model(), "cpus": os.cpu_count(),
            "bf16_flags": sorted(cpu_flags() & set(BF16_CPU_FLAGS)),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "platform": platform.platform(), "python": sys.version.split()[0]}


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)
