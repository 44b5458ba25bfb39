"""Warnings for mismatched truth and localization tables (review 18, D1)."""
import warnings

import numpy as np
import pytest

from stormfold.evaluate import evaluate
from stormfold.evaluate.sanity import input_warnings
from stormfold.table import make_table


def blinking_truth(n_emitters=300, n_frames=40, on_frames=3, seed=0):
    """Emitters ON for ``on_frames`` consecutive frames each (the case where a shift by
    one frame also pairs many emitters)."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, n_frames - on_frames, n_emitters)
    x, y = rng.uniform(0, 6400, n_emitters), rng.uniform(0, 6400, n_emitters)
    frame = (start[:, None] + np.arange(on_frames)).ravel()
    return make_table(frame, np.repeat(x, on_frames), np.repeat(y, on_frames))


def localized(truth, seed=1, sd_nm=20.0):
    rng = np.random.default_rng(seed)
    keep = rng.random(len(truth)) < 0.9
    t = truth[keep]
    return make_table(t["frame"].to_numpy(), t["x_nm"].to_numpy() + rng.normal(0, sd_nm, len(t)),
                      t["y_nm"].to_numpy() + rng.normal(0, sd_nm, len(t)))


def test_a_right_table_raises_no_suspicion():
    truth = blinking_truth()
    assert input_warnings(truth, localized(truth)) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate(truth, localized(truth))


@pytest.mark.parametrize("shift", [1, -1])
def test_frames_shifted_by_one(shift):
    truth = blinking_truth()
    locs = localized(truth)
    locs["frame"] = locs["frame"] + shift
    locs = locs[locs["frame"] >= 0]
    said = input_warnings(truth, locs)
    assert len(said) == 1 and f"shifted by {-shift:+d}" in said[0]
    with pytest.warns(UserWarning, match="numbered from 1 and the other from 0"):
        evaluate(truth, locs)


def test_positions_in_another_unit():
    truth = blinking_truth()
    locs = localized(truth)
    locs["x_nm"] /= 100.0
    locs["y_nm"] /= 100.0
    said = input_warnings(truth, locs)
    assert any("another unit" in line and "100× apart" in line for line in said)


def test_truth_beyond_the_localized_frames():
    truth = blinking_truth()
    locs = localized(truth)
    locs = locs[locs["frame"] < 25]
    said = input_warnings(truth, locs)
    assert len(said) == 1 and "give --frames 0:25" in said[0]
    assert input_warnings(truth, locs, frames_given=True) == []
    # A few truth rows in one frame past the last localization: no word.
    assert input_warnings(truth[truth["frame"] <= 25], locs) == []


def test_cli_evaluate_warns_and_still_scores(tmp_path, run_cli):
    from stormfold.io.thunderstorm import write_thunderstorm_csv

    truth = blinking_truth()
    locs = localized(truth)
    locs["frame"] = locs["frame"] + 1
    write_thunderstorm_csv(tmp_path / "truth.csv", truth)
    write_thunderstorm_csv(tmp_path / "locs.csv", locs)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        code, out, err = run_cli("evaluate", "--truth", tmp_path / "truth.csv", "--locs",
                                 tmp_path / "locs.csv", "--tolerance", "100")
    assert code == 0, err
    assert any("shifted by -1" in str(w.message) for w in said) or "shifted by -1" in err
    assert "jaccard" in out
