"""Model files (safetensors + YAML) and training checkpoints: round trips and refusals."""
import pytest
import torch
import yaml

from stormfold.checkpoint import load_checkpoint, save_checkpoint
from stormfold.errors import UserError
from stormfold.modelfile import check_state_dict, load_model, resolve_model_dir, save_model


def test_model_round_trip_and_checks(tmp_path):
    net = torch.nn.Linear(3, 2)
    save_model(tmp_path / "m", net.state_dict(), {"engine": "deepstorm", "upsampling": 8})
    tensors, meta = load_model(tmp_path / "m", engine="deepstorm")
    assert meta["upsampling"] == 8 and meta["stormfold_version"]
    torch.testing.assert_close(tensors["weight"], net.weight.detach())
    with pytest.raises(UserError, match="not 'unrolled'"):
        load_model(tmp_path / "m", engine="unrolled")
    with pytest.raises(UserError, match="shape"):
        check_state_dict(torch.nn.Linear(4, 2), tensors, "m")
    with pytest.raises(UserError, match="missing|unexpected"):
        check_state_dict(torch.nn.Sequential(net), tensors, "m")
    meta_path = tmp_path / "m" / "model.yaml"
    data = yaml.safe_load(meta_path.read_text())
    data["format_version"] = 99
    meta_path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="newer"):
        load_model(tmp_path / "m")
    with pytest.raises(UserError, match="not found"):
        resolve_model_dir(tmp_path / "absent")


def _train(model, opt, steps, gen):
    for _ in range(steps):
        x = torch.randn(8, 3, generator=gen)
        loss = (model(x) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_checkpoint_resume_continues_exactly(tmp_path):
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    opt_a = torch.optim.Adam(a.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    _train(a, opt_a, 5, gen)
    save_checkpoint(tmp_path / "ck", a, opt_a, state={"epoch": 5, "gen": gen.get_state().tolist()})
    _train(a, opt_a, 5, gen)

    b = torch.nn.Linear(3, 2)
    opt_b = torch.optim.Adam(b.parameters(), lr=0.01)
    extra, state = load_checkpoint(tmp_path / "ck", b, opt_b)
    assert state["epoch"] == 5
    gen_b = torch.Generator()
    gen_b.set_state(torch.tensor(state["gen"], dtype=torch.uint8))
    _train(b, opt_b, 5, gen_b)
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    assert load_checkpoint(tmp_path / "nothing") is None


def test_model_section_names_the_model_and_integers_must_be_finite():
    from stormfold.localize.refine import RefineOptions
    from stormfold.modelfile import model_section

    # The model's name is a prefix, even when it also occurs inside the message.
    with pytest.raises(UserError, match=r"^m: refine split_neighbours"):
        model_section(RefineOptions, {"method": "mle", "split_neighbours": -1}, "refine", "m")
    with pytest.raises(UserError, match=r"^m: refine\.iterations: expected an integer"):
        model_section(RefineOptions, {"method": "mle", "iterations": "x"}, "refine", "m")
    for bad in (float("inf"), float("nan"), 1.5, True):
        with pytest.raises(UserError, match="expected an integer"):
            model_section(RefineOptions, {"method": "mle", "split_neighbours": bad}, "refine", "m")


@pytest.mark.parametrize("damage", ["state_garbage", "state_list", "tensors_garbage",
                                    "tensors_truncated"])
def test_damaged_checkpoint_is_one_line_saying_to_train_again(tmp_path, damage):
    net = torch.nn.Linear(3, 2)
    folder = save_checkpoint(tmp_path / "ck", net, state={"epoch": 1})
    state, tensors = folder / "state.json", folder / "state.safetensors"
    if damage == "state_garbage":
        state.write_text("garbage")
    elif damage == "state_list":
        state.write_text("[1, 2]")
    elif damage == "tensors_garbage":
        tensors.write_bytes(b"\x00\xff" * 64)
    else:
        tensors.write_bytes(tensors.read_bytes()[:40])
    with pytest.raises(UserError, match=r"damaged checkpoint .*train again without --resume"):
        load_checkpoint(folder, torch.nn.Linear(3, 2))


def test_a_model_manifest_records_the_command_that_wrote_it(tmp_path):
    """A training's manifest.json held ``command_line: null`` (review 15, D16)."""
    import json

    from stormfold.modelfile import latest_command

    started = ["stormfold", "train", "gridnet", "--out", "m"]
    resumed = started + ["--resume"]
    assert latest_command({"training": {"command": started, "resumed_with": []}}) == started
    assert latest_command({"training": {"command": started, "resumed_with": [resumed]}}) == \
        resumed
    assert latest_command({"command": started}) == started  # unrolled, SOFI
    assert latest_command({"command": []}) is None and latest_command({}) is None
    save_model(tmp_path / "m", {"w": torch.zeros(2)},
               {"engine": "gridnet", "training": {"command": started, "resumed_with": [resumed]}})
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["command_line"] == resumed


def test_a_hand_edited_model_yaml_is_refused_where_the_weights_depend_on_it(tmp_path):
    """Review 21: Deep-STORM's upsampling edited 8 → 4 halved every position silently."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from stormfold.modelfile import BOUND_HEADER, BOUND_KEYS, builtin_root, list_builtin

    meta = {"engine": "deepstorm", "upsampling": 8, "threshold": 0.01,
            "architecture": {"arch": "deepstorm", "channels": (4, 8, 16, 32)},
            "normalization": {"scale_photons": 914.914}}
    save_model(tmp_path / "m", {"w": torch.ones(3)}, meta)
    path = tmp_path / "m" / "model.yaml"
    trained = yaml.safe_load(path.read_text())

    def edited(**changes):
        data = yaml.safe_load(yaml.safe_dump(trained))
        for key, value in changes.items():
            section, _, name = key.partition("__")
            if name:
                data[section][name] = value
            else:
                data[key] = value
        path.write_text(yaml.safe_dump(data))

    edited(threshold=0.02, estimates={"n_truth": 5})  # calibration records stay editable
    assert load_model(tmp_path / "m")[1]["threshold"] == 0.02
    for change, shown in [({"upsampling": 4}, "upsampling = 4 but the weights were trained "
                                              "with 8"),
                          ({"normalization__scale_photons": 100.0},
                           "normalization.scale_photons = 100.0 but"),
                          ({"architecture__channels": [4, 8, 16, 64]},
                           r"architecture.channels = \[4, 8, 16, 64\] but"),
                          ({"pixel_size_nm": 160.0}, "pixel_size_nm = 160.0 but the weights "
                                                     "were trained with missing")]:
        edited(**change)
        with pytest.raises(UserError, match=str(tmp_path / "m") + ": model.yaml gives " + shown):
            load_model(tmp_path / "m")
    # Weights written before the header existed are not checked (nothing to compare with).
    edited(upsampling=4)
    weights = tmp_path / "m" / "weights.safetensors"
    save_file(load_file(str(weights)), str(weights))
    assert load_model(tmp_path / "m")[1]["upsampling"] == 4
    save_file(load_file(str(weights)), str(weights), metadata={BOUND_HEADER: "{broken"})
    with pytest.raises(UserError, match="damaged"):
        load_model(tmp_path / "m")
    # Every shipped model carries the header, and it agrees with its model.yaml.
    assert list_builtin()
    for name in list_builtin():
        with safe_open(str(builtin_root() / name / "weights.safetensors"), "pt") as fh:
            assert BOUND_HEADER in (fh.metadata() or {})
        assert load_model(f"builtin:{name}")[1]["engine"] in BOUND_KEYS
