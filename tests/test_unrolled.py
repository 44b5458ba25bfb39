"""The unrolled accelerated projected gradient: operator, projection, losses, gradients,
λ bound, SGP, extraction, model files, CLI (SPEC §5)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch.func import functional_call

from stormfold.errors import UserError
from stormfold.localize.components import components_to_table, find_components
from stormfold.physics import BandedBlurDownsample, BlurDownsample
from stormfold.unrolled import (SGP, ProjectedAdam, UnrolledAPG, binarise,
                                build_solver, estimate_background, fine_targets, huber,
                                localization_loss, reconstruction_loss, smooth_projection)

D = torch.float64


def _scene(L=4, m=8, n_frames=2, bg=5.0, seed=0, photons=400.0):
    """A few emitters on the fine grid and Poisson frames of them (float64)."""
    gen = torch.Generator().manual_seed(seed)
    op = BandedBlurDownsample(L, 1.6, dtype=D)
    x = torch.zeros(n_frames, m * L, m * L, dtype=D)
    for f in range(n_frames):
        idx = torch.randperm(m * L * m * L, generator=gen)[:4]
        x[f].view(-1)[idx] = photons * (0.5 + torch.rand(4, generator=gen, dtype=D))
    y = torch.poisson(op.A(x) + bg, generator=gen)
    return op, x, y


# --------------------------------------------------------------------------- operator
def test_banded_operator_equals_convolution_operator_and_is_adjoint():
    gen = torch.Generator().manual_seed(1)
    for L, sigma, shape in ((4, 2.5, (6, 7)), (3, 1.2, (5, 5)), (2, 4.0, (9, 4))):
        ref = BlurDownsample(L, sigma, dtype=D)
        fast = BandedBlurDownsample(L, sigma, dtype=D)
        x = torch.rand(3, shape[0] * L, shape[1] * L, generator=gen, dtype=D)
        r = torch.rand(3, *shape, generator=gen, dtype=D)
        torch.testing.assert_close(fast.A(x), ref.A(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(fast.A_adjoint(r), ref.A_adjoint(r), rtol=1e-12, atol=1e-12)
        assert torch.allclose((fast.A(x) * r).sum(), (x * fast.A_adjoint(r)).sum(), rtol=1e-12)


# --------------------------------------------------------------------------- projection
def test_projection_variants_against_hand_values():
    eps = 2.0
    t = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0, 5.0], dtype=D)
    cubic = [0.0, 0.0, 0.0, 0.25 * 3.5 / 4, 1.0 * 3.0 / 4, 2.0, 5.0]  # t²(2ε − t)/ε²
    sym = [0.0, 1.0 / 8, 4.0 / 8, 6.25 / 8, 9.0 / 8, 2.0, 5.0]       # (t + ε)²/(4ε)
    torch.testing.assert_close(smooth_projection(t, eps, "cubic"), torch.tensor(cubic, dtype=D))
    torch.testing.assert_close(smooth_projection(t, eps, "symmetric"), torch.tensor(sym, dtype=D))
    torch.testing.assert_close(smooth_projection(t, 0.0), torch.relu(t))
    for kind in ("cubic", "symmetric"):
        # The hand-written derivative (custom autograd) against finite differences,
        # away from the break points where P_ε is only C¹.
        u = torch.tensor([-2.5, -0.7, 0.3, 1.1, 1.7, 3.0], dtype=D, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v: smooth_projection(v, eps, kind), (u,))
        # C¹: the derivative is continuous at the break points.
        for b in (-eps, 0.0, eps):
            v = torch.tensor([b - 1e-7, b + 1e-7], dtype=D, requires_grad=True)
            smooth_projection(v, eps, kind).sum().backward()
            assert abs(float(v.grad[0] - v.grad[1])) < 1e-5
    with pytest.raises(UserError):
        smooth_projection(t, 1.0, "quadratic")


def test_inplace_inference_path_matches_autograd_path():
    op, _, y = _scene()
    for fid in ("ls", "kl"):
        for proj in ("cubic", "symmetric"):
            s = UnrolledAPG(op, iterations=12, fidelity=fid, projection=proj, eps=0.5, rho=0.05,
                            background_photons=5.0, dtype=D)
            with torch.no_grad():
                fast = s(y)
            slow = s(y)
            s.checkpoint_segments = 3
            torch.testing.assert_close(fast, slow.detach(), rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(s(y).detach(), slow.detach(), rtol=0, atol=0)


# --------------------------------------------------------------------------- losses
def test_huber_and_binarisation_against_hand_values():
    t = torch.tensor([-0.5, -0.05, 0.0, 0.05, 0.5], dtype=D)
    torch.testing.assert_close(huber(t, 0.1), torch.tensor([0.45, 0.0125, 0.0, 0.0125, 0.45],
                                                           dtype=D))
    x = torch.tensor([0.0, 5.0, 7.5, 10.0, 12.5, 15.0, 30.0], dtype=D)
    # τ = 10, ε_b = 0.5·τ = 5: s = (t − 5)/10; B = s²(3 − 2s)
    expect = [0.0, 0.0, 0.15625, 0.5, 0.84375, 1.0, 1.0]
    torch.testing.assert_close(binarise(x, 10.0, 0.5), torch.tensor(expect, dtype=D))
    torch.testing.assert_close(binarise(x, 10.0, 5.0, relative=False),
                               torch.tensor(expect, dtype=D))
    # ∂B/∂τ and ∂B/∂t by finite differences (τ enters through the width as well).
    tau = torch.tensor(9.0, dtype=D, requires_grad=True)
    xv = torch.tensor([6.0, 8.0, 11.0, 12.9], dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: binarise(a, b, 0.5), (xv, tau))
    target = torch.tensor([[[0.0, 3.0], [0.0, 0.0]]], dtype=D)
    xr = torch.tensor([[[1.0, 2.0], [0.0, 4.0]]], dtype=D)
    assert float(reconstruction_loss(xr, target)) == pytest.approx(0.5 * (1 + 1 + 16))
    # support {(0,1)}: B = [0, ~0, 0, 1] with τ = 2.5, ε_b = 0.5 → h(−1 + B(2)) etc.
    b = binarise(xr, 2.5, 0.5)
    expect_loc = float(huber(b - (target > 0).to(D), 0.1).sum())
    assert float(localization_loss(xr, target, 2.5, delta=0.1)) == pytest.approx(expect_loc)
    with pytest.raises(UserError):
        huber(t, 0.0)


def test_localization_loss_with_tolerance():
    target = torch.zeros(1, 6, 6, dtype=D)
    target[0, 2, 2] = 1.0
    x = torch.zeros(1, 6, 6, dtype=D)
    x[0, 2, 3] = 100.0                      # a detection one pixel off
    x[0, 5, 5] = 100.0                      # a detection far from any true pixel
    h1 = 1.0 - 0.05                         # h_δ(±1) with δ = 0.1
    assert float(localization_loss(x, target, 10.0)) == pytest.approx(3 * h1)       # FN + 2 FP
    assert float(localization_loss(x, target, 10.0, tolerance_px=1)) == pytest.approx(h1)  # 1 FP
    assert float(localization_loss(x, target, 10.0, tolerance_px=3)) == pytest.approx(0.0)
    gen = torch.Generator().manual_seed(0)
    xr = 20 * torch.rand(2, 6, 6, generator=gen, dtype=D)
    tr = (torch.rand(2, 6, 6, generator=gen, dtype=D) > 0.8).to(D)
    assert float(localization_loss(xr, tr, 10.0, tolerance_px=0)) == pytest.approx(
        float(huber(binarise(xr, 10.0, 0.5) - tr, 0.1).sum()))


# --------------------------------------------------------------------------- gradients
def _loss_fn(solver, y, target, kind):
    def f(params):
        x = functional_call(solver, params, (y,))
        if kind == "reconstruction":
            return reconstruction_loss(x, target)
        return localization_loss(x, target, params["tau"], delta=0.3, eps_b=0.6)
    return f


@pytest.mark.parametrize("fidelity", ["ls", "kl"])
@pytest.mark.parametrize("kind", ["reconstruction", "localization"])
def test_finite_difference_gradient_of_loss_wrt_theta(fidelity, kind):
    op, x_true, y = _scene(L=2, m=6, n_frames=2, bg=5.0)
    s = UnrolledAPG(op, iterations=8, fidelity=fidelity, eps=2.0, rho=0.05,
                    background_photons=5.0, dtype=D)
    with torch.no_grad():
        s.alpha.copy_(torch.linspace(0.8, 1.6, 8, dtype=D))
        x0 = s(y)
        s.tau.fill_(float(x0[x0 > 0].median()))
    f = _loss_fn(s, y, x_true, kind)
    rho = s.rho.detach().clone().requires_grad_(True)
    alpha = s.alpha.detach().clone().requires_grad_(True)
    tau = s.tau.detach().clone().requires_grad_(True)

    def g(r, a, t):
        return f({"rho": r, "alpha": a, "tau": t})

    inputs = (rho, alpha, tau) if kind == "localization" else (rho, alpha)
    fn = g if kind == "localization" else (lambda r, a: g(r, a, tau.detach()))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-7, atol=1e-5, rtol=1e-4)
    # The checkpointed backward gives the same gradient.
    grads = torch.autograd.grad(g(rho, alpha, tau), (rho, alpha))
    assert all(float(v.abs().max()) > 0 for v in grads)  # the check is not vacuous
    s.checkpoint_segments = 3
    grads_ck = torch.autograd.grad(g(rho, alpha, tau), (rho, alpha))
    for a, b in zip(grads, grads_ck):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("operator_cls", [BandedBlurDownsample, BlurDownsample])
def test_finite_difference_gradient_wrt_sigma(operator_cls):
    _, x_true, y = _scene(L=2, m=6, n_frames=2)
    op = operator_cls(2, 1.6, learn_sigma=True, dtype=D)
    s = UnrolledAPG(op, iterations=8, eps=2.0, rho=0.05, background_photons=5.0, dtype=D)
    assert "operator.sigma_fine_px" in dict(s.named_parameters())
    assert s.bounds["operator.sigma_fine_px"] == (0.8, 3.2)
    f = _loss_fn(s, y, x_true, "reconstruction")
    sigma = torch.tensor(1.7, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: f({"operator.sigma_fine_px": v}), (sigma,),
                                    eps=1e-7, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fidelity", ["ls", "kl"])
def test_finite_difference_gradient_wrt_learned_background(fidelity):
    op, x_true, y = _scene(L=2, m=6, n_frames=2, bg=5.0)
    s = UnrolledAPG(op, iterations=8, fidelity=fidelity, eps=2.0, rho=0.05,
                    background="learned", background_photons=4.0, dtype=D)
    f = _loss_fn(s, y, x_true, "reconstruction")
    b = torch.tensor(4.5, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: f({"background": v}), (b,), eps=1e-7, atol=1e-5,
                                    rtol=1e-4)
    # A background map and per-frame values are accepted and broadcast.
    with torch.no_grad():
        a = s(y, background=torch.full((6, 6), 4.5, dtype=D))
        c = s(y, background=torch.tensor([4.5, 4.5], dtype=D))
        # (B, 1, 1): what get_background itself makes of per-frame values.
        e = s(y, background=torch.full((2, 1, 1), 4.5, dtype=D))
        g = s(y, background=torch.full((2, 6, 6), 4.5, dtype=D))
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(a, e)
    torch.testing.assert_close(a, g)
    for wrong in (torch.ones(5, 5, dtype=D), torch.ones(3, 1, 1, dtype=D),
                  torch.ones(2, 6, 5, dtype=D)):
        with pytest.raises(UserError, match="does not fit frames"):
            s(y, background=wrong)


# --------------------------------------------------------------------------- λ bound
@pytest.mark.parametrize("fidelity", ["ls", "kl"])
def test_lambda_max_gives_zero_and_slightly_less_does_not(fidelity):
    op, _, y = _scene(L=4, m=8, n_frames=3)
    for rho, zero in ((1.0, True), (1.5, True), (0.98, False)):
        s = UnrolledAPG(op, iterations=15, fidelity=fidelity, rho=rho, eps=0.1,
                        background_photons=5.0, bounds={"rho": (0.0, 2.0)}, dtype=D)
        with torch.no_grad():
            x = s(y)
        per_frame_zero = (x == 0).flatten(1).all(1)
        assert bool(per_frame_zero.all()) == zero if zero else not bool(per_frame_zero.any())
    # A frame darker than its background: λ_max ≤ 0, so λ = 0 and x stays 0.
    s = UnrolledAPG(op, iterations=5, fidelity=fidelity, rho=0.1, background_photons=50.0, dtype=D)
    with torch.no_grad():
        assert float(s(torch.full((1, 8, 8), 10.0, dtype=D)).abs().max()) == 0.0


def test_kl_requires_positive_background_and_estimates():
    op, _, y = _scene()
    with pytest.raises(UserError, match="positive background"):
        UnrolledAPG(op, fidelity="kl", background="given", background_photons=0.0)
    s = UnrolledAPG(op, iterations=3, fidelity="kl", background="estimate", dtype=D)
    with pytest.raises(UserError, match="positive"):
        s(y, background=0.0)
    gen = torch.Generator().manual_seed(3)
    frames = torch.poisson(torch.full((4, 64, 64), 30.0, dtype=D), generator=gen)
    frames[:, 10:14, 10:14] += 500.0
    b = estimate_background(frames, quantile=0.1)
    # 10 % quantile of a 3 × 3 mean of Poisson(30): ≈ 30 − 1.2816·√(30/9) = 27.66 (measured
    # 27.44–27.78).
    expected = 30.0 - 1.2816 * (30.0 / 9) ** 0.5
    assert b.shape == (4,) and torch.all((b - expected).abs() < 0.35)


# --------------------------------------------------------------------------- SGP
def _box_quadratic(n=12, seed=0):
    """½θᵀQθ − cᵀθ on [0, 1]ⁿ with a known minimiser θ* (some components at each bound)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=D)
    q = a @ a.T + 0.1 * torch.eye(n, dtype=D)
    theta = torch.rand(n, generator=gen, dtype=D)
    theta[:3], theta[3:6] = 0.0, 1.0
    g_star = torch.zeros(n, dtype=D)  # KKT: ∇f ≥ 0 at lower, ≤ 0 at upper bound, 0 inside
    g_star[:3] = 0.1 + torch.rand(3, generator=gen, dtype=D)
    g_star[3:6] = -(0.1 + torch.rand(3, generator=gen, dtype=D))
    return q, q @ theta - g_star, theta


