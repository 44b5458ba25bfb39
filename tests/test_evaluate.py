"""Tests of stormfold.evaluate: matching, metrics, pixel Jaccard, image metrics and the CLI."""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from stormfold.errors import UserError
from stormfold.evaluate import (evaluate, format_table, match, nrmse, pixel_jaccard, psnr,
                                ssim)
from stormfold.evaluate import matching as matching_mod
from stormfold.table import make_table


# --------------------------------------------------------------------------- helpers
def grid_truth(n_frames: int = 4, per_side: int = 5, spacing: float = 600.0) -> pd.DataFrame:
    """Emitters on a grid (600 nm apart, far beyond every tolerance), several frames."""
    g = (np.arange(per_side) + 1) * spacing
    xx, yy = np.meshgrid(g, g)
    n = xx.size
    frames = np.repeat(np.arange(n_frames), n)
    return make_table(frames, np.tile(xx.ravel(), n_frames), np.tile(yy.ravel(), n_frames),
                      photons=1000.0)


def shifted(table: pd.DataFrame, dx: float, dy: float) -> pd.DataFrame:
    return make_table(table["frame"], table["x_nm"] + dx, table["y_nm"] + dy)


def write_ts_csv(path: Path, table: pd.DataFrame, columns=("x [nm]", "y [nm]")) -> Path:
    """A small ThunderSTORM CSV (quoted header, 1-based id and frame)."""
    header = ['"id"', '"frame"'] + [f'"{c}"' for c in columns]
    lines = [",".join(header)]
    source = {"x [nm]": table["x_nm"].to_numpy(), "y [nm]": table["y_nm"].to_numpy()}
    for i, f in enumerate(table["frame"].to_numpy()):
        vals = [str(i + 1), str(int(f) + 1)] + [repr(float(source[c][i])) for c in columns]
        lines.append(",".join(vals))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def brute_force(truth_xy: np.ndarray, locs_xy: np.ndarray, tol: float) -> tuple[int, float]:
    """Best (max pairs, then min total distance) one-to-one matching by enumeration."""
    nt, nl = len(truth_xy), len(locs_xy)
    d = np.hypot(truth_xy[:, None, 0] - locs_xy[None, :, 0],
                 truth_xy[:, None, 1] - locs_xy[None, :, 1]) if nt and nl else np.zeros((nt, nl))
    best = (0, 0.0)
    # every truth either unmatched (None) or matched to a distinct loc within tolerance
    for assign in itertools.product([None] + list(range(nl)), repeat=nt):
        used = [j for j in assign if j is not None]
        if len(used) != len(set(used)):
            continue
        if any(j is not None and d[i, j] > tol for i, j in enumerate(assign)):
            continue
        k = len(used)
        s = sum(d[i, j] for i, j in enumerate(assign) if j is not None)
        if k > best[0] or (k == best[0] and s < best[1] - 1e-9):
            best = (k, s)
    return best


# --------------------------------------------------------------------------- acceptance (API)
@pytest.mark.parametrize("method", ["hungarian", "greedy"])
def test_truth_against_itself(method):
    truth = grid_truth()
    df = evaluate(truth, truth, method=method)
    assert list(df["tolerance_nm"]) == [50.0, 100.0, 250.0]
    assert np.all(df["jaccard"] == 1.0)
    assert np.all(df["rmse_lateral_nm"] == 0.0)
    assert np.all(df["tp"] == len(truth)) and np.all(df["fp"] == 0) and np.all(df["fn"] == 0)
    assert np.all(df["efficiency"] == 100.0)


@pytest.mark.parametrize("method", ["hungarian", "greedy"])
def test_shift_30_40(method):
    truth = grid_truth()
    locs = shifted(truth, 30.0, 40.0)
    df = evaluate(truth, locs, tolerances_nm=(40, 50, 100), method=method).set_index("tolerance_nm")
    row = df.loc[100.0]
    assert row["jaccard"] == 1.0
    assert row["rmse_lateral_nm"] == pytest.approx(50.0)
    assert row["rmse_x_nm"] == pytest.approx(30.0) and row["rmse_y_nm"] == pytest.approx(40.0)
    assert row["bias_x_nm"] == pytest.approx(30.0) and row["bias_y_nm"] == pytest.approx(40.0)
    assert row["precision"] == 1.0 and row["recall"] == 1.0 and row["f1"] == 1.0
    assert row["efficiency"] == pytest.approx(50.0)
    assert df.loc[50.0, "jaccard"] == 1.0          # the tolerance is inclusive
    row = df.loc[40.0]
    assert row["jaccard"] == 0.0 and row["tp"] == 0
    assert row["fp"] == len(truth) and row["fn"] == len(truth)
    assert math.isnan(row["rmse_lateral_nm"]) and math.isnan(row["bias_x_nm"])


