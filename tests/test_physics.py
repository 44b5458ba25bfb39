"""Forward operator H = S·K_σ, PSF helpers and the camera chain against independent computations."""
import numpy as np
import pytest
import torch
from scipy.special import erf
from scipy.stats import norm

from stormfold.physics import BlurDownsample, Camera, fwhm_from_sigma, sigma_from_fwhm
from stormfold.physics.psf import integrated_gaussian_windows, render_emitters


def dense_H(m, n, L, sigma, radius):
    """H as an explicit matrix, built pixel by pixel with plain numpy (independent code)."""
    offs = np.arange(-radius, radius + 1)
    k = 0.5 * (erf((offs + 0.5) / (np.sqrt(2) * sigma)) - erf((offs - 0.5) / (np.sqrt(2) * sigma)))
    k /= k.sum()
    M, N = m * L, n * L
    H = np.zeros((m * n, M * N))
    for i in range(m):
        for j in range(n):
            for p in range(i * L, i * L + L):
                for q in range(j * L, j * L + L):
                    for a in range(M):
                        if abs(p - a) > radius:
                            continue
                        for b in range(N):
                            if abs(q - b) <= radius:
                                H[i * n + j, a * N + b] += k[p - a + radius] * k[q - b + radius]
    return H


@pytest.mark.parametrize("L,sigma", [(4, 1.3), (2, 0.8), (3, 2.0)])
def test_operator_matches_explicit_matrix(L, sigma):
    m, n = 3, 4
    op = BlurDownsample(L, sigma, dtype=torch.float64)
    Hm = dense_H(m, n, L, sigma, op.radius)
    x = torch.rand(m * L, n * L, dtype=torch.float64)
    r = torch.rand(m, n, dtype=torch.float64)
    np.testing.assert_allclose(op.A(x).numpy().ravel(), Hm @ x.numpy().ravel(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(op.A_adjoint(r).numpy().ravel(), Hm.T @ r.numpy().ravel(),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("L,sigma", [(4, 2.5), (8, 1.0), (1, 1.5), (4, 4.39)])
def test_adjoint_identity_to_float_precision(L, sigma):
    g = torch.Generator().manual_seed(0)
    for dtype, tol in [(torch.float64, 1e-13), (torch.float32, 1e-5)]:
        op = BlurDownsample(L, sigma).to(dtype)
        x = torch.rand(2, 3, 16 * L, 12 * L, generator=g, dtype=torch.float64).to(dtype)
        r = torch.rand(2, 3, 16, 12, generator=g, dtype=torch.float64).to(dtype)
        lhs = (op.A(x) * r).sum().item()
        rhs = (x * op.A_adjoint(r)).sum().item()
        assert abs(lhs - rhs) <= tol * abs(lhs)


def test_operator_is_blur_then_block_sum_and_norm():
    op = BlurDownsample(4, 2.5).double()
    x = torch.rand(5, 64, 48, dtype=torch.float64)
    block = op.blur(x).reshape(5, 16, 4, 12, 4).sum((2, 4))
    torch.testing.assert_close(op.A(x), block, rtol=1e-12, atol=1e-12)
    # Mass is conserved away from the boundary: a spike in the middle sums to 1 on the camera.
    spike = torch.zeros(64, 64, dtype=torch.float64)
    spike[30, 33] = 1.0
    assert op.A(spike).sum().item() == pytest.approx(1.0, abs=1e-12)
    # ‖H‖² by power iteration on HᵀH is at most L² and close to it on a large image.
    v = torch.rand(128, 128, dtype=torch.float64)
    for _ in range(60):
        v = op.A_adjoint(op.A(v))
        v = v / v.norm()
    norm_sq = (op.A(v).norm() ** 2).item()
    assert norm_sq <= op.norm_sq * (1 + 1e-9)
    assert norm_sq > 0.985 * op.norm_sq  # measured 0.991


def test_lambda_max_is_the_zero_solution_threshold():
    """x = 0 minimises f + λ1ᵀx on x ≥ 0 iff λ ≥ max ∂f/∂x_j(0)·(−1); check with finite differences."""
    torch.manual_seed(1)
    op = BlurDownsample(2, 1.2).double()
    y = torch.rand(6, 6, dtype=torch.float64) * 5 + 1.0
    b = 0.7
    for fidelity in ("ls", "kl"):
        lam = op.lambda_max(y, b, fidelity).item()

        def f(x):
            hx = op.A(x) + b
            if fidelity == "ls":
                return 0.5 * ((hx - y) ** 2).sum()
            return (hx - y + y * torch.log(y / hx)).sum()

        h = 1e-6
        zero = torch.zeros(12, 12, dtype=torch.float64)
        # One-sided derivatives along each coordinate direction e_j at x = 0.
        eye = torch.eye(144, dtype=torch.float64).reshape(144, 12, 12)
        d = torch.stack([(f(h * e) - f(zero)) / h for e in eye])
        assert (-d).max().item() == pytest.approx(lam, rel=1e-4)


def test_sigma_is_differentiable():
    op = BlurDownsample(2, 1.1, learn_sigma=True).double()
    x = torch.rand(8, 8, dtype=torch.float64)
    r = torch.rand(4, 4, dtype=torch.float64)

    def loss(s):
        op.sigma_fine_px.data = s.detach().clone()
        return (op.A(x) * r).sum()

    s0 = torch.tensor(1.1, dtype=torch.float64)
    op.sigma_fine_px.data = s0.clone()
    (op.A(x) * r).sum().backward()
    grad = op.sigma_fine_px.grad.item()
    h = 1e-6
    fd = (loss(s0 + h).item() - loss(s0 - h).item()) / (2 * h)
    assert grad == pytest.approx(fd, rel=1e-6)


def test_fwhm_conversions():
    assert sigma_from_fwhm(258.21) == pytest.approx(258.21 / 2.35482, rel=1e-5)
    assert fwhm_from_sigma(sigma_from_fwhm(300.0)) == pytest.approx(300.0)


def test_integrated_gaussian_against_numeric_integration():
    x, y, s = 7.31, 4.62, 1.17
    w, r0, c0 = integrated_gaussian_windows(np.array([x]), np.array([y]), np.array([s]), 6)
    # Supersample each pixel 200×200 and average the Gaussian density: independent of erf.
    sub = (np.arange(200) + 0.5) / 200
    for (dr, dc) in [(6, 6), (5, 7), (8, 3)]:
        rr, cc = r0[0] + dr + sub[:, None], c0[0] + dc + sub[None, :]
        dens = np.exp(-((cc - x) ** 2 + (rr - y) ** 2) / (2 * s * s)) / (2 * np.pi * s * s)
        assert w[0, dr, dc] == pytest.approx(dens.mean(), rel=1e-4)
    assert w.sum() == pytest.approx(1.0, abs=1e-6)  # 5σ window


def test_render_drops_photons_off_sensor_and_keeps_frames_apart():
    img = render_emitters((2, 10, 10), np.array([1, 1]), np.array([0.2, 5.0]), np.array([5.0, 5.0]),
                          np.array([1000.0, 500.0]), np.array([1.0, 1.0]))
    assert img[0].sum() == 0
    # Photons on the 10 × 10 sensor, computed independently with the normal CDF: the first
    # emitter (x = 0.2 px from the left edge) loses Φ(−0.2) = 42 % off the left edge.
    def on_sensor(centre_px):
        return norm.cdf(10 - centre_px) - norm.cdf(-centre_px)

    expected = 1000 * on_sensor(0.2) * on_sensor(5.0) + 500 * on_sensor(5.0) ** 2
    # Windows stop at 4σ: at most the tail mass beyond 4 px of 1500 photons is lost.
    assert img[1].sum() == pytest.approx(expected, abs=1500 * 2 * norm.sf(4.0))


@pytest.mark.parametrize("camera", [
    Camera(qe=0.9, readout_e=3.0, e_per_adu=0.5, baseline_adu=100.0),
    Camera(qe=0.9, em_gain=300.0, e_per_adu=45.0, readout_e=74.4, baseline_adu=100.0,
           spurious_charge=0.002),
    Camera(qe=1.0, em_gain=50.0, e_per_adu=10.0, readout_e=0.0, baseline_adu=200.0),
])
def test_camera_mean_and_variance_match_theory(camera):
    rng = np.random.default_rng(0)
    for photons in (20.0, 150.0):
        frames = np.full((4, 256, 256), photons)  # 262,144 pixels
        adu = camera.forward(frames, rng).astype(np.float64)
        # The signal above the baseline, so that a gain error cannot hide behind the offset.
        # Bounds ≈ 5 standard errors of these means and variances (measured: signal within
        # 0.05 % with SE ≤ 0.065 %, variance within 0.24 % with SE ≤ 0.3 %); a 1 % gain error
        # fails them.
        signal = adu.mean() - camera.baseline_adu
        assert signal == pytest.approx(float(camera.mean_adu(photons)) - camera.baseline_adu,
                                       rel=0.003)
        assert adu.var() == pytest.approx(float(camera.adu_variance(photons)), rel=0.015)
        assert camera.backward(adu).mean() == pytest.approx(photons, rel=0.003)


def test_em_gain_excess_noise_factor_is_two():
    rng = np.random.default_rng(1)
    cam = Camera(em_gain=100.0, e_per_adu=1.0)
    e = np.full(200_000, 30.0)
    adu = cam.forward(e, rng).astype(np.float64)
    # Var / (gain² · mean electrons) = F² = 2 for a high-gain EM register.
    # 2 × 10⁵ draws: ≈ 3 standard errors (measured −0.18 %).
    assert adu.var() / (100.0 ** 2 * 30.0) == pytest.approx(2.0, rel=0.01)


def test_camera_validation():
    from stormfold.errors import UserError
    with pytest.raises(UserError, match="qe"):
        Camera(qe=1.5).validate()
    with pytest.raises(UserError, match="em_gain"):
        Camera(em_gain=0.5).validate()