@pytest.mark.parametrize("memory,shared", [(1, False), (5, False), (5, True)])
def test_sgp_reaches_known_minimiser_of_box_constrained_quadratic(memory, shared):
    q, c, theta_star = _box_quadratic()
    blocks = [torch.full((4,), 0.5, dtype=D, requires_grad=True) for _ in range(3)]
    # Different boxes per block, all containing the solution's box [0, 1].
    opt = SGP([{"params": [blocks[0]], "lo": 0.0, "hi": 1.0, "name": "a"},
               {"params": [blocks[1]], "lo": 0.0, "hi": 1.0, "name": "b"},
               {"params": [blocks[2]], "lo": 0.0, "hi": 1.0, "name": "c"}],
              memory=memory, shared_step=shared, tol=0.0)

    def closure():
        opt.zero_grad()
        th = torch.cat(blocks)
        f = 0.5 * th @ q @ th - c @ th
        f.backward()
        return f

    values = []
    for _ in range(400):
        values.append(opt.step(closure))
        if opt.converged:
            break
    torch.testing.assert_close(torch.cat([b.detach() for b in blocks]), theta_star,
                               atol=1e-6, rtol=0)
    if memory == 1:
        assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))
    # The default stopping rule (relative change below 1e-9 five times in a row) stops near it.
    start = [torch.full((4,), 0.5, dtype=D, requires_grad=True) for _ in range(3)]
    opt2 = SGP([{"params": [b], "lo": 0.0, "hi": 1.0} for b in start], memory=memory,
               shared_step=shared)

    def closure2():
        opt2.zero_grad()
        th = torch.cat(start)
        f = 0.5 * th @ q @ th - c @ th
        f.backward()
        return f

    for _ in range(400):
        opt2.step(closure2)
        if opt2.converged:
            break
    assert opt2.converged
    assert float((torch.cat([b.detach() for b in start]) - theta_star).abs().max()) < 3.5e-4  # ≤ 2.2e-4


