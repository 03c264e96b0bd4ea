"""Tests of the volume-level fit (qalas_bids.qalas.fitting.fit_volume)."""
import json

import numpy as np
import pytest

from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.fitting.fit_volume import MAP_KEYS, fit_volume, mask_neighbors, validate_volume
from qalas_bids.qalas.phantom.digital_brain import simulate_tissue_voxels
from qalas_bids.qalas.physics.timing import SequenceTiming

TIMING = SequenceTiming()
SSL_FAST = {"epochs": 15, "batch_size": 128}


def _volume(snr=80, seed=0):
    """20x20x12 volume: a 6x6x9 block of WM/GM/CSF voxels (mask) inside noisy background
    (enough background for the Rayleigh noise estimate)."""
    mags, truth, labels = simulate_tissue_voxels(108, snr=snr, seed=seed)
    rng = np.random.default_rng(seed)
    sigma = np.median(mags[labels == 3, 4]) / snr
    shape = (20, 20, 12)
    vol = np.abs(rng.normal(0, sigma, shape + (5,)) + 1j * rng.normal(0, sigma, shape + (5,)))
    mask = np.zeros(shape, bool)
    mask[7:13, 7:13, 1:10] = True
    vol[mask] = mags
    b1 = np.ones(shape)
    b1[mask] = truth["b1"]
    return vol, b1, mask, truth, labels


def test_validation_names_the_problem():
    vol, b1, mask, _, _ = _volume()
    with pytest.raises(QalasInputError, match="4D"):
        validate_volume(vol[..., 0], b1, mask)
    with pytest.raises(QalasInputError, match="mask shape"):
        validate_volume(vol, b1, mask[:-1])
    with pytest.raises(QalasInputError, match="empty"):
        validate_volume(vol, b1, np.zeros_like(mask))
    with pytest.raises(QalasInputError, match="B1 map shape"):
        validate_volume(vol, b1[:-1], mask)
    for bad, pattern in ((np.nan, "NaN"), (np.inf, "NaN/Inf"), (-2.0, "negative")):
        broken = vol.copy()
        broken[9, 9, 3, 1] = bad
        with pytest.raises(QalasInputError, match=pattern):
            fit_volume(broken, b1, mask, TIMING, device="cpu", progress=False)
    broken_b1 = b1.copy()
    broken_b1[9, 9, 2] = np.nan
    with pytest.raises(QalasInputError, match="B1 map"):
        validate_volume(vol, broken_b1, mask)
    with pytest.raises(QalasInputError, match="method"):
        fit_volume(vol, b1, mask, TIMING, method="guess")


def test_nan_outside_mask_is_ignored_and_never_propagated():
    vol, b1, mask, _, _ = _volume()
    vol[0, 0, 0, :] = np.nan
    b1[0, 0, 0] = np.nan
    fit = fit_volume(vol, b1, mask, TIMING, method="scan-specific", device="cpu", progress=False,
                     ssl_options=SSL_FAST, with_uncertainty=False)
    assert set(fit.maps) == set(MAP_KEYS)
    for key, arr in fit.maps.items():
        assert arr.shape == mask.shape and arr.dtype == np.float32, key
        assert np.isfinite(arr).all(), key
        assert (arr[~mask] == 0).all(), key
    assert (fit.maps["t1"][mask] > 0).all()
    json.dumps(fit.info)
    assert fit.info["method"] == "scan-specific" and fit.info["epochs"] > 0


def test_missing_b1_warns():
    vol, _, mask, _, _ = _volume()
    fit = fit_volume(vol, None, mask, TIMING, device="cpu", progress=False,
                     ssl_options=SSL_FAST, with_uncertainty=False)
    assert any("no B1 map" in w for w in fit.info["warnings"])


def test_mask_neighbors():
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = mask[2, 1, 1] = mask[1, 1, 2] = True
    nb = mask_neighbors(mask)  # masked voxels in C order: (1,1,1), (1,1,2), (2,1,1)
    np.testing.assert_array_equal(nb, [[2, -1, 1], [-1, -1, -1], [-1, -1, -1]])


def test_tv_option_runs():
    vol, b1, mask, _, _ = _volume()
    fit = fit_volume(vol, b1, mask, TIMING, device="cpu", progress=False,
                     ssl_options={**SSL_FAST, "tv_weight": 1e-3}, with_uncertainty=False)
    assert fit.info["tv_weight"] == 1e-3 and not any("tv_weight ignored" in w for w in fit.info["warnings"])


def test_uncertainty_maps():
    pytest.importorskip("qalas_bids.qalas.fitting.uncertainty")
    vol, b1, mask, truth, labels = _volume(snr=80)
    fit = fit_volume(vol, b1, mask, TIMING, device="cpu", progress=False, ssl_options=SSL_FAST)
    assert fit.info["noise_sigma"] > 0 and fit.info["noise_sigma_method"]
    for key in ("crlb_t1", "crlb_t2", "crlb_pd", "crlb_ie", "residual"):
        assert np.isfinite(fit.maps[key]).all()
        assert (fit.maps[key][mask] > 0).any(), key
    wm = mask.copy()
    wm[mask] = labels == 3
    assert fit.info["noise_sigma_method"].startswith("background")
    # WM T1 CRLB at SNR 80 is ~4.5 % of T1 (6 % at SNR 60 in the benchmark)
    assert 0.02 < np.median(fit.maps["crlb_t1"][wm] / fit.maps["t1"][wm]) < 0.08