def test_evaluate_columns_and_counts():
    truth = make_table([0, 0, 1], [100, 1000, 100], [100, 1000, 100])
    locs = make_table([0, 1, 1], [110, 100, 3000], [100, 100, 3000])
    df = evaluate(truth, locs, tolerances_nm=50)
    assert list(df.columns) == ["tolerance_nm", "n_truth", "n_locs", "tp", "fp", "fn", "jaccard",
                                "precision", "recall", "f1", "rmse_x_nm", "rmse_y_nm",
                                "rmse_lateral_nm", "bias_x_nm", "bias_y_nm", "efficiency"]
    r = df.iloc[0]
    assert (r["n_truth"], r["n_locs"], r["tp"], r["fp"], r["fn"]) == (3, 3, 2, 1, 1)
    assert r["jaccard"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    assert r["rmse_x_nm"] == pytest.approx(math.sqrt(50.0))
    assert r["bias_x_nm"] == pytest.approx(5.0) and r["bias_y_nm"] == 0.0
    expected_e = 100 - math.hypot(50.0, math.sqrt(50.0))
    assert r["efficiency"] == pytest.approx(expected_e)
    text = format_table(df)
    assert "jaccard" in text and "50 nm" in text and "0.500" in text


def test_empty_tables():
    empty = make_table([], [], [])
    truth = make_table([0], [10], [10])
    r = evaluate(truth, empty, tolerances_nm=100).iloc[0]
    assert (r["tp"], r["fp"], r["fn"]) == (0, 0, 1)
    assert r["jaccard"] == 0.0 and math.isnan(r["precision"]) and r["recall"] == 0.0
    r = evaluate(empty, empty, tolerances_nm=100).iloc[0]
    assert r["tp"] == 0 and math.isnan(r["jaccard"])


# --------------------------------------------------------------------------- matching
def test_match_indices_and_offsets():
    truth = make_table([0, 0], [0.0, 1000.0], [0.0, 0.0])
    locs = make_table([0, 0, 0], [5000.0, 1003.0, 4.0], [0.0, 4.0, -3.0])
    m = match(truth, locs, 10)
    assert m.truth_index.tolist() == [0, 1] and m.locs_index.tolist() == [2, 1]
    assert m.dx_nm.tolist() == [4.0, 3.0] and m.dy_nm.tolist() == [-3.0, 4.0]
    assert m.distance_nm.tolist() == [5.0, 5.0]
    assert (m.tp, m.fp, m.fn) == (2, 1, 0)


def test_other_frame_never_matches():
    truth = make_table([0, 1], [100.0, 100.0], [100.0, 100.0])
    locs = make_table([1, 2], [100.0, 100.0], [100.0, 100.0])
    for method in ("hungarian", "greedy"):
        m = match(truth, locs, 250, method=method)
        assert m.truth_index.tolist() == [1] and m.locs_index.tolist() == [0]
        assert m.distance_nm.tolist() == [0.0]


def test_greedy_differs_from_hungarian():
    # T1–L0 is the shortest pair (45 nm); taking it first leaves T0 and L1 without partner.
    truth = make_table([0, 0], [0.0, 100.0], [0.0, 0.0])
    locs = make_table([0, 0], [55.0, 160.0], [0.0, 0.0])
    g = match(truth, locs, 70, method="greedy")
    h = match(truth, locs, 70, method="hungarian")
    assert g.truth_index.tolist() == [1] and g.locs_index.tolist() == [0]
    assert h.truth_index.tolist() == [0, 1] and h.locs_index.tolist() == [0, 1]
    assert h.distance_nm.sum() == pytest.approx(115.0)
    jg = evaluate(truth, locs, 70, method="greedy")["jaccard"].iloc[0]
    jh = evaluate(truth, locs, 70, method="hungarian")["jaccard"].iloc[0]
    assert jg == pytest.approx(1 / 3) and jh == 1.0


@pytest.mark.parametrize("sparse", [False, True])
def test_hungarian_matches_brute_force(monkeypatch, sparse):
    """Max number of pairs, then min total distance — checked against enumeration."""
    if sparse:  # force the sparse solver for every non-trivial component
        monkeypatch.setattr(matching_mod, "DENSE_LIMIT", 0)
    rng = np.random.default_rng(7)
    for _ in range(150):
        nt, nl = int(rng.integers(0, 6)), int(rng.integers(0, 6))
        t = rng.uniform(0, 300, (nt, 2))
        l = rng.uniform(0, 300, (nl, 2))
        tol = float(rng.uniform(40, 200))
        m = match(make_table(np.zeros(nt), t[:, 0], t[:, 1]),
                  make_table(np.zeros(nl), l[:, 0], l[:, 1]), tol)
        k, s = brute_force(t, l, tol)
        assert m.tp == k
        assert m.distance_nm.sum() == pytest.approx(s, abs=1e-6)
        assert np.all(m.distance_nm <= tol)
        assert len(set(m.truth_index)) == m.tp and len(set(m.locs_index)) == m.tp


def test_hungarian_never_fewer_pairs_than_greedy_and_greedy_is_sequential():
    rng = np.random.default_rng(3)
    for _ in range(50):
        n, nl = int(rng.integers(1, 60)), int(rng.integers(1, 60))
        truth = make_table(rng.integers(0, 3, n), rng.uniform(0, 800, n), rng.uniform(0, 800, n))
        locs = make_table(rng.integers(0, 3, nl), rng.uniform(0, 800, nl),
                          rng.uniform(0, 800, nl))
        h = match(truth, locs, 150, method="hungarian")
        g = match(truth, locs, 150, method="greedy")
        assert h.tp >= g.tp
        # greedy = sequential scan of all same-frame pairs sorted by distance
        t = truth.to_numpy()
        lo = locs.to_numpy()
        pairs = sorted((math.hypot(lo[j, 1] - t[i, 1], lo[j, 2] - t[i, 2]), i, j)
                       for i in range(n) for j in range(nl) if t[i, 0] == lo[j, 0])
        used_t, used_l, ref = set(), set(), []
        for d, i, j in pairs:
            if d <= 150 and i not in used_t and j not in used_l:
                used_t.add(i), used_l.add(j), ref.append((i, j))
        assert sorted(ref) == sorted(zip(g.truth_index.tolist(), g.locs_index.tolist()))


def test_invalid_arguments():
    truth = grid_truth(1, 2)
    with pytest.raises(UserError):
        match(truth, truth, -1)
    with pytest.raises(UserError):
        match(truth, truth, 50, method="nearest")
    with pytest.raises(UserError, match="x_nm"):
        match(truth.drop(columns="x_nm"), truth, 50)
    # A frame range is whole frames: a fraction is refused, not truncated.
    for frames, message in (((0.5, 2), "first frame must be a whole number"),
                            ((0, 1.5), "end frame must be a whole number"),
                            ((0, "2"), "end frame must be a whole number"),
                            ((2, 1), "is empty"), ((0,), "two numbers")):
        with pytest.raises(UserError, match=message):
            evaluate(truth, truth, frames=frames)
    assert evaluate(truth, truth, frames=(np.int64(0), np.int64(1))).jaccard.min() == 1.0


# --------------------------------------------------------------------------- border
def test_border_exclusion():
    fov = (2000.0, 1000.0)
    truth = make_table([0] * 4, [100.0, 1000.0, 1000.0, 1950.0], [500.0, 500.0, 960.0, 500.0])
    locs = make_table([0] * 4, [110.0, 1010.0, 1000.0, 1940.0], [500.0, 500.0, 970.0, 500.0])
    r = evaluate(truth, locs, 100, border_nm=450, fov_nm=fov).iloc[0]
    assert (r["n_truth"], r["n_locs"], r["tp"]) == (1, 1, 1)
    r = evaluate(truth, locs, 100, border_nm=0, fov_nm=fov).iloc[0]
    assert (r["n_truth"], r["n_locs"], r["tp"]) == (4, 4, 4)
    # a truth just inside, its localization just outside: an FN, not a match
    truth = make_table([0], [460.0], [500.0])
    locs = make_table([0], [440.0], [500.0])
    r = evaluate(truth, locs, 100, border_nm=450, fov_nm=fov).iloc[0]
    assert (r["n_truth"], r["n_locs"], r["fn"]) == (1, 0, 1)
    with pytest.raises(UserError, match="field of view"):
        evaluate(truth, locs, 100, border_nm=450)
    with pytest.raises(UserError):
        evaluate(truth, locs, 100, border_nm=-1, fov_nm=fov)


# --------------------------------------------------------------------------- pixel Jaccard
def test_pixel_jaccard_hand_made():
    gt = np.zeros((8, 8))
    gt[2, 2] = gt[2, 4] = gt[6, 6] = 1
    rec = np.zeros((8, 8))
    rec[2, 3] = 0.9     # 1 px from both (2, 2) and (2, 4): takes (2, 2) (tie → lower truth pixel)
    rec[3, 4] = 0.8     # 1 px from (2, 4): TP
    rec[0, 7] = 0.5     # far from everything: FP
    rec[5, 5] = 0.05    # diagonal neighbour of (6, 6), √2 px
    r = pixel_jaccard(rec, gt, radius=1.0, threshold=0.1)
    assert (r.tp, r.fp, r.fn) == (2, 1, 1) and r.jaccard == pytest.approx(0.5)
    r = pixel_jaccard(rec, gt, radius=math.sqrt(2), threshold=0.0)
    assert (r.tp, r.fp, r.fn) == (3, 1, 0) and r.jaccard == pytest.approx(0.75)
    # one-to-one: two detections next to a single truth pixel → 1 TP, 1 FP
    gt1 = np.zeros((5, 5))
    gt1[2, 2] = 3
    rec1 = np.zeros((5, 5))
    rec1[2, 1] = rec1[2, 3] = 1
    r = pixel_jaccard(rec1, gt1, radius=1)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    # radius 0: exact pixels only; truth given as coordinates
    r = pixel_jaccard(rec1, np.array([[2, 1], [4, 4]]), radius=0)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)