def test_projected_adam_stays_in_box_and_decreases():
    q, c, theta_star = _box_quadratic(seed=2)
    th = torch.full((12,), 0.5, dtype=D, requires_grad=True)
    opt = ProjectedAdam([{"params": [th], "lo": 0.0, "hi": 1.0}], lr=0.05)

    def closure():
        opt.zero_grad()
        f = 0.5 * th @ q @ th - c @ th
        f.backward()
        return f

    first = float(closure().detach())
    for _ in range(300):
        opt.step(closure)
        assert float(th.detach().min()) >= 0.0 and float(th.detach().max()) <= 1.0
    assert float(closure().detach()) < first
    assert float((th.detach() - theta_star).abs().max()) < 1e-6  # measured 8.4e-8


# --------------------------------------------------------------------------- extraction
def test_components_on_hand_made_image():
    img = np.zeros((2, 8, 8))
    img[0, 1, 1], img[0, 2, 2] = 3.0, 1.0         # diagonal neighbours: one 8-connected group
    img[0, 5, 5], img[0, 5, 6] = 2.0, 2.0         # horizontal pair
    img[0, 7, 0] = 0.5                            # below the threshold
    img[1, 0, 7] = 4.0                            # another frame, same place as nothing else
    comp = find_components(img, threshold=1.0)
    assert len(comp) == 3
    np.testing.assert_array_equal(comp.index, [0, 0, 1])
    np.testing.assert_allclose(comp.y_px, [(3 * 1 + 1 * 2) / 4 + 0.5, 5.5, 0.5])
    np.testing.assert_allclose(comp.x_px, [(3 * 1 + 1 * 2) / 4 + 0.5, 6.0, 7.5])
    np.testing.assert_allclose(comp.total, [4.0, 4.0, 4.0])
    np.testing.assert_allclose(comp.peak, [3.0, 2.0, 4.0])
    np.testing.assert_array_equal(comp.size, [2, 2, 1])
    assert len(find_components(img, 1.0, connectivity=4)) == 4   # the diagonal pair splits
    assert len(find_components(img, 1.0, merge=False)) == 5
    assert len(find_components(img, 0.5)) == 4                  # the threshold is inclusive
    table = components_to_table(comp, first_frame=10, fine_pixel_nm=25.0)
    np.testing.assert_array_equal(table["frame"], [10, 10, 11])
    np.testing.assert_allclose(table["x_nm"], comp.x_px * 25.0)
    # Frames are never connected to each other, even at the same pixel.
    stack = np.zeros((2, 3, 3))
    stack[:, 1, 1] = 1.0
    assert len(find_components(stack, 0.5)) == 2


