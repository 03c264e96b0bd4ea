"""Tests of the per-voxel SSL-QALAS network (qalas_bids.qalas.fitting.network)."""
import math

import numpy as np
import pytest
import torch

from qalas_bids.qalas.fitting.network import (PD_MAX, NetworkConfig, QalasNet, count_parameters,
                                      network_inputs, robust_scale)


def test_outputs_are_bounded_and_shaped():
    torch.manual_seed(0)
    net = QalasNet()
    x = torch.randn(1000, 6) * 10  # extreme inputs must still give bounded outputs
    out = net(x)
    assert out.shape == (1000, 4)
    assert (out[:, 0] > 0).all() and (out[:, 0] <= 5.0).all()
    assert (out[:, 1] > 0).all() and (out[:, 1] <= 2.5).all()
    assert (out[:, 2] > 0).all() and (out[:, 2] <= PD_MAX).all()
    assert (out[:, 3] >= 0.5).all() and (out[:, 3] <= 1.0).all()


def test_voxels_are_independent():
    """Per-voxel normalisation only: a voxel's output does not depend on its batch."""
    torch.manual_seed(1)
    net = QalasNet().eval()
    x = torch.rand(64, 6)
    alone = net(x[:1])
    with_others = net(torch.cat([x[:1], 100 * torch.rand(63, 6)]))[:1]
    torch.testing.assert_close(alone, with_others)


def test_b1_input_is_optional():
    net = QalasNet(NetworkConfig(use_b1_input=False))
    assert net.n_inputs == 5
    mags, b1 = torch.rand(10, 5), torch.ones(10)
    assert network_inputs(mags, b1, 2.0, False).shape == (10, 5)
    x = network_inputs(mags, b1, 2.0, True)
    assert x.shape == (10, 6)
    torch.testing.assert_close(x[:, :5], mags / 2.0)
    assert net(network_inputs(mags, b1, 2.0, False)).shape == (10, 4)


def test_small_enough_to_ship():
    n = count_parameters(QalasNet())
    assert 5_000 < n < 30_000  # tens of kB in float32


def test_robust_scale_ignores_hot_voxels():
    rng = np.random.default_rng(0)
    mags = rng.uniform(0.5, 1.0, (10_000, 5))
    mags[:10, 4] = 1e6
    assert 0.95 < robust_scale(mags) <= 1.0
    with pytest.raises(ValueError):
        robust_scale(np.zeros((10, 5)))
    assert math.isclose(PD_MAX, 4 / math.sin(math.radians(4)))
