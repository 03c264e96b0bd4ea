"""Tests of noise estimation, Cramér-Rao bounds and relative residuals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.physics.signal_model import qalas_magnitude
from qalas_bids.qalas.physics.timing import PRESETS
from qalas_bids.qalas.fitting.uncertainty import (CRLB_CAP, RESIDUAL_CAP, crlb_std, estimate_noise_sigma,
                                          relative_residual)

SIEMENS = PRESETS["siemens"]
TISSUES = {"WM": (0.85, 0.075, 0.69, 0.88), "GM": (1.35, 0.095, 0.80, 0.88)}
NAMES = ("t1", "t2", "pd", "ie")


def _model(params: torch.Tensor, b1: float = 1.0) -> torch.Tensor:
    return qalas_magnitude(*params.unbind(-1), b1, SIEMENS)


def _gauss_newton_fit(y: torch.Tensor, start: torch.Tensor, iterations: int = 25) -> torch.Tensor:
    """Batched damped Gauss-Newton least squares of the magnitude model (test helper)."""
    p = start.clone()
    for _ in range(iterations):
        p = p.detach().requires_grad_(True)
        m = _model(p)
        jac = torch.stack([torch.autograd.grad(m[:, k].sum(), p, retain_graph=True)[0]
                           for k in range(5)], dim=1)
        r = y - m.detach()
        jtj = jac.transpose(1, 2) @ jac
        jtj = jtj + 1e-6 * torch.diag_embed(torch.diagonal(jtj, dim1=1, dim2=2))
        step = torch.linalg.solve(jtj, (jac.transpose(1, 2) @ r[..., None]))[..., 0]
        p = p.detach() + step
    return p


@pytest.mark.parametrize("tissue", sorted(TISSUES))
def test_crlb_matches_spread_of_unbiased_fits(tissue):
    """SNR 100 (contrast 5 of WM / sigma), 400 Rician noise draws of one voxel.

    At this SNR Rician noise is ~Gaussian and the least-squares fit started at the truth
    is unbiased, so its empirical std must match the CRLB (+-30 %: the sampling error of
    a std from 400 draws is ~4 %).
    """
    truth = torch.tensor(TISSUES[tissue], dtype=torch.float64)
    sigma = float(_model(torch.tensor(TISSUES["WM"], dtype=torch.float64))[4]) / 100.0
    gen = torch.Generator().manual_seed(11)
    n = 400
    clean = _model(truth).expand(n, 5)
    noisy = torch.abs(torch.complex(clean + sigma * torch.randn(n, 5, generator=gen, dtype=torch.float64),
                                    sigma * torch.randn(n, 5, generator=gen, dtype=torch.float64)))
    fits = _gauss_newton_fit(noisy, truth.expand(n, 4)).numpy()
    bound = crlb_std(*[np.array([v]) for v in TISSUES[tissue]], 1.0, SIEMENS, sigma, device="cpu")
    assert not bound["singular"][0]
    for j, name in enumerate(NAMES):
        bias = abs(fits[:, j].mean() - TISSUES[tissue][j])
        assert bias < 0.3 * fits[:, j].std(), f"{name} fit biased: check the helper"
        ratio = fits[:, j].std() / bound[name][0]
        assert 0.7 < ratio < 1.3, f"{tissue} {name}: empirical std / CRLB = {ratio:.2f}"


def test_crlb_scales_with_sigma_and_is_float32():
    args = [np.array([0.85, 1.35]), np.array([0.075, 0.095]), np.array([0.69, 0.8]),
            np.array([0.88, 0.88]), np.array([1.0, 0.9])]
    a = crlb_std(*args, SIEMENS, 0.001, device="cpu")
    b = crlb_std(*args, SIEMENS, 0.002, device="cpu")
    for name in NAMES:
        assert a[name].dtype == np.float32 and a[name].shape == (2,)
        np.testing.assert_allclose(b[name], 2 * a[name], rtol=1e-5)
    # Longer T1 (GM) is less precisely determined than WM's in seconds.
    assert a["t1"][1] > a["t1"][0]


def test_crlb_singular_voxel_is_capped_and_flagged():
    # PD = 0: no signal, the Jacobian wrt T1/T2/IE vanishes -> singular Fisher matrix.
    out = crlb_std(np.array([0.85, 0.85]), np.array([0.075, 0.075]), np.array([0.0, 0.69]),
                   np.array([0.88, 0.88]), 1.0, SIEMENS, 0.001, device="cpu")
    assert out["singular"].tolist() == [True, False]
    assert out["t1"][0] == CRLB_CAP["t1"] and out["t2"][0] == CRLB_CAP["t2"]
    assert all(np.isfinite(out[name]).all() for name in NAMES)


def test_crlb_rejects_bad_sigma():
    with pytest.raises(QalasInputError, match="sigma"):
        crlb_std(np.array([1.0]), np.array([0.1]), np.array([1.0]), np.array([0.9]), 1.0, SIEMENS, 0.0)


def _phantom_volume(sigma: float, shape=(40, 40, 30), seed: int = 0):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    centre = (np.array(shape) - 1)[:, None, None, None] / 2
    r = np.sqrt((((grid - centre) / (np.array(shape)[:, None, None, None] * 0.3)) ** 2).sum(0))
    head = r < 1.0
    clean = np.zeros(shape + (5,))
    clean[head] = _model(torch.tensor(TISSUES["WM"], dtype=torch.float64)).numpy()
    noisy = np.abs(clean + sigma * rng.standard_normal(clean.shape)
                   + 1j * sigma * rng.standard_normal(clean.shape))
    return noisy, head


def test_noise_sigma_from_background():
    noisy, head = _phantom_volume(0.001)
    sigma, method = estimate_noise_sigma(noisy, head)
    assert method == "background-rayleigh"
    assert sigma == pytest.approx(0.001, rel=0.03)


def test_noise_sigma_fallbacks_without_background():
    noisy, head = _phantom_volume(0.001)
    noisy[~head] = 0.0  # background masked to zero by the scanner/export
    sigma, method = estimate_noise_sigma(noisy, head)
    assert method == "local-difference"
    assert sigma == pytest.approx(0.001, rel=0.2)
    residuals = np.random.default_rng(1).normal(0, 0.001, (5000, 5))
    sigma, method = estimate_noise_sigma(noisy, head, model_residuals=residuals)
    assert method == "residual"
    # One degree of freedom per voxel: sum of 5 squared residuals ~ sigma^2 * (5 - 4).
    assert sigma == pytest.approx(0.001 * np.sqrt(5), rel=0.05)


def test_noise_sigma_rejects_bad_shapes():
    with pytest.raises(QalasInputError, match="X, Y, Z, 5"):
        estimate_noise_sigma(np.zeros((4, 4, 4, 3)), np.zeros((4, 4, 4), bool))


def test_relative_residual():
    params = np.array([[0.85, 0.075, 0.69, 0.88], [1.35, 0.095, 0.8, 0.88], [4.2, 1.8, 1.0, 0.98]])
    b1 = np.array([1.0, 0.9, 1.1])
    clean = qalas_magnitude(*torch.as_tensor(params).unbind(-1), torch.as_tensor(b1), SIEMENS).numpy()
    exact = relative_residual(clean, *params.T, b1, SIEMENS, device="cpu")
    assert exact.dtype == np.float32 and np.all(exact < 1e-6)
    scaled = relative_residual(1.1 * clean, *params.T, b1, SIEMENS, device="cpu")
    np.testing.assert_allclose(scaled, 0.1 / 1.1, rtol=1e-5)
    zero = relative_residual(np.zeros((1, 5)), *params[:1].T, 1.0, SIEMENS, device="cpu")
    assert zero[0] == RESIDUAL_CAP
    with pytest.raises(QalasInputError, match="shape"):
        relative_residual(np.zeros((3, 4)), *params.T, b1, SIEMENS)