def test_fine_targets_place_each_emitter_in_its_fine_pixel():
    truth = pd.DataFrame({"frame": [0, 0, 1, 1], "x_nm": [12.0, 13.0, 99.0, 500.0],
                          "y_nm": [30.0, 31.0, 0.0, 10.0], "photons": [100.0, 50.0, 7.0, 9.0]})
    t = fine_targets(truth, 2, (8, 8), 25.0)
    assert t[0, 1, 0] == 150.0 and t[1, 0, 3] == 7.0 and t.sum() == 157.0  # x=500 is outside
    b = fine_targets(truth, 2, (8, 8), 25.0, value="binary")
    assert b.sum() == 2.0


# --------------------------------------------------------------------------- model files
def _tiny_model(tmp_path, fidelity="ls"):
    from stormfold.unrolled.model import save_unrolled_model

    s = build_solver(4, 1.6, iterations=5, fidelity=fidelity, rho=0.07, tau=12.0,
                     background="estimate")
    with torch.no_grad():
        s.alpha.copy_(torch.linspace(0.5, 1.5, 5))
    save_unrolled_model(tmp_path / "model", s, 100.0,
                        {"camera": {"baseline_adu": 100.0, "e_per_adu": 0.5}})
    return s, tmp_path / "model"


def test_save_load_engine_and_refusals(tmp_path):
    from stormfold.localize.registry import load_engine
    from stormfold.modelfile import save_model
    from stormfold.unrolled.model import load_unrolled_model

    s, folder = _tiny_model(tmp_path)
    engine = load_engine(model=folder, threshold=None, options={"background": "estimate"})
    assert engine.name == "unrolled" and engine.upsampling == 4
    assert engine.threshold == pytest.approx(12.0)
    assert engine.training_pixel_size_nm() == 100.0
    assert engine.training_camera().baseline_adu == 100.0
    torch.testing.assert_close(engine.solver.alpha, s.alpha)
    _, x, y = _scene(L=4, m=8, n_frames=3)
    out = engine.process(y.float().numpy(), first_frame=7, pixel_size_nm=100.0)
    with torch.no_grad():
        ref = s(y.float())
    np.testing.assert_allclose(out.superres, ref.sum(0).numpy(), rtol=1e-5, atol=1e-3)
    assert set(out.locs["frame"]) <= {7, 8, 9} and len(out.locs) > 0
    # Refusals: another engine's model, wrong tensor shapes, bad options.
    save_model(tmp_path / "other", {"w": torch.zeros(2)}, {"engine": "deepstorm"})
    with pytest.raises(UserError, match="not 'unrolled'"):
        load_unrolled_model(tmp_path / "other")
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    meta["solver"]["iterations"] = 7  # the weights file remembers its model.yaml
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(UserError, match="solver.iterations = 7 but the weights were trained "
                                        "with 5"):
        load_engine(model=folder)
    meta["solver"]["iterations"] = 5
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(UserError, match="unknown option"):
        load_engine(model=folder, options={"bogus": 1})
    meta["camera"]["em_gain"] = 0.5  # a bad value inside a section names the model
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(UserError, match=re.escape(str(folder)) + ": camera"):
        load_engine(model=folder)
    del meta["camera"]["em_gain"]
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    with pytest.raises(UserError, match="background"):
        load_engine(model=folder, options={"background": -1})


# --------------------------------------------------------------------------- training
def _train_args(tmp_path, out, *extra):
    return ["train", "unrolled", "--preset", "zerocost",
            "--set", "data.simulation.n_rows=12", "--set", "data.simulation.n_cols=12",
            "--set", "data.simulation.activation.density_per_um2=3",
            "--set", "optim.checkpoint_every=1",
            "--iterations", "5", "--frames", "2", "--seed", "3", "--quiet", "--out", out, *extra]


