"""Tests of dictionary matching (grid, atoms, exhaustive and coarse-to-fine search)."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from qalas_bids.qalas.fitting.dictionary import (DictionaryGrid, build_dictionary, fit_dictionary,
                                         paper_grid)
from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.fitting.results import FitResult
from qalas_bids.qalas.physics.signal_model import qalas_magnitude
from qalas_bids.qalas.physics.timing import PRESETS

SIEMENS = PRESETS["siemens"]
GRID = paper_grid()


def _magnitudes(t1, t2, pd, ie, b1, timing=SIEMENS) -> np.ndarray:
    as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))  # noqa: E731
    return qalas_magnitude(as_t(t1), as_t(t2), as_t(pd), as_t(ie), as_t(b1), timing).numpy()


def _small_grid() -> DictionaryGrid:
    return DictionaryGrid(t1=np.round(np.arange(0.3, 2.5001, 0.02), 6),
                          t2=np.round(np.arange(0.02, 0.3001, 0.005), 6),
                          ie=np.round(np.arange(0.6, 1.0001, 0.05), 6), name="small")


def test_paper_grid_matches_the_publication_extended_to_the_app_ranges():
    g = GRID
    assert g.shape == (670, 228, 26)
    assert (g.t1[0], g.t1[599], g.t1[600], g.t1[-1]) == (0.005, 3.0, 3.1, 10.0)
    assert np.allclose(np.diff(g.t1[:600]), 0.005) and np.allclose(np.diff(g.t1[600:]), 0.1)
    assert (g.t2[0], g.t2[-1]) == (0.001, 5.0)
    assert np.allclose(np.diff(g.t2[:175]), 0.002)
    assert np.allclose(np.diff(g.t2[175:208]), 0.02) and g.t2[207] == 1.0
    assert (g.ie[0], g.ie[-1], g.ie.size) == (0.5, 1.0, 26)
    assert g.b1_centres.size == 100 and g.b1_edges[0] == 0.65 and g.b1_edges[-1] == 1.35
    # T2 > T1 atoms are dropped: fewer than the full product, but most are kept.
    assert 0.8 * np.prod(g.shape) < g.n_valid_atoms() < np.prod(g.shape)
    assert g.describe()["atoms_per_b1_bin"] == g.n_valid_atoms()


def test_grid_rejects_bad_values():
    with pytest.raises(ValueError, match="increasing"):
        DictionaryGrid(t1=np.array([1.0, 0.5]), t2=np.array([0.1]), ie=np.array([0.9]))
    with pytest.raises(ValueError, match="positive"):
        DictionaryGrid(t1=np.array([0.0, 0.5]), t2=np.array([0.1]), ie=np.array([0.9]))


def test_build_dictionary_atoms_are_model_magnitudes():
    grid = DictionaryGrid(t1=np.array([0.05, 0.8, 1.3]), t2=np.array([0.07, 0.09, 0.5]),
                          ie=np.array([0.8, 1.0]))
    d = build_dictionary(SIEMENS, grid, device="cpu", dtype=torch.float64, b1=[0.9, 1.0])
    assert d.atoms.shape == (2, d.t1.numel(), 5)
    assert (d.t2 <= d.t1).all()
    assert d.t1.numel() == grid.n_valid_atoms() == (0 + 3 + 3) * 2
    expected = qalas_magnitude(d.t1, d.t2, 1.0, d.ie, torch.tensor(0.9, dtype=torch.float64), SIEMENS)
    assert torch.allclose(d.atoms[0], expected)
    assert torch.allclose(torch.as_tensor(grid.t1, dtype=torch.float64)[d.index[:, 0]], d.t1)


def test_on_grid_voxels_are_recovered_exactly():
    rng = np.random.default_rng(3)
    n = 120
    i1, i2, i3 = rng.integers(60, 500, n), rng.integers(10, 80, n), rng.integers(5, 26, n)
    ib = rng.integers(0, 100, n)
    t1, t2, ie, b1 = GRID.t1[i1], GRID.t2[i2], GRID.ie[i3], GRID.b1_centres[ib]
    pd = rng.uniform(0.3, 2.0, n)
    fit = fit_dictionary(_magnitudes(t1, t2, pd, ie, b1), b1, SIEMENS, device="cpu", progress=False)
    assert isinstance(fit, FitResult) and fit.method == "dictionary"
    for name in ("t1", "t2", "pd", "ie"):
        assert getattr(fit, name).dtype == np.float32 and getattr(fit, name).shape == (n,)
    np.testing.assert_array_equal(fit.t1, t1.astype(np.float32))
    np.testing.assert_array_equal(fit.t2, t2.astype(np.float32))
    np.testing.assert_array_equal(fit.ie, ie.astype(np.float32))
    np.testing.assert_allclose(fit.pd, pd, rtol=1e-5)


def test_off_grid_tissue_voxels_within_grid_resolution():
    """Noiseless WM/GM-like voxels off the grid, B1 anywhere in 0.7-1.3.

    T2 and IE land within one grid step. T1 trades off against IE along a flat ridge of
    the match score, so IE's 0.02 quantisation (and B1's 0.007 bins) can move T1 by more
    than its 5 ms step: it is checked to within 6 % instead.
    """
    rng = np.random.default_rng(4)
    n = 150
    t1, t2 = rng.uniform(0.6, 2.0, n), rng.uniform(0.05, 0.15, n)
    ie, b1, pd = rng.uniform(0.8, 0.95, n), rng.uniform(0.7, 1.3, n), rng.uniform(0.5, 1.5, n)
    mags = _magnitudes(t1, t2, pd, ie, b1)
    fit = fit_dictionary(mags, b1, SIEMENS, device="cpu", progress=False)
    assert np.all(np.abs(fit.t2 - t2) <= 0.002)
    assert np.all(np.abs(fit.ie - ie) <= 0.02)
    assert np.all(np.abs(fit.t1 / t1 - 1) < 0.06)
    assert np.median(np.abs(fit.t1 - t1)) < 0.015
    assert np.all(np.abs(fit.pd / pd - 1) < 0.06)

    # The match is at least as good as the nearest grid point (argmax property).
    b1_bin = GRID.b1_centres[np.searchsorted(GRID.b1_edges, b1, side="right") - 1]

    def cosine(a_t1, a_t2, a_ie):
        atoms = _magnitudes(a_t1, a_t2, 1.0, a_ie, b1_bin)
        return (atoms * mags).sum(1) / np.linalg.norm(atoms, axis=1)

    def snap(grid_values, v):  # float64 grid value nearest to v (fit values are float32)
        return grid_values[np.abs(grid_values[None, :] - np.asarray(v, np.float64)[:, None]).argmin(1)]

    fitted = cosine(snap(GRID.t1, fit.t1), snap(GRID.t2, fit.t2), snap(GRID.ie, fit.ie))
    nearest = cosine(snap(GRID.t1, t1), snap(GRID.t2, t2), snap(GRID.ie, ie))
    assert np.all(fitted >= nearest * (1 - 1e-12))


def test_coarse_to_fine_agrees_with_exhaustive_search():
    grid = _small_grid()
    rng = np.random.default_rng(5)
    n = 200
    t1 = grid.t1[rng.integers(10, 100, n)]
    t2 = grid.t2[rng.integers(3, 40, n)]
    ie = grid.ie[rng.integers(0, 9, n)]
    b1 = np.where(rng.random(n) < 0.5, 0.8, 1.1) + 0.001
    mags = _magnitudes(t1, t2, 1.0, ie, b1)
    brute = fit_dictionary(mags, b1, SIEMENS, device="cpu", grid=grid, progress=False)
    fast = fit_dictionary(mags, b1, SIEMENS, device="cpu", grid=grid, search="coarse-to-fine",
                          progress=False)
    assert brute.info["search"] == "brute" and fast.info["search"] == "coarse-to-fine"
    for name in ("t1", "t2", "ie"):
        np.testing.assert_array_equal(getattr(brute, name), getattr(fast, name))
    np.testing.assert_array_equal(brute.t1, t1.astype(np.float32))


def test_noisy_fit_is_close_to_truth_for_white_matter():
    rng = np.random.default_rng(6)
    n = 300
    mags = _magnitudes(np.full(n, 0.85), 0.075, 0.69, 0.88, 1.0)
    sigma = mags[0, 4] / 60.0  # SNR 60 (contrast 5 of WM / sigma)
    noisy = np.abs(mags + sigma * rng.standard_normal(mags.shape)
                   + 1j * sigma * rng.standard_normal(mags.shape))
    fit = fit_dictionary(noisy, np.ones(n), SIEMENS, device="cpu", progress=False)
    assert abs(np.median(fit.t1) / 0.85 - 1) < 0.03
    assert abs(np.median(fit.t2) / 0.075 - 1) < 0.03
    assert abs(np.median(fit.ie) - 0.88) < 0.02
    assert abs(np.median(fit.pd) / 0.69 - 1) < 0.03


def test_info_and_missing_b1(caplog):
    mags = _magnitudes([0.85, 1.35], [0.075, 0.095], 1.0, 0.9, 1.0)
    with caplog.at_level(logging.WARNING, logger="qalas_bids"):
        fit = fit_dictionary(mags, None, SIEMENS, device="cpu", progress=False)
    assert "no b1 map" in caplog.text.lower()
    assert any("B1 = 1" in w for w in fit.info["warnings"])
    assert fit.t1 == pytest.approx([0.85, 1.35], abs=0.01)
    info = fit.info
    assert info["method"] == "dictionary" and info["device"] == "cpu"
    assert info["n_atoms"] == GRID.n_valid_atoms()
    assert {"build", "match"} <= set(info["wall_time_s"])
    assert info["grid"]["name"] == "paper"


def test_b1_outside_range_is_clipped_with_warning(caplog):
    mags = _magnitudes([0.85], [0.075], 1.0, 0.9, 1.35)
    with caplog.at_level(logging.WARNING, logger="qalas_bids"):
        fit = fit_dictionary(mags, [1.6], SIEMENS, device="cpu", progress=False)
    assert "outside" in caplog.text and fit.info["b1_clipped_voxels"] == 1
    assert np.isfinite(fit.t1).all()


def test_zero_voxel_gives_zero_pd():
    mags = np.zeros((1, 5))
    fit = fit_dictionary(mags, [1.0], SIEMENS, device="cpu", progress=False)
    assert fit.pd[0] == 0 and np.isfinite(fit.t1).all()


@pytest.mark.parametrize("mags, b1, message", [
    (np.ones((3, 4)), np.ones(3), "shape"),
    (np.full((2, 5), np.nan), np.ones(2), "NaN"),
    (-np.ones((2, 5)), np.ones(2), "negative"),
    (np.ones((2, 5)), np.ones(3), "B1 has 3 voxels"),
    (np.ones((2, 5)), np.array([1.0, -1.0]), "non-positive"),
])
def test_bad_input_raises(mags, b1, message):
    with pytest.raises(QalasInputError, match=message):
        fit_dictionary(mags, b1, SIEMENS, device="cpu", progress=False)


def test_unknown_search_or_grid_raises():
    with pytest.raises(QalasInputError, match="search"):
        fit_dictionary(np.ones((1, 5)), [1.0], SIEMENS, device="cpu", search="random")
    with pytest.raises(QalasInputError, match="grid"):
        fit_dictionary(np.ones((1, 5)), [1.0], SIEMENS, device="cpu", grid="tiny")