def test_pixel_jaccard_closest_first_and_batch():
    gt = np.zeros((1, 9))
    gt[0, 4] = 1
    rec = np.zeros((1, 9))
    rec[0, 2] = rec[0, 5] = 1          # distances 2 and 1: the closer one is the TP
    r = pixel_jaccard(rec, gt, radius=2)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    batch_rec = np.stack([rec, np.zeros_like(rec)])
    batch_gt = np.stack([gt, gt])
    r = pixel_jaccard(batch_rec, batch_gt, radius=2)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    assert r.tp_per_image.tolist() == [1, 0] and r.fn_per_image.tolist() == [0, 1]
    assert r.jaccard_per_image.tolist() == [0.5, 0.0]
    r = pixel_jaccard(batch_rec, np.array([[1, 0, 4]]), radius=2)   # (image, row, col)
    assert (r.tp, r.fp, r.fn) == (0, 2, 1)
    with pytest.raises(UserError):
        pixel_jaccard(rec, np.zeros((3, 3)))


# --------------------------------------------------------------------------- image metrics
def _ssim_direct(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """SSIM with an explicit 11 × 11 Gaussian window per pixel (symmetric padding)."""
    sigma, radius = 1.5, 5
    g = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    w = np.outer(g, g)
    w /= w.sum()
    xp = np.pad(x, radius, mode="symmetric")
    yp = np.pad(y, radius, mode="symmetric")
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for r in range(radius, x.shape[0] - radius):
        for c in range(radius, x.shape[1] - radius):
            px = xp[r:r + 2 * radius + 1, c:c + 2 * radius + 1]
            py = yp[r:r + 2 * radius + 1, c:c + 2 * radius + 1]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * (px - mx) ** 2).sum()
            vy = (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            values.append((2 * mx * my + c1) * (2 * cxy + c2)
                          / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_against_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, 18))
    y = x + rng.normal(0, 0.2, x.shape)
    assert ssim(x, y, data_range=1.0) == pytest.approx(_ssim_direct(x, y, 1.0), rel=1e-9)
    assert ssim(x, x) == pytest.approx(1.0)
    assert ssim(x, y, data_range=1.0) < 1.0
    assert ssim(x, y, data_range=1.0) == pytest.approx(ssim(y, x, data_range=1.0))
    # a stack is a batch of 2D images
    stack = ssim(np.stack([x, x]), np.stack([y, x]), data_range=1.0)
    assert stack == pytest.approx((ssim(x, y, data_range=1.0) + 1.0) / 2)
    with pytest.raises(UserError):
        ssim(x[:5, :5], y[:5, :5])
    with pytest.raises(UserError):
        ssim(x, y[:, :5])