def test_cli_train_localize_evaluate_end_to_end(tmp_path, run_cli):
    out = tmp_path / "model"
    code, stdout, err = run_cli(*_train_args(tmp_path, out, "--outer-iterations", "3",
                                             "--set", "extraction.method=components"))
    assert code == 0, err
    for name in ("weights.safetensors", "model.yaml", "training_log.csv", "training_log.png"):
        assert (out / name).is_file()
    meta = yaml.safe_load((out / "model.yaml").read_text())
    assert meta["engine"] == "unrolled" and meta["solver"]["iterations"] == 5
    assert meta["camera"]["baseline_adu"] == 50.0 and meta["pixel_size_nm"] == 100.0
    assert meta["training"]["loss"] == "localization" and meta["seed"] == 3
    ext = meta["extraction"]
    factors = [c["factor_of_tau"] for c in ext["candidates"]]
    assert ext["calibrated"] and ext["jaccard"] == max(c["jaccard"] for c in ext["candidates"])
    assert any(ext["threshold"] == pytest.approx(f * meta["theta"]["tau"]) for f in factors)
    log = pd.read_csv(out / "training_log.csv")
    assert {"loss", "rho", "tau", "alpha_0", "alpha_4"} <= set(log.columns)
    assert log["loss"].iloc[-1] <= log["loss"].iloc[0] + 1e-9  # monotone Armijo at memory 1?
    code, _, err = run_cli("simulate", "--preset", "zerocost", "--frames", "3", "--seed", "9",
                           "--set", "n_rows=12", "--set", "n_cols=12",
                           "--set", "activation.density_per_um2=3", "--quiet",
                           "--out", tmp_path / "sim")
    assert code == 0, err
    code, stdout, err = run_cli("localize", tmp_path / "sim" / "movie.tif", "--model", out,
                                "--out", tmp_path / "loc", "--quiet")
    assert code == 0, err
    run = yaml.safe_load((tmp_path / "loc" / "run.yaml").read_text())
    assert run["engine"]["engine"] == "unrolled"
    code, stdout, err = run_cli("evaluate", "--truth", tmp_path / "sim" / "truth.csv",
                                "--locs", tmp_path / "loc" / "localizations.csv")
    assert code == 0, err
    assert "jaccard" in stdout.lower()


def test_training_resumes_exactly(tmp_path, run_cli):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run_cli(*_train_args(tmp_path, full, "--outer-iterations", "3"))[0] == 0
    assert run_cli(*_train_args(tmp_path, part, "--outer-iterations", "2"))[0] == 0
    code, _, err = run_cli(*_train_args(tmp_path, part, "--outer-iterations", "3", "--resume"))
    assert code == 0, err
    a = pd.read_csv(full / "training_log.csv")
    b = pd.read_csv(part / "training_log.csv")
    assert len(a) == len(b)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-6)
    np.testing.assert_allclose(a["rho"], b["rho"], rtol=1e-6)
    # A different configuration cannot resume; an existing run needs --resume.
    code, _, err = run_cli(*_train_args(tmp_path, part, "--outer-iterations", "4", "--resume",
                                        "--fidelity", "kl"))
    assert code == 2 and "differs" in err
    code, _, err = run_cli(*_train_args(tmp_path, part, "--outer-iterations", "4"))
    assert code == 2 and "--resume" in err


def test_cli_bad_inputs_exit_2_and_write_nothing(tmp_path, run_cli):
    out = tmp_path / "never"
    cases = [
        ["train", "unrolled", "--movie", tmp_path / "m.tif", "--out", out],
        ["train", "unrolled", "--movie", tmp_path / "m.tif", "--truth", tmp_path / "t.csv",
         "--out", out],
        ["train", "unrolled", "--set", "solver.fidelity=xx", "--out", out],
        ["train", "unrolled", "--set", "nonsense=1", "--out", out],
        ["train", "unrolled", "--preset", "nope", "--out", out],
        ["train", "unrolled", "--iterations", "0", "--out", out],
        ["train", "unrolled", "--set", "params.rho=3", "--out", out],
        ["train", "unrolled", "--resume", "--out", out],
    ]
    for argv in cases:
        code, _, err = run_cli(*argv)
        assert code == 2, (argv, err)
        assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_cli_train_on_a_given_movie_and_truth(tmp_path, run_cli):
    code, _, err = run_cli("simulate", "--preset", "zerocost", "--frames", "2", "--seed", "4",
                           "--set", "n_rows=12", "--set", "n_cols=12",
                           "--set", "activation.density_per_um2=3", "--quiet",
                           "--out", tmp_path / "sim")
    assert code == 0, err
    out = tmp_path / "model"
    code, _, err = run_cli("train", "unrolled", "--movie", tmp_path / "sim" / "movie.tif",
                           "--truth", tmp_path / "sim" / "truth.csv", "--iterations", "4",
                           "--outer-iterations", "2", "--loss", "reconstruction", "--quiet",
                           "--out", out)
    assert code == 0, err
    meta = yaml.safe_load((out / "model.yaml").read_text())
    # σ and camera come from the simulation next to the truth and from the movie's metadata.
    assert meta["sigma_nm"] == pytest.approx(110.0, rel=1e-6)
    assert meta["camera"]["baseline_adu"] == 50.0
    assert meta["training"]["data"]["frames"] == 2 and meta["training"]["loss"] == "reconstruction"
    # (13): τ is not learned; the default extraction (3×3 peaks of x_K) is calibrated on
    # the training frames among quantiles of the peaks' 3×3 sums.
    ext = meta["extraction"]
    assert ext["method"] == "peaks" and ext["calibrated"] and ext["threshold"] >= 0.0
    assert ext["jaccard"] == max(c["jaccard"] for c in ext["candidates"])
    assert ext["intensity_p05"] >= ext["threshold"]  # a quantile of what passes it
    assert meta["solver"]["alpha_units"] == "1/Lipschitz"
    assert meta["bounds"]["alpha"] == pytest.approx([0.0, 4.0 / 3.0])


def test_train_config_accepts_a_simulation_yaml(tmp_path):
    """`stormfold train unrolled --config` takes the simulation.yaml of simulate/calibrate."""
    from stormfold.simulate import build_config, simulate_to_folder
    from stormfold.unrolled.train import load_train_config

    simulate_to_folder(build_config("challenge2016", n_frames=2, overrides=["camera.em_gain=50"]),
                       tmp_path, progress=False)
    cfg = load_train_config(tmp_path / "simulation.yaml")
    assert cfg.data.preset == "challenge2016"
    assert cfg.data.simulation["camera"]["em_gain"] == 50.0


# --------------------------------------------------------------------------- step sizes (issue 12)
def _fit_tiny(solver, y, x_true, outer=6):
    from stormfold.unrolled.train import LossConfig, OptimConfig, fit

    fit(solver, y.float(), x_true.float(), LossConfig(kind="reconstruction"),
        OptimConfig(outer_iterations=outer, first_move=0.5), progress=False)
    return solver


