"""Issue 14's identifiability analysis: with the app's QALAS model, B1 is absorbed exactly by
T1, T2 and PD, so neither per-voxel nor smooth-field B1 can be estimated from the five
contrasts unless T1 is constrained (docs/methods.md, "B1 without a B1 map"). If the model
changes so that B1 becomes identifiable, these tests fail and the analysis must be redone."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qalas_bids.qalas.b1.identifiability import b1_information, field_crlb, polynomial_basis
from qalas_bids.qalas.phantom.digital_brain import TISSUE_PARAMETERS, make_digital_brain
from qalas_bids.qalas.physics.signal_model import qalas_magnitude
from qalas_bids.qalas.fitting.ssl import refine_least_squares
from qalas_bids.qalas.physics.timing import SequenceTiming


@pytest.mark.parametrize("tissue", ["WM", "GM"])
def test_a_b1_error_is_absorbed_by_the_other_parameters(tissue):
    timing = SequenceTiming()
    p = TISSUE_PARAMETERS[tissue]
    truth = torch.tensor([[p["t1"], p["t2"], p["pd"], p["ie"]]], dtype=torch.float64)
    clean = qalas_magnitude(*truth.unbind(1), torch.tensor([1.0], dtype=torch.float64), timing)
    sigma = float(clean[0, 4]) / 60
    b1 = torch.tensor([1.1], dtype=torch.float64)
    fit, _ = refine_least_squares(truth.clone(), clean, b1, timing, steps=60, pd_max=10.0)
    residual = float((qalas_magnitude(*fit.unbind(1), b1, timing) - clean).norm())
    assert residual < 1e-3 * sigma  # a 10 % B1 error is invisible in the data ...
    assert abs(float(fit[0, 0]) / p["t1"] - 1) > 0.03  # ... and moves T1 by more than 3 %


def test_smooth_field_needs_a_t1_constraint():
    brain = make_digital_brain(resolution=4.0, snr=60)
    m = brain.brain_mask
    coords = np.argwhere(m) * 4.0
    args = (brain.t1[m], brain.t2[m], brain.pd[m], brain.ie[m], brain.b1[m], brain.timing, brain.sigma)
    free = field_crlb(b1_information(*args), coords)
    t1_known = field_crlb(b1_information(*args, free=(1, 2, 3)), coords)
    assert np.median(free) > 10.0  # > 1000 %: no information at all
    assert np.median(t1_known) < 0.01  # < 1 % with T1 known


def test_polynomial_basis_is_legendre_of_total_degree():
    coords = np.random.default_rng(0).uniform(-50, 50, (200, 3))
    phi, (lo, hi) = polynomial_basis(coords, degree=4)
    assert phi.shape == (200, 35) and np.allclose(phi[:, 0], 1.0)
    assert np.allclose(lo, coords.min(0)) and np.allclose(hi, coords.max(0))
