"""Tests of the closed-form QALAS signal model against the shared reference facts."""
from __future__ import annotations

import math

import pytest
import torch

from qalas_bids.qalas.physics.signal_model import qalas_magnitude, qalas_signal, qalas_signal_repeated
from qalas_bids.qalas.physics.timing import PRESETS

SIEMENS = PRESETS["siemens"]
F64 = torch.float64

# Shared notes §2 test vectors (Siemens preset, M0 = 1, IE = 1, B1 = 1): T1, T2, S1..S5.
TEST_VECTORS = [
    (0.8, 0.07, [0.013644, -0.030438, 0.035740, 0.051464, 0.055200]),
    (1.3, 0.09, [0.015650, -0.027149, 0.021484, 0.039295, 0.045818]),
    (4.0, 2.0, [0.021777, -0.021870, -0.000269, 0.012354, 0.019731]),
]

# A spread of tissue-like and extreme voxels: (T1, T2, PD, IE, B1).
VOXELS = torch.tensor([
    [0.85, 0.075, 0.69, 0.88, 1.00],
    [1.35, 0.095, 0.80, 0.88, 0.90],
    [4.20, 1.800, 1.00, 0.98, 1.10],
    [0.30, 0.040, 0.50, 0.60, 0.70],
    [2.00, 0.300, 1.20, 0.75, 1.30],
], dtype=F64)


def _signal(voxels: torch.Tensor, timing=SIEMENS) -> torch.Tensor:
    return qalas_signal(*voxels.unbind(-1), timing)


@pytest.mark.parametrize("t1, t2, expected", TEST_VECTORS)
def test_reference_vectors(t1, t2, expected):
    s = qalas_signal(torch.tensor(t1, dtype=F64), torch.tensor(t2, dtype=F64), 1.0, 1.0, 1.0, SIEMENS)
    assert s.shape == (5,)
    assert torch.allclose(s, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-5)


@pytest.mark.parametrize("vendor", sorted(PRESETS))
def test_closed_form_steady_state_equals_explicit_repetition(vendor):
    timing = PRESETS[vendor]
    closed = _signal(VOXELS, timing)
    repeated = qalas_signal_repeated(*VOXELS.unbind(-1), timing, n_cycles=40)
    assert torch.allclose(closed, repeated, rtol=0, atol=1e-10)


def test_output_shape_broadcasts():
    t1 = torch.full((3, 4), 1.0, dtype=F64)
    s = qalas_signal(t1, 0.08, 1.0, torch.full((4,), 0.9, dtype=F64), 1.0, SIEMENS)
    assert s.shape == (3, 4, 5) and s.dtype == F64


def test_gradients_match_finite_differences():
    # t1, t2, pd, ie are fitted (B1 is known) and must carry correct gradients.
    params = [VOXELS[:4, k].clone().requires_grad_(True) for k in range(4)]
    b1 = VOXELS[:4, 4]

    def f(t1, t2, pd, ie):
        return qalas_signal(t1, t2, pd, ie, b1, SIEMENS)

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-8, rtol=1e-5)


def test_magnitude_is_abs_of_signed():
    signed = _signal(VOXELS)
    mag = qalas_magnitude(*VOXELS.unbind(-1), SIEMENS)
    assert torch.equal(mag, signed.abs())
    assert (signed[:, 1] < 0).all()  # readout 2 follows the inversion: negative Mz


def test_pd_scales_linearly():
    v = VOXELS.clone()
    v[:, 2] *= 2.5
    assert torch.allclose(_signal(v), 2.5 * _signal(VOXELS), rtol=1e-12, atol=0)


