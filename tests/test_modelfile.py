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