def test_psnr_and_nrmse_known_answers():
    ref = np.zeros((4, 4))
    ref[::2] = 1.0
    est = ref + 0.1
    assert psnr(ref, est) == pytest.approx(20.0)                 # R = 1, MSE = 0.01
    assert psnr(ref, est, data_range=10.0) == pytest.approx(40.0)
    assert psnr(ref, ref) == math.inf
    assert nrmse(ref, est) == pytest.approx(0.1)
    diff = np.array([[3.0, -4.0]])
    assert nrmse(np.zeros((1, 2)), diff) == pytest.approx(math.sqrt(12.5))
    assert nrmse(ref, est, normalization="range") == pytest.approx(0.1)
    assert nrmse(ref, est, normalization="mean") == pytest.approx(0.2)
    with pytest.raises(UserError):
        psnr(np.ones((3, 3)), np.zeros((3, 3)))                 # constant reference, no range
    with pytest.raises(UserError):
        nrmse(ref, est, normalization="max")


# --------------------------------------------------------------------------- CLI
def test_cli_acceptance(tmp_path, run_cli):
    truth = grid_truth(3, 4)
    t_csv = write_ts_csv(tmp_path / "truth.csv", truth)
    same_csv = write_ts_csv(tmp_path / "same.csv", truth)
    moved_csv = write_ts_csv(tmp_path / "moved.csv", shifted(truth, 30.0, 40.0))

    code, out, err = run_cli("evaluate", "--truth", t_csv, "--locs", same_csv,
                             "--json", tmp_path / "self.json")
    assert code == 0, err
    assert "jaccard" in out
    rep = json.loads((tmp_path / "self.json").read_text())
    assert [r["jaccard"] for r in rep["metrics"]] == [1.0, 1.0, 1.0]
    assert [r["rmse_lateral_nm"] for r in rep["metrics"]] == [0.0, 0.0, 0.0]
    assert rep["parameters"]["tolerances_nm"] == [50.0, 100.0, 250.0]
    assert rep["parameters"]["matching"] == "hungarian"
    assert rep["truth"].endswith("truth.csv") and rep["locs"].endswith("same.csv")
    assert "stormfold_version" in rep

    code, out, err = run_cli("evaluate", "--truth", t_csv, "--locs", moved_csv,
                             "--tolerance", "40,100", "--matching", "greedy",
                             "--json", tmp_path / "moved.json")
    assert code == 0, err
    rep = json.loads((tmp_path / "moved.json").read_text())
    by_tol = {r["tolerance_nm"]: r for r in rep["metrics"]}
    assert by_tol[100.0]["jaccard"] == 1.0
    assert by_tol[100.0]["rmse_lateral_nm"] == pytest.approx(50.0)
    assert by_tol[100.0]["bias_x_nm"] == pytest.approx(30.0)
    assert by_tol[100.0]["bias_y_nm"] == pytest.approx(40.0)
    assert by_tol[40.0]["jaccard"] == 0.0
    assert by_tol[40.0]["rmse_lateral_nm"] is None          # NaN is written as null
    assert rep["parameters"]["matching"] == "greedy"