def test_step_size_box_is_honoured_or_absent_where_configured(tmp_path):
    from stormfold.unrolled.model import load_unrolled_model, save_unrolled_model

    op, x_true, y = _scene(L=2, m=6, n_frames=2, bg=0.0)
    # A tight box: the steps want to grow (x_K far from converged in 6 iterations) and stop
    # at the bound, never beyond it.
    boxed = build_solver(2, 1.6, iterations=6, rho=0.02, alpha=0.2, background="given",
                         bounds={"alpha": (0.0, 0.3)})
    _fit_tiny(boxed, y, x_true)
    a = boxed.alpha.detach()
    assert float(a.max()) <= 0.3 + 1e-7 and float(a.min()) >= 0.0
    assert float(a.max()) == pytest.approx(0.3)  # the bound binds: the box did the work
    # No upper bound (absolute steps): projection leaves any step ≥ 0 alone ...
    free = build_solver(2, 1.6, iterations=6, rho=0.02, alpha=0.05, background="given",
                        alpha_units="absolute", bounds={"alpha": (0.0, float("inf"))})
    with torch.no_grad():
        free.alpha[0] = 50.0
        free.alpha[1] = -1.0
    free.project_parameters_()
    assert float(free.alpha[0].detach()) == 50.0 and float(free.alpha[1].detach()) == 0.0
    # ... training moves the steps beyond the old box 2/Lip (= 2/‖H‖² = 0.5 here) ...
    with torch.no_grad():
        free.alpha.fill_(0.4)
    _fit_tiny(free, y, x_true)
    assert float(free.alpha.detach().max()) > 0.5
    # ... and the model file keeps the units and the open box.
    save_unrolled_model(tmp_path / "m", free, 100.0, {})
    loaded, meta = load_unrolled_model(tmp_path / "m")
    assert meta["solver"]["alpha_units"] == "absolute" and meta["bounds"]["alpha"] == [0.0, None]
    assert loaded.alpha_units == "absolute" and loaded.bounds["alpha"] == (0.0, float("inf"))
    torch.testing.assert_close(loaded.alpha, free.alpha)


def test_absolute_steps_equal_lipschitz_steps_for_ls():
    op, _, y = _scene(L=2, m=6, n_frames=2, bg=0.0)
    rel = UnrolledAPG(op, iterations=10, rho=0.05, alpha=1.3, background_photons=0.0, dtype=D)
    ab = UnrolledAPG(op, iterations=10, rho=0.05, alpha=1.3 / op.norm_sq, alpha_units="absolute",
                     background_photons=0.0, dtype=D)
    torch.testing.assert_close(rel(y).detach(), ab(y).detach(), rtol=1e-12, atol=1e-12)
    with pytest.raises(UserError, match="alpha_units"):
        UnrolledAPG(op, alpha_units="per-frame")


@pytest.mark.parametrize("alpha_lip", [2.5, 4.0, 20.0, 1e4])
def test_unbounded_steps_stay_finite_on_a_test_image(alpha_lip):
    """Steps far beyond 2/Lip make the accelerated iteration oscillate; the projection onto
    x ≥ 0 clips the oscillation, so x_K stays finite and non-negative (both code paths)."""
    op, _, y = _scene(L=4, m=8, n_frames=2, bg=5.0)
    s = UnrolledAPG(op, iterations=100, rho=0.05, alpha=alpha_lip / op.norm_sq,
                    alpha_units="absolute", background_photons=5.0, dtype=D,
                    bounds={"alpha": (0.0, float("inf"))})
    with torch.no_grad():
        fast = s(y)
    slow = s(y)
    for x in (fast, slow.detach()):
        assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0.0
        assert float(x.max()) < 1e3 * float(y.sum())
    loss = reconstruction_loss(slow, torch.zeros_like(slow))
    loss.backward()
    assert bool(torch.isfinite(s.alpha.grad).all()) and bool(torch.isfinite(s.rho.grad).all())


