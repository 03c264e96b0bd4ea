"""Readout-order check: a quick fit prefers the true order, whatever the noise level."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qalas_bids.qalas.fitting.readout_order import (IDENTITY, candidate_orders, check_readout_order,
                                           sample_voxels)
from qalas_bids.qalas.physics.signal_model import qalas_magnitude
from qalas_bids.qalas.physics.timing import get_preset

SIEMENS = get_preset("siemens")


def simulated_voxels(snr: float, n: int = 1500, seed: int = 0) -> np.ndarray:
    """WM/GM/CSF-like voxels with B1 0.8-1.2 (the check assumes 1) and Rician noise."""
    rng = np.random.default_rng(seed)
    tissue = rng.integers(0, 3, n)
    t1 = np.array([0.85, 1.35, 4.0])[tissue] * rng.uniform(0.9, 1.1, n)
    t2 = np.array([0.075, 0.095, 1.8])[tissue] * rng.uniform(0.9, 1.1, n)
    ie, b1 = rng.uniform(0.8, 0.95, n), rng.uniform(0.8, 1.2, n)
    clean = qalas_magnitude(*(torch.as_tensor(v, dtype=torch.float64) for v in (t1, t2, np.ones(n), ie, b1)),
                            SIEMENS).numpy()
    sigma = np.median(clean[tissue == 0, 4]) / snr
    return np.hypot(clean + sigma * rng.standard_normal(clean.shape), sigma * rng.standard_normal(clean.shape))


def test_candidate_orders():
    orders = candidate_orders([(4, 0, 1, 2, 3), (0, 0, 1, 2, 3)])  # the invalid one is dropped
    assert orders[0] == IDENTITY and len(orders) == len(set(orders)) == 1 + 4 + 4
    assert (1, 0, 2, 3, 4) in orders and (4, 0, 1, 2, 3) in orders


@pytest.mark.parametrize("snr", [15, 60])
def test_true_order_is_accepted_and_wrong_orders_rejected(snr):
    voxels = simulated_voxels(snr)
    good = check_readout_order(voxels, SIEMENS)
    assert good.plausible and good.given_residual < 0.12, good
    rotated = check_readout_order(voxels[:, [1, 2, 3, 4, 0]], SIEMENS)
    assert not rotated.plausible and rotated.best_order == (4, 0, 1, 2, 3), rotated
    swapped = check_readout_order(voxels[:, [0, 1, 2, 4, 3]], SIEMENS)
    assert not swapped.plausible and swapped.best_order == (0, 1, 2, 4, 3), swapped


def test_sample_voxels_is_bounded_and_reproducible():
    data = np.zeros((20, 20, 10, 5))
    data[5:15, 5:15, 2:8] = np.random.default_rng(1).uniform(1, 2, (10, 10, 6, 5))
    a, b = sample_voxels(data, n=300), sample_voxels(data, n=300)
    assert a.shape == (300, 5) and np.array_equal(a, b) and (a > 0).all()
    assert sample_voxels(np.zeros((4, 4, 4, 5))).shape == (0, 5)
