"""Test-retest statistics of quantitative maps (numpy + scipy.special only).

- :func:`within_subject_cov`: SD / mean of one subject's repeated values (e.g. the median
  T1 in WM of each run) — the within-subject coefficient of variation, 0 for identical runs;
- :func:`voxelwise_rmse`: RMS voxel difference of two maps on the same grid (callers
  resample by the affines first; no registration is done anywhere);
- :func:`predicted_median_sd`: what noise alone predicts for the run-to-run SD of a
  tissue median, for fixed anatomy (true voxel values) and per-voxel noise SD (e.g. CRLB).
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr


def within_subject_cov(values: np.ndarray) -> float:
    """Within-subject coefficient of variation of repeated measurements ``values (n_runs,)``:
    sample SD (``ddof=1``) over the absolute mean; ``nan`` with fewer than two finite values
    or a zero mean. Unitless (multiply by 100 for %)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < 2:
        return float("nan")
    mean = abs(float(v.mean()))
    if mean == 0:
        return float("nan")
    return float(v.std(ddof=1) / mean)


def voxelwise_rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Root-mean-square of ``a - b`` over ``mask`` (finite voxels only; same units as the
    maps). ``nan`` when no voxel is left. Raises ``ValueError`` on a shape mismatch."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps must share one grid to compare voxels: {a.shape} vs {b.shape}")
    sel = np.isfinite(a) & np.isfinite(b)
    if mask is not None:
        sel &= np.asarray(mask, dtype=bool)
    if not sel.any():
        return float("nan")
    return float(np.sqrt(np.mean((a[sel] - b[sel]) ** 2)))


def predicted_median_sd(true_values: np.ndarray, noise_sd: np.ndarray | float) -> float:
    """Noise-only SD of the median of ``true_values + noise`` (Gaussian, per-voxel SD
    ``noise_sd``), with the true values fixed (same subject, same anatomy).

    Uses the asymptotic (Bahadur) expansion of the sample median: with
    ``p_i = Phi((m - x_i) / s_i)`` and ``f`` the density of the noisy values at their
    median ``m``, ``SD = sqrt(sum p_i (1 - p_i)) / (N f)``. Homogeneous tissue gives the
    classical ``sqrt(pi / 2) * s / sqrt(N)``. Two independent runs then have an expected
    within-subject variance of the median equal to this SD squared.
    """
    x = np.asarray(true_values, dtype=np.float64).ravel()
    s = np.broadcast_to(np.asarray(noise_sd, dtype=np.float64), x.shape).ravel()
    keep = np.isfinite(x) & np.isfinite(s) & (s > 0)
    x, s = x[keep], s[keep]
    if x.size == 0:
        return float("nan")
    lo, hi = float((x - 8 * s).min()), float((x + 8 * s).max())
    for _ in range(80):  # bisection for the median of the noisy-value mixture
        m = 0.5 * (lo + hi)
        if ndtr((m - x) / s).mean() < 0.5:
            lo = m
        else:
            hi = m
    p = ndtr((m - x) / s)
    density = np.mean(np.exp(-0.5 * ((m - x) / s) ** 2) / (np.sqrt(2 * np.pi) * s))
    return float(np.sqrt(np.sum(p * (1 - p))) / (x.size * density))
