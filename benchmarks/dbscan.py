"""DBSCAN on dense binding sites: stormfold's against scikit-learn's, time and peak memory.

DNA-PAINT-like tables: sites uniform over a 50 µm field, each with ``per_site``
localizations scattered by 10 nm (Gaussian), clustered with eps 50 nm and min_samples 5,
so every localization has about ``per_site`` neighbours. scikit-learn's
:class:`~sklearn.cluster.DBSCAN` holds all neighbour lists at once (n × per_site indices);
:func:`stormfold.postprocess.cluster.dbscan_labels` counts them and takes the lists in
bounded chunks. Each case runs in a fresh process (its own peak RSS, the table included);
the labels of the two are compared where both ran. scikit-learn is not run on the largest
table (it would need ~20 GB).

    python benchmarks/dbscan.py [--threads 1]

Writes ``benchmarks/results/dbscan.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import report, run_isolated, run_main  # noqa: E402

#: (sites, localizations per site, run scikit-learn too).
CASES = [(500, 200, True), (500, 800, True), (500, 2000, False)]
EPS_NM, MIN_SAMPLES, SPREAD_NM, FIELD_NM = 50.0, 5, 10.0, 50_000.0


def points(sites: int, per_site: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, FIELD_NM, (sites, 2))
    return (centres[:, None] + rng.normal(0, SPREAD_NM, (sites, per_site, 2))).reshape(-1, 2)


def case(which: str, sites: int, per_site: int, threads: int) -> dict:
    import hashlib
    import os
    import time

    os.environ["OMP_NUM_THREADS"] = str(threads)
    import numpy as np

    xy = points(sites, per_site)
    t0 = time.perf_counter()
    if which == "stormfold":
        from stormfold.postprocess.cluster import dbscan_labels
        from stormfold.table import make_table

        labels = dbscan_labels(make_table(np.zeros(len(xy), int), xy[:, 0], xy[:, 1]),
                               EPS_NM, MIN_SAMPLES)
    else:
        from sklearn.cluster import DBSCAN

        labels = DBSCAN(eps=EPS_NM, min_samples=MIN_SAMPLES, n_jobs=threads).fit_predict(xy)
    seconds = time.perf_counter() - t0
    return {"seconds": round(seconds, 2), "clusters": int(labels.max() + 1),
            "labels_sha1": hashlib.sha1(np.asarray(labels, np.int64).tobytes()).hexdigest()[:12]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = []
    for sites, per_site, with_sklearn in CASES:
        for which in ("stormfold", "scikit-learn") if with_sklearn else ("stormfold",):
            row = {"implementation": which, "n": sites * per_site, "per_site": per_site,
                   **run_isolated(case, which, sites, per_site, args.threads)}
            rows.append(row)
            print(row, flush=True)
        same = {r.get("labels_sha1") for r in rows[-2:]} if with_sklearn else set()
        if with_sklearn:
            rows[-1]["same_labels"] = rows[-2]["same_labels"] = len(same) == 1
    report("dbscan", rows, ["implementation", "n", "per_site", "seconds", "peak_rss_mb",
                            "clusters", "same_labels"])


if __name__ == "__main__":
    run_main(main)
