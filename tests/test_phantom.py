"""Digital brain and voxel sample sets: tissue values, SNR definition, B1, labels, seeds."""
import numpy as np
import pytest
import torch

from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.phantom.digital_brain import (TISSUE_LABELS, TISSUE_PARAMETERS, add_rician_noise,
                                      make_digital_brain, simulate_tissue_voxels)
from qalas_bids.qalas.physics.signal_model import qalas_magnitude
from qalas_bids.qalas.physics.timing import get_preset


@pytest.fixture(scope="module")
def brain():
    return make_digital_brain(resolution=2.0, snr=30.0, seed=0)


def test_shapes_and_types(brain):
    shape = brain.t1.shape
    assert len(shape) == 3 and min(shape) > 40
    for arr in (brain.t1, brain.t2, brain.pd, brain.ie, brain.b1):
        assert arr.shape == shape and arr.dtype == np.float64 and np.all(np.isfinite(arr))
    assert brain.signals.shape == shape + (5,) and brain.noiseless.shape == shape + (5,)
    assert brain.labels.dtype == np.int8 and brain.brain_mask.dtype == bool
    assert np.allclose(np.diag(brain.affine)[:3], 2.0)
    assert set(brain.tissue_fractions) == {"WM", "GM", "CSF"}


@pytest.mark.parametrize("tissue", ["WM", "GM", "CSF"])
def test_pure_tissue_values_match_literature(brain, tissue):
    mask = brain.tissue_mask(tissue, min_fraction=0.95)
    assert mask.sum() > 500
    ref = TISSUE_PARAMETERS[tissue]
    # 3 % smooth spatial variation and up to 5 % partial volume (5 % CSF raises a GM
    # voxel's T2 by up to 16 %, see the mixing rule): medians within 8 %.
    for key in ("t1", "t2", "pd", "ie"):
        median = np.median(getattr(brain, key)[mask])
        assert median == pytest.approx(ref[key], rel=0.08), (tissue, key, median)
    assert np.std(brain.t1[mask]) > 0.005 * ref["t1"]  # not piecewise constant