def test_per_iteration_rho_schedule():
    op, x_true, y = _scene(L=2, m=6, n_frames=2, bg=5.0)
    one = UnrolledAPG(op, iterations=8, rho=0.07, background_photons=5.0, dtype=D)
    per = UnrolledAPG(op, iterations=8, rho=0.07, rho_per_iteration=True, background_photons=5.0,
                      dtype=D)
    assert tuple(per.rho.shape) == (8,)
    torch.testing.assert_close(per(y).detach(), one(y).detach(), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        per.rho.copy_(torch.linspace(0.3, 0.02, 8, dtype=D))
        fast = per(y)
    torch.testing.assert_close(fast, per(y).detach(), rtol=1e-10, atol=1e-10)
    rho = per.rho.detach().clone().requires_grad_(True)

    def f(r):
        return reconstruction_loss(functional_call(per, {"rho": r}, (y,)), x_true)

    assert torch.autograd.gradcheck(f, (rho,), eps=1e-7, atol=1e-5, rtol=1e-4)
    # The first ρ_k matters more than nothing: each iteration has its own λ_k.
    g = torch.autograd.grad(f(rho), rho)[0]
    assert int((g.abs() > 0).sum()) == 8


# --------------------------------------------------------------------------- peaks extraction
def test_peak_extraction_splits_touching_emitters():
    from stormfold.unrolled.engine import extract

    x = np.zeros((1, 12, 12))
    x[0, 5, 3:9] = [2.0, 10.0, 4.0, 4.0, 10.0, 2.0]   # two maxima joined by a bridge
    x[0, 10, 10] = 1.0                                # weak: below the mass threshold
    comp = extract(x, 1.0, 0, 25.0, "components")
    assert len(comp) == 2                             # the pair is merged into one
    pk = extract(x, 5.0, 3, 25.0, "peaks")
    assert len(pk) == 2 and set(pk["frame"]) == {3}
    # each window's centroid: columns 3..5 around the first maximum (col 4), 6..8 for col 7
    np.testing.assert_allclose(pk["x_nm"], [((2 * 3 + 10 * 4 + 4 * 5) / 16 + 0.5) * 25,
                                            ((4 * 6 + 10 * 7 + 2 * 8) / 16 + 0.5) * 25])
    np.testing.assert_allclose(pk["y_nm"], [5.5 * 25, 5.5 * 25])
    # the window sum of x_K is not photons (review 12 #1): written as intensity [a.u.]
    np.testing.assert_allclose(pk["intensity_au"], [16.0, 16.0])
    assert "photons" not in pk.columns and "photons" not in comp.columns
    np.testing.assert_allclose(sorted(comp["intensity_au"]), [1.0, 32.0])
    assert len(extract(x, 100.0, 0, 25.0, "peaks")) == 0
    with pytest.raises(UserError, match="method"):
        extract(x, 1.0, 0, 25.0, "blobs")


def test_extraction_threshold_units_are_not_mixed():
    """A peaks threshold is a 3×3 sum, a components one a per-pixel level: neither is used
    for the other method without a threshold given."""
    from stormfold.localize.registry import load_engine
    from stormfold.unrolled.train import ExtractionConfig

    with pytest.raises(UserError, match="calibrate"):
        ExtractionConfig(method="peaks", calibrate=False).validate()
    with pytest.raises(UserError, match="method=peaks"):
        load_engine(model="builtin:unrolled-isbi2013", options={"method": "components"})
    engine = load_engine(model="builtin:unrolled-isbi2013", threshold=0.01,
                         options={"method": "components"})
    assert engine.method == "components"


# --------------------------------------------------------------------------- dim-movie warning
def test_low_intensity_warning_rule():
    from stormfold.unrolled.engine import LOW_CHECK_MIN, low_intensity_warning

    assert low_intensity_warning(LOW_CHECK_MIN - 1, LOW_CHECK_MIN - 1, 88.4, 3e-4) is None
    assert low_intensity_warning(24, 100, 88.4, 3e-4) is None
    text = low_intensity_warning(25, 100, 88.4, 3e-4)
    assert "25 of 100" in text and "--threshold 88.4" in text and "\n" not in text
    # The shipped model keeps every peak, so its intensity_p05 is the 5 % quantile of all
    # peaks on the training frames: the second of the calibration's 0, 5, … % candidates.
    from stormfold.localize.registry import load_engine

    ext = load_engine(model="builtin:unrolled-isbi2013").meta["extraction"]
    assert ext["threshold"] == ext["candidates"][0]["threshold"]
    assert ext["intensity_p05"] == ext["candidates"][1]["threshold"]


def test_a_bad_intensity_p05_names_the_model(tmp_path):
    import shutil

    from stormfold.localize.registry import load_engine
    from stormfold.modelfile import builtin_root

    folder = shutil.copytree(builtin_root() / "unrolled-isbi2013", tmp_path / "m")
    meta = yaml.safe_load((folder / "model.yaml").read_text())
    for bad in (float("nan"), -1.0, "high"):
        meta["extraction"]["intensity_p05"] = bad
        (folder / "model.yaml").write_text(yaml.safe_dump(meta))
        with pytest.raises(UserError, match=r"m: extraction.intensity_p05 must be a number > 0"):
            load_engine(model=str(folder))
    meta["extraction"]["intensity_p05"] = None  # no calibration data: no check, no error
    (folder / "model.yaml").write_text(yaml.safe_dump(meta))
    assert load_engine(model=str(folder)).intensity_p05 is None


def test_dim_movie_warns_once_and_names_threshold():
    """The shipped model's threshold keeps every 3×3 peak: on a dim movie (300 photons on
    the challenge2016 camera; review 12 #3: 1093 localizations for 470 emitters) most
    localizations are noise peaks, fainter than 95 % of the training ones: one warning. The
    model's own kind of movie, or a raised threshold, gives none."""
    import warnings

    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate

    def run(overrides, threshold=None):
        cfg = build_config("challenge2016", n_frames=4, seed=3,
                           overrides=["n_rows=64", "n_cols=64", *overrides])
        sim = simulate(cfg)
        engine = load_engine(model="builtin:unrolled-isbi2013", threshold=threshold)
        photons = cfg.camera.backward(sim.movie)
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            for a in (0, 2):  # two batches: the warning is given once
                locs = engine.process(photons[a:a + 2], a, cfg.pixel_size_nm).locs
        return [str(w.message) for w in said if "unrolled:" in str(w.message)], len(locs)

    dim = ["emitters.photons_mean=300", "emitters.photons_std=30",
           "activation.density_per_um2=1"]
    said, _ = run(dim)
    assert len(said) == 1 and "--threshold" in said[0]  # measured: 81 % below, 907 for 164
    assert run([])[0] == []                             # measured: 0 % below
    assert run(dim, threshold=88.4)[0] == []


def test_dim_movie_warning_reaches_run_yaml(tmp_path, run_cli):
    """`stormfold run` routes the warning through its own path: stderr once, run.yaml."""
    from stormfold.simulate import build_config, simulate_to_folder

    cfg = build_config("challenge2016", n_frames=4, seed=3, overrides=[
        "n_rows=64", "n_cols=64", "emitters.photons_mean=300", "emitters.photons_std=30",
        "activation.density_per_um2=1"])
    simulate_to_folder(cfg, tmp_path / "sim", progress=False)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({
        "movie": str(tmp_path / "sim" / "movie.tif"), "output": str(tmp_path / "out"),
        "engine": {"model": "builtin:unrolled-isbi2013"}}))
    import warnings

    with warnings.catch_warnings(record=True) as said:  # pytest records, so not on stderr
        warnings.simplefilter("always")
        code, _, err = run_cli("run", tmp_path / "run.yaml", "--quiet")
    assert code == 0, err
    said = [str(w.message) for w in said if "are fainter than all but 5 %" in str(w.message)]
    assert len(said) == 1 and "engine.threshold" in said[0]
    record = yaml.safe_load((tmp_path / "out" / "run.yaml").read_text())
    assert any("fainter than all but 5 %" in w for w in record["warnings"])


