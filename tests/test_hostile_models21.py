"""Model files whose weights were converted or edited (review 21): refused in one line."""
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import stormfold
from stormfold.errors import UserError
from stormfold.localize.registry import load_engine

MODELS = Path(stormfold.__file__).parent / "models"


def _copy(name, tmp_path, edit):
    folder = tmp_path / name
    shutil.copytree(MODELS / name, folder)
    tensors = load_file(folder / "weights.safetensors")
    edit(tensors)
    save_file(tensors, folder / "weights.safetensors")
    return folder


def test_integer_or_non_finite_weights_are_refused(tmp_path):
    def to_int(t):
        key = next(k for k, v in t.items() if v.dtype.is_floating_point and v.ndim > 1)
        t[key] = t[key].to(torch.int32)

    with pytest.raises(UserError, match="holds torch.int32 values, the architecture needs"):
        load_engine(model=_copy("deepstorm-zerocost", tmp_path / "a", to_int))

    def nan(t):
        key = next(k for k, v in t.items() if v.dtype.is_floating_point and v.ndim > 1)
        t[key] = t[key].clone()
        t[key].view(-1)[0] = float("nan")

    with pytest.raises(UserError, match="holds NaN or infinite values"):
        load_engine(model=_copy("gridnet-generalist", tmp_path / "b", nan))


@pytest.mark.parametrize("name, value", [("rho", -1.0), ("alpha", -0.5)])
def test_unrolled_parameters_outside_their_box_are_refused(tmp_path, name, value):
    def edit(t):
        t[name] = torch.full_like(t[name], value)

    with pytest.raises(UserError, match=f"weight {name} lies outside its box"):
        load_engine(model=_copy("unrolled-isbi2013", tmp_path, edit))


def test_the_command_line_says_it_in_one_line(tmp_path, run_cli):
    folder = _copy("unrolled-isbi2013", tmp_path, lambda t: t.__setitem__(
        "rho", torch.full_like(t["rho"], -1.0)))
    movie = tmp_path / "m.tif"
    import numpy as np
    import tifffile

    tifffile.imwrite(movie, np.full((2, 16, 16), 100, np.uint16))
    code, _, err = run_cli("localize", movie, "--model", folder, "--pixel-size", "100",
                           "--out", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and "outside its box" in err
    assert not (tmp_path / "out").exists()


def test_a_pickle_named_safetensors_is_named_for_what_it_is(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(MODELS / "unrolled-isbi2013", folder)
    torch.save({"rho": torch.zeros(3)}, folder / "weights.safetensors")  # zip + pickle
    with pytest.raises(UserError, match="PyTorch/pickle file, which stormfold never loads"):
        load_engine(model=folder)