def test_fractions_and_labels(brain):
    fractions = brain.tissue_fractions
    total = fractions["WM"] + fractions["GM"] + fractions["CSF"]
    assert total.min() >= 0 and total.max() <= 1 + 1e-9
    assert set(np.unique(brain.labels)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(brain.labels > 0, brain.brain_mask)
    for name, value in TISSUE_LABELS.items():
        assert np.all(fractions[name][brain.labels == value] >= 1 / 3 - 1e-9)
    wm = brain.tissue_mask("WM")
    assert np.all(brain.labels[wm] == TISSUE_LABELS["WM"])
    # Background: no tissue, no PD, no signal.
    background = total == 0
    assert background.mean() > 0.3
    assert np.all(brain.pd[background] == 0) and np.all(brain.noiseless[background] == 0)
    assert brain.brain_mask.sum() * 8e-3 == pytest.approx(1500, rel=0.3)  # ml, adult brain


def test_signals_follow_the_signal_model(brain):
    idx = np.argwhere(brain.brain_mask)[:: 5000]
    sel = tuple(idx.T)
    expected = qalas_magnitude(*(torch.from_numpy(getattr(brain, k)[sel])
                                 for k in ("t1", "t2", "pd", "ie", "b1")), brain.timing).numpy()
    np.testing.assert_allclose(brain.noiseless[sel], expected, rtol=1e-12)


def test_snr_definition_holds(brain):
    wm = brain.tissue_fractions["WM"] > 0.8
    signal = brain.noiseless[wm, 4].mean()
    assert signal / brain.sigma == pytest.approx(30.0, rel=1e-9)
    residual = brain.signals[wm, 4] - brain.noiseless[wm, 4]
    assert signal / residual.std() == pytest.approx(30.0, rel=0.05)
    # Background is Rayleigh: E[m^2] = 2 sigma^2.
    background = sum(brain.tissue_fractions.values()) == 0
    sigma_bg = np.sqrt(np.mean(brain.signals[background] ** 2) / 2)
    assert signal / sigma_bg == pytest.approx(30.0, rel=0.05)


def test_b1_field_is_smooth_and_realistic(brain):
    b1 = brain.b1[brain.brain_mask]
    assert 1.0 < b1.max() <= 1.05 + 1e-9
    assert 0.65 < b1.min() < 0.85
    centre = tuple(np.round(np.argwhere(brain.brain_mask).mean(0)).astype(int))
    assert brain.b1[centre] == pytest.approx(1.05, abs=0.02)
    assert np.abs(np.diff(brain.b1, axis=0)).max() < 0.05  # smooth (2 mm steps)
    world = np.array([[0.0, -18.0, 10.0], [40.0, 20.0, -5.0]])
    ijk = np.round(np.linalg.solve(brain.affine, np.c_[world, np.ones(2)].T)[:3].T).astype(int)
    world_exact = (brain.affine @ np.c_[ijk, np.ones(2)].T)[:3].T
    np.testing.assert_allclose(brain.b1_at(world_exact), brain.b1[tuple(ijk.T)], rtol=1e-12)


def test_b1_scale_and_determinism(brain):
    again = make_digital_brain(resolution=2.0, snr=30.0, seed=0)
    np.testing.assert_array_equal(again.signals, brain.signals)
    np.testing.assert_array_equal(again.t1, brain.t1)
    # New noise, same anatomy, scaled B1.
    other = make_digital_brain(resolution=2.0, snr=30.0, seed=1, anatomy_seed=0, b1_scale=0.9)
    np.testing.assert_array_equal(other.t1, brain.t1)
    np.testing.assert_allclose(other.b1, 0.9 * brain.b1)
    assert not np.allclose(other.signals, brain.signals)


def test_anatomy_seed_and_timing_are_used(brain):
    ge = make_digital_brain(resolution=2.0, snr=30.0, seed=0, timing=get_preset("ge"),
                            anatomy_seed=7)
    assert ge.timing.vendor == "ge"
    assert not np.allclose(ge.t1, brain.t1)  # other smooth variation
    np.testing.assert_array_equal(ge.labels, brain.labels)
    idx = tuple(np.argwhere(ge.brain_mask)[:: 5000].T)
    maps = [torch.from_numpy(getattr(ge, k)[idx]) for k in ("t1", "t2", "pd", "ie", "b1")]
    np.testing.assert_allclose(ge.noiseless[idx], qalas_magnitude(*maps, get_preset("ge")).numpy(),
                               rtol=1e-12)
    assert not np.allclose(ge.noiseless[idx],
                           qalas_magnitude(*maps, get_preset("siemens")).numpy(), rtol=1e-3)


@pytest.mark.parametrize("kwargs", [dict(snr=0), dict(snr=-3), dict(resolution=0.1),
                                    dict(b1_scale=3.0)])
def test_bad_arguments(kwargs):
    with pytest.raises(QalasInputError):
        make_digital_brain(**kwargs)


def test_simulate_tissue_voxels():
    mags, truth, labels = simulate_tissue_voxels(200, snr=50, seed=3)
    assert mags.shape == (600, 5) and labels.shape == (600,) and labels.dtype == np.int8
    assert np.bincount(labels).tolist() == [0, 200, 200, 200]
    assert set(truth) == {"t1", "t2", "pd", "ie", "b1"}
    assert truth["b1"].min() >= 0.8 and truth["b1"].max() <= 1.15
    for name, value in TISSUE_LABELS.items():
        sel = labels == value
        for key in ("t1", "t2", "pd"):
            ratio = truth[key][sel] / TISSUE_PARAMETERS[name][key]
            assert ratio.min() >= 0.95 - 1e-12 and ratio.max() <= 1.05 + 1e-12
            assert ratio.std() > 0.01
    noiseless = qalas_magnitude(*(torch.from_numpy(truth[k]) for k in ("t1", "t2", "pd", "ie", "b1")),
                                get_preset("siemens")).numpy()
    wm = labels == TISSUE_LABELS["WM"]
    sigma = noiseless[wm, 4].mean() / 50
    assert np.std(mags[wm] - noiseless[wm]) == pytest.approx(sigma, rel=0.1)
    again = simulate_tissue_voxels(200, snr=50, seed=3)
    np.testing.assert_array_equal(again[0], mags)
    with pytest.raises(QalasInputError):
        simulate_tissue_voxels(0, snr=50)


def test_add_rician_noise():
    rng = np.random.default_rng(0)
    zeros = np.zeros(200_000)
    noisy = add_rician_noise(zeros, 2.0, rng)
    assert noisy.min() >= 0
    assert noisy.mean() == pytest.approx(2.0 * np.sqrt(np.pi / 2), rel=0.01)  # Rayleigh
    np.testing.assert_array_equal(add_rician_noise(np.ones(4), 0.0, rng), np.ones(4))
    with pytest.raises(QalasInputError):
        add_rician_noise(zeros, -1.0, rng)
