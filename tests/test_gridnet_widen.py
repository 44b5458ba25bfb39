"""Growing a trained gridnet to wider layers (stormfold.gridnet.widen)."""
import numpy as np
import pytest
import torch
import yaml

from stormfold.errors import UserError
from stormfold.gridnet.network import ArchitectureConfig, GridNet, count_parameters
from stormfold.gridnet.widen import check_growable, widen


def _random_net(seed=0, **arch):
    torch.manual_seed(seed)
    net = GridNet(ArchitectureConfig(**{"frame_width": 8, "context_width": 8, **arch}))
    with torch.no_grad():  # away from the head's near-constant start, so outputs vary
        net.head.weight.normal_(0.0, 0.5)
    return net.eval()


@pytest.mark.parametrize("arch,grown", [
    ({}, {"frame_width": 12, "context_width": 16}),
    ({"levels": 3}, {"frame_width": 8, "context_width": 13, "levels": 3}),
    ({"context_frames": 1}, {"frame_width": 16, "context_width": 8, "context_frames": 1}),
])
def test_grown_network_computes_the_same_outputs(arch, grown):
    net = _random_net(**arch)
    config = ArchitectureConfig(**{"frame_width": 8, "context_width": 8, **arch, **grown})
    big = widen(net, config, seed=3).eval()
    assert big.config == config
    assert count_parameters(big) > count_parameters(net)
    k = net.config.context_frames
    x = torch.randn(3, k, 16, 16, generator=torch.Generator().manual_seed(1)) * 4
    with torch.no_grad():
        a, b = net(x), big(x)
    assert a.std() > 0.1
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    # The frame network's features are copies of the old channels, in the old order first.
    with torch.no_grad():
        fa, fb = net.features(x[:, 0]), big.features(x[:, 0])
    torch.testing.assert_close(fb[:, :net.config.frame_width], fa, rtol=1e-5, atol=1e-5)


def test_copies_receive_different_gradients():
    """Equal outgoing weights would keep a copy and its original identical for ever."""
    net = _random_net()
    big = widen(net, ArchitectureConfig(frame_width=8, context_width=16), seed=3)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    big(x).square().mean().backward()
    conv = big.context_net.enc[0][2]  # the level-0 block's second convolution: 16 outputs
    first_in = big.context_net.enc[0][0]
    w = first_in.weight.detach()
    # Find a new channel that copies an old one (identical incoming weights).
    pairs = [(o, n) for n in range(8, 16) for o in range(8) if torch.equal(w[n], w[o])]
    assert pairs, "every new channel copies an old one"
    o, n = pairs[0]
    g = first_in.weight.grad
    assert not torch.allclose(g[o], g[n])
    assert conv.weight.grad is not None


def test_growing_is_seeded():
    net = _random_net()
    config = ArchitectureConfig(frame_width=12, context_width=12)
    a, b, c = (widen(net, config, seed=s).state_dict() for s in (5, 5, 6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("change,word", [
    ({"frame_width": 4}, "frame_width 8 → 4"),
    ({"levels": 3}, "levels 2 → 3"),
    ({"context_frames": 1}, "context_frames 3 → 1"),
])
def test_only_wider_layers_can_be_grown(change, word):
    old = ArchitectureConfig(frame_width=8, context_width=8)
    new = ArchitectureConfig(**{"frame_width": 8, "context_width": 8, **change})
    with pytest.raises(UserError, match=word):
        check_growable(old, new, "m")
    with pytest.raises(UserError, match=word):
        widen(_random_net(), new, seed=0)


def test_train_grows_an_init_model_from_the_cli(tmp_path, run_cli):
    small = {"architecture.frame_width": 8, "architecture.context_width": 8,
             "schedule.batch_size": 4, "schedule.frame_px": 16, "schedule.threads": 1,
             "validation.n_samples": 2, "validation.calibration_samples": 2,
             "validation.frame_px": 16}
    sets = [a for k, v in small.items() for a in ("--set", f"{k}={v}")]
    code, _, err = run_cli("train", "gridnet", "--init", "none", "--steps", "2", "--seed", "1",
                           "--out", tmp_path / "small", *sets, "--quiet")
    assert code == 0, err
    grow = [a for k, v in small.items() if not k.startswith("architecture")
            for a in ("--set", f"{k}={v}")]
    code, _, err = run_cli("train", "gridnet", "--init", tmp_path / "small", "--steps", "2",
                           "--out", tmp_path / "big", *grow, "--set", "architecture.frame_width=8",
                           "--set", "architecture.context_width=16", "--quiet")
    assert code == 0, err
    meta = yaml.safe_load((tmp_path / "big" / "model.yaml").read_text())
    assert meta["architecture"]["context_width"] == 16
    assert meta["training"]["init"] == str(tmp_path / "small")
    from stormfold.gridnet.loader import read_gridnet

    model, _ = read_gridnet(tmp_path / "big")
    assert model.config.context_width == 16
    # Narrower than the init model: one line, exit 2, nothing written.
    code, _, err = run_cli("train", "gridnet", "--init", tmp_path / "small", "--steps", "2",
                           "--out", tmp_path / "narrow", *grow,
                           "--set", "architecture.context_width=4", "--quiet")
    assert code == 2 and "context_width 8 → 4" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "narrow").exists()
    # Without an architecture the init model's is kept.
    code, _, err = run_cli("train", "gridnet", "--init", tmp_path / "small", "--steps", "1",
                           "--out", tmp_path / "same", *grow, "--quiet")
    assert code == 0, err
    same = yaml.safe_load((tmp_path / "same" / "model.yaml").read_text())
    assert same["architecture"]["context_width"] == 8
    assert np.isfinite(same["threshold"])