def test_cli_border_from_simulation_yaml(tmp_path, run_cli):
    folder = tmp_path / "sim"
    folder.mkdir()
    truth = make_table([0, 0], [100.0, 1000.0], [1000.0, 1000.0])
    t_csv = write_ts_csv(folder / "truth.csv", truth)
    l_csv = write_ts_csv(tmp_path / "locs.csv", truth)
    code, _, err = run_cli("evaluate", "--truth", t_csv, "--locs", l_csv, "--border-nm", "450")
    assert code == 2 and "fov" in err and len(err.strip().splitlines()) == 1
    (folder / "simulation.yaml").write_text("pixel_size_nm: 100\nn_rows: 20\nn_cols: 30\n")
    code, _, err = run_cli("evaluate", "--truth", t_csv, "--locs", l_csv, "--border-nm", "450",
                           "--tolerance", "100", "--json", tmp_path / "b.json")
    assert code == 0, err
    rep = json.loads((tmp_path / "b.json").read_text())
    assert rep["parameters"]["fov_nm"] == [3000.0, 2000.0]
    assert rep["metrics"][0]["n_truth"] == 1 and rep["metrics"][0]["tp"] == 1
    code, _, err = run_cli("evaluate", "--truth", t_csv, "--locs", l_csv, "--border-nm", "450",
                           "--fov-nm", "500,500", "--tolerance", "100")
    assert code == 2


