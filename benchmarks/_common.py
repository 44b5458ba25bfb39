"""Shared helpers for the benchmarks: isolated runs with peak memory, a table, a JSON file.

Each case runs in a fresh process so its peak resident memory (ru_maxrss) is its own.
Results go to ``benchmarks/results/<name>.json`` (ignored by git) and are printed as a table.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULTS = Path(__file__).resolve().parent / "results"


def _child(queue, fn, args, kwargs):
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    try:
        result = fn(*args, **kwargs)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        queue.put(result)
    except Exception as exc:  # report, don't hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def run_isolated(fn: Callable[..., dict], *args: Any, **kwargs: Any) -> dict:
    """Run ``fn(*args, **kwargs)`` in a new process; add its peak RSS in MB to the result."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, fn, args, kwargs))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def report(name: str, rows: list[dict], columns: list[str]) -> Path:
    """Print ``rows`` as a fixed-width table and write them with machine info to JSON."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print(" ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print(" ".join(_fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths)))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": sys.version.split()[0]},
               "rows": rows}
    path.write_text(json.dumps(payload, indent=2))
    print(f"(written to {path})")
    return path


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.0f}"
    return str(v)
