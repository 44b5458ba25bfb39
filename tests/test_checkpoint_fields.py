"""A damaged checkpoint state is refused in one line, whatever field is damaged."""
import json

import pytest

from stormfold.checkpoint import Records, check_fields
from stormfold.errors import UserError
from stormfold.gridnet.train import build_train_config, train_gridnet
from stormfold.io.manifest import is_member_path

TINY = {"architecture": {"frame_width": 4, "context_width": 4, "levels": 1},
        "schedule": {"batch_size": 2, "frame_px": 16, "threads": 1, "checkpoint_minutes": 0.0},
        "validation": {"n_samples": 2, "calibration_samples": 2, "frame_px": 16}}


@pytest.mark.parametrize("state,fields,word", [
    ({"best_val": float("nan")}, {"best_val": float}, "best_val is nan"),
    ({"h": [{"step": 1}]}, {"h": Records(("step", "seconds"))}, "records with step, seconds"),
    ({"h": [{"step": 1, "seconds": None}]}, {"h": Records(("step", "seconds"))}, "h is"),
    ({"h": ["x"]}, {"h": Records(("step",))}, "h is"),
    ({"n": -1}, {"n": int}, "a count"),
])
def test_check_fields_refuses(tmp_path, state, fields, word):
    with pytest.raises(UserError, match="damaged checkpoint") as info:
        check_fields(tmp_path, state, fields)
    assert word in str(info.value) and "\n" not in str(info.value)


def test_check_fields_accepts_a_good_state(tmp_path):
    check_fields(tmp_path, {"best_val": float("inf"), "h": [{"step": 1, "seconds": 2.5}],
                            "n": 0}, {"best_val": float, "h": Records(("step", "seconds")),
                                      "n": int})


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A gridnet run stopped after its second step, with its checkpoint."""
    folder = tmp_path_factory.mktemp("ckpt") / "m"

    class Kill(Exception):
        pass

    def kill(step):
        if step == 2:
            raise Kill

    with pytest.raises(Kill):
        train_gridnet(build_train_config(overrides=TINY, steps=4, init="none"), folder,
                      progress=False, step_callback=kill)
    return folder, (folder / "checkpoint" / "state.json").read_text()


@pytest.mark.parametrize("damage", [
    {"seconds": None}, {"seconds": "abc"}, {"commands": None}, {"optimizer": "abc"},
    {"optimizer": None}, {"history": [{}]}, {"history": [{"step": "x", "seconds": 1.0}]},
])
def test_resume_from_a_damaged_state_is_one_line(interrupted, damage):
    folder, good = interrupted
    state = json.loads(good)
    state.update(damage)
    (folder / "checkpoint" / "state.json").write_text(json.dumps(state))
    try:
        with pytest.raises(UserError, match="damaged checkpoint"):
            train_gridnet(build_train_config(overrides=TINY, steps=4, init="none"), folder,
                          resume=True, progress=False)
    finally:
        (folder / "checkpoint" / "state.json").write_text(good)


def test_manifest_names_longer_than_a_file_system_takes_are_not_members():
    assert not is_member_path("a" * 256)
    assert is_member_path("a" * 255)
    assert not is_member_path("/".join(["b" * 200] * 21))