@pytest.mark.parametrize("case", ["missing_truth", "missing_locs", "missing_column",
                                  "bad_tolerance", "negative_tolerance", "bad_fov",
                                  "bad_matching", "json_is_input"])
def test_cli_bad_inputs_exit_2(tmp_path, run_cli, case):
    truth = grid_truth(1, 2)
    t_csv = write_ts_csv(tmp_path / "truth.csv", truth)
    l_csv = write_ts_csv(tmp_path / "locs.csv", truth)
    out_json = tmp_path / "out.json"
    args = ["evaluate", "--truth", t_csv, "--locs", l_csv, "--json", out_json]
    if case == "missing_truth":
        args[2] = tmp_path / "nope.csv"
    elif case == "missing_locs":
        args[4] = tmp_path / "nope.csv"
    elif case == "missing_column":
        args[4] = write_ts_csv(tmp_path / "no_y.csv", truth, columns=("x [nm]",))
    elif case == "bad_tolerance":
        args += ["--tolerance", "fifty"]
    elif case == "negative_tolerance":
        args += ["--tolerance", "-5"]
    elif case == "bad_fov":
        args += ["--border-nm", "100", "--fov-nm", "1000"]
    elif case == "bad_matching":
        args += ["--matching", "nearest"]
    elif case == "json_is_input":
        args[6] = l_csv
    before = l_csv.read_bytes()
    code, out, err = run_cli(*args)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1
    assert not out_json.exists()
    assert l_csv.read_bytes() == before


def test_pixel_jaccard_follows_the_papers_tp_rule():
    """Fig. 2 of Bonettini et al.: a reconstructed pixel within δ of a true molecule is a TP;
    when two fall in the same ball only the closest is a TP, the other is a FP; a true pixel
    with no reconstruction within δ is a FN."""
    gt = np.zeros((10, 10))
    gt[3, 3] = 1.0                  # two detections in its ball of radius 2
    gt[8, 8] = 1.0                  # nothing near it
    rec = np.zeros((10, 10))
    rec[3, 5] = 1.0                 # distance 2 (inside the ball, on its edge)
    rec[4, 4] = 1.0                 # distance √2: the closest → the TP
    rec[0, 9] = 1.0                 # far from every true pixel
    r = pixel_jaccard(rec, gt, radius=2.0)
    assert (r.tp, r.fp, r.fn) == (1, 2, 1) and r.jaccard == pytest.approx(1 / 4)
    # The closest one wins whatever the order of the pixels: swap which one is closer.
    rec2 = np.zeros((10, 10))
    rec2[3, 4] = 1.0                # distance 1: the TP now
    rec2[5, 3] = 1.0                # distance 2: FP
    r = pixel_jaccard(rec2, gt, radius=2.0)
    assert (r.tp, r.fp, r.fn) == (1, 1, 1)
    # Outside the ball (δ = 1) the farther pixel is a FP whatever happens to the other.
    r = pixel_jaccard(rec, gt, radius=1.0)
    assert (r.tp, r.fp, r.fn) == (0, 3, 2)