def test_lower_b1_changes_signals_physically():
    """B1 = 0.8 vs 1 for WM- and GM-like voxels (IE 0.9).

    * Readouts 4 and 5 sit late on the recovery curve: their Mz is *higher* at lower B1
      (the trains of smaller flips saturate less), but the first-echo signal is
      Mz * sin(alpha * B1) and sin drops by ~20 %, which dominates: S4, S5 get smaller.
    * Readout 1: the T2 prep with theta = 0.8 * 90 deg leaves cos^2(theta) ~ 10 % of Mz
      on the (slow) T1 path instead of the T2 decay, so Mz before readout 1 is larger.
    """
    t1 = torch.tensor([0.85, 1.35], dtype=F64)
    t2 = torch.tensor([0.075, 0.095], dtype=F64)
    low = qalas_signal(t1, t2, 1.0, 0.9, 0.8, SIEMENS)
    nominal = qalas_signal(t1, t2, 1.0, 0.9, 1.0, SIEMENS)
    alpha = math.radians(SIEMENS.flip_angle)
    mz_low, mz_nominal = low / math.sin(0.8 * alpha), nominal / math.sin(alpha)
    assert (low[:, 3:] < nominal[:, 3:]).all()
    assert (mz_low[:, 3:] > mz_nominal[:, 3:]).all()
    assert (mz_low[:, 0] > mz_nominal[:, 0]).all()


@pytest.mark.parametrize("t1", [0.3, 0.85, 1.35, 4.2])
@pytest.mark.parametrize("ie", [0.5, 0.75, 1.0])
def test_inversion_efficiency_scales_the_inversion_jump(t1, ie):
    """Mz right after the inversion = -IE * Mz right before it.

    Mz before readout 1 is S1 / sin(alpha); the documented train and free-recovery steps
    (shared notes §2) carry it to just before the inversion, and inverting the d56
    recovery from S2 gives Mz just after it.
    """
    tm = SIEMENS
    t1_t = torch.tensor(t1, dtype=F64)
    s = qalas_signal(t1_t, torch.tensor(0.08, dtype=F64), 1.0, ie, 1.0, tm)
    alpha = math.radians(tm.flip_angle)
    inv_t1_star = 1 / t1 - math.log(math.cos(alpha)) / tm.esp
    m0_star = (1 - math.exp(-tm.esp / t1)) / (1 - math.exp(-tm.esp * inv_t1_star))
    e_train = math.exp(-tm.etl * inv_t1_star)
    m = float(s[0]) / math.sin(alpha)
    m = m0_star * (1 - e_train) + m * e_train
    e = math.exp(-(tm.gap - tm.etl - tm.tinv - tm.d56) / t1)
    before = (1 - e) + m * e
    e56 = math.exp(-tm.d56 / t1)
    after = (float(s[1]) / math.sin(alpha) - (1 - e56)) / e56
    assert after / before == pytest.approx(-ie, rel=1e-9)


def test_half_inversion_efficiency_reduces_negative_contrast():
    t1 = torch.tensor([0.85, 1.35], dtype=F64)
    full = qalas_signal(t1, 0.08, 1.0, 1.0, 1.0, SIEMENS)
    half = qalas_signal(t1, 0.08, 1.0, 0.5, 1.0, SIEMENS)
    assert (half[:, 1].abs() < full[:, 1].abs()).all()
    assert (half[:, 2] > full[:, 2]).all()  # less inverted -> further recovered


def test_float32_close_to_float64():
    s64 = _signal(VOXELS)
    s32 = _signal(VOXELS.float())
    assert s32.dtype == torch.float32
    rel = (s32.double() - s64).abs().amax(-1) / s64.abs().amax(-1)
    assert (rel < 1e-5).all()


def test_voxelwise_jacobian_matches_finite_differences():
    from qalas_bids.qalas.physics.signal_model import voxelwise_jacobian

    params = torch.tensor([[0.85, 0.075, 0.7, 0.9], [1.35, 0.095, 0.8, 0.85], [4.2, 1.8, 1.0, 0.98]],
                          dtype=F64)
    b1 = torch.tensor([1.0, 0.9, 1.1], dtype=F64)
    fn = lambda p: qalas_magnitude(*p.unbind(-1), b1, SIEMENS)  # noqa: E731
    with torch.no_grad():  # must work inside no_grad, as in the fitting code
        values, jac = voxelwise_jacobian(fn, params)
    assert torch.allclose(values, fn(params))
    assert jac.shape == (3, 5, 4)
    for j in range(4):
        h = 1e-6 * params[:, j]
        up, down = params.clone(), params.clone()
        up[:, j] += h
        down[:, j] -= h
        fd = (fn(up) - fn(down)) / (2 * h[:, None])
        assert torch.allclose(jac[:, :, j], fd, rtol=1e-5, atol=1e-9)