def test_each_movie_gets_its_own_dim_check_recorded_by_localize(tmp_path):
    """The dim-movie count starts again for every movie an engine localizes (review 13: a
    reused engine stayed silent on its second dim movie), and `localize` records the
    warning in run.yaml's ``engine_warnings``."""
    import warnings

    from stormfold.localize import localize_movie
    from stormfold.localize.registry import load_engine
    from stormfold.simulate import build_config, simulate_to_folder

    cfg = build_config("challenge2016", n_frames=4, seed=3, overrides=[
        "n_rows=64", "n_cols=64", "emitters.photons_mean=300", "emitters.photons_std=30",
        "activation.density_per_um2=1"])
    simulate_to_folder(cfg, tmp_path / "sim", progress=False)
    engine = load_engine(model="builtin:unrolled-isbi2013")
    for name in ("first", "second"):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            res = localize_movie(tmp_path / "sim" / "movie.tif", engine,
                                 out_dir=tmp_path / name, progress=False)
        said = [str(w.message) for w in said if "fainter than all but 5 %" in str(w.message)]
        assert len(said) == 1, name
        recorded = yaml.safe_load((tmp_path / name / "run.yaml").read_text())["engine_warnings"]
        assert said[0] in recorded and res.run["engine_warnings"] == recorded


def test_a_training_that_kills_the_solver_writes_no_model(tmp_path, run_cli):
    """Review 17 D4: the SGP drove every α_k to 0 (x_K ≡ 0) and the dead model was written
    with exit 0; now it is refused in one line and the checkpoint is kept."""
    code, _, err = run_cli("train", "unrolled", "--preset", "zerocost",
                           "--set", "data.simulation.n_rows=32", "--set",
                           "data.simulation.n_cols=32", "--iterations", "20",
                           "--outer-iterations", "6", "--frames", "4", "--seed", "3",
                           "--out", tmp_path / "u", "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "finds almost nothing on its own training frames" in err and "α" in err
    assert not (tmp_path / "u" / "model.yaml").exists()
    assert (tmp_path / "u" / "checkpoint").is_dir()


@pytest.mark.parametrize("key, value", [("params.alpha_bounds", "[-1,2]"),
                                        ("params.rho_bounds", "[0,1.5]")])
def test_parameter_boxes_outside_their_domain_are_refused(tmp_path, run_cli, key, value):
    code, _, err = run_cli("train", "unrolled", "--preset", "zerocost", "--set",
                           f"{key}={value}", "--out", tmp_path / "u", "--quiet")
    assert code == 2 and f"{key.split('.')[1]}" in err and "must lie within" in err


def test_background_map_follows_a_gradient_and_leaves_even_frames_alone():
    """Review 17 D11: one level per frame left an illumination gradient's excess to the
    solver. The map follows a ramp (linear between and beyond the tile centres); an even
    frame keeps its single level."""
    from stormfold.unrolled.solver import estimate_background, estimate_background_map

    rng = np.random.default_rng(0)
    ramp = np.linspace(10.0, 60.0, 96)[None, None, :] * np.ones((3, 64, 96))
    y = torch.tensor(rng.poisson(ramp), dtype=torch.float32)
    b = estimate_background_map(y)
    assert b.shape == (3, 64, 96)
    # The 10 % quantile of a 3 × 3 mean lies 1.28 filtered SDs (√b / 3) below the mean, as
    # the single level does; the map adds no error of its own along the ramp.
    error = np.median((b - torch.tensor(ramp, dtype=torch.float32)).numpy(), axis=(0, 1))
    expected = -1.2816 * np.sqrt(ramp[0, 0]) / 3
    assert np.abs(error - expected).max() < 0.5
    even = torch.tensor(rng.poisson(30.0, (3, 64, 96)), dtype=torch.float32)
    flat = estimate_background_map(even)
    assert flat.shape == (3, 1, 1)
    torch.testing.assert_close(flat.view(-1), estimate_background(even))


def test_interpolation_weights_match_numpy():
    from stormfold.unrolled.solver import _interpolation

    w = _interpolation(80, 32).numpy()  # tiles of 32, 32, 16: centres 15.5, 47.5, 71.5
    centres = np.array([15.5, 47.5, 71.5])
    values = np.array([3.0, 7.0, 1.0])
    pixels = np.arange(80.0)
    inside = np.interp(pixels, centres, values)
    left = values[0] + (pixels - 15.5) * (values[1] - values[0]) / 32.0
    right = values[1] + (pixels - 47.5) * (values[2] - values[1]) / 24.0
    expected = np.where(pixels < 15.5, left, np.where(pixels > 71.5, right, inside))
    np.testing.assert_allclose(w @ values, expected, atol=1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)


@pytest.mark.parametrize("shape", [(33, 33), (65, 66), (97, 100)])
def test_background_map_stays_off_on_uniform_frames_of_any_size(shape):
    """Review 19 D1: a 1–4 px remainder tile read its quantile off a few pixels, switched
    the map on in uniform frames and extrapolated it to ±1,000 photons."""
    from stormfold.unrolled.solver import estimate_background_map

    rng = np.random.default_rng(7)
    rows, cols = shape
    yy, xx = np.mgrid[:rows, :cols]
    frames = np.empty((16, rows, cols))
    for t in range(16):
        mean = np.full(shape, 10.0)
        for r, c in rng.uniform(0, 1, (8, 2)) * (rows, cols):
            mean += 5000.0 / (2 * np.pi * 1.2 ** 2) * np.exp(
                -((yy - r) ** 2 + (xx - c) ** 2) / (2 * 1.2 ** 2))
        frames[t] = rng.poisson(mean)
    b = estimate_background_map(torch.tensor(frames, dtype=torch.float32))
    assert b.shape == (16, 1, 1) and float(b.min()) >= 0
