"""Tissue classes (CSF, GM, WM) derived from the fitted quantitative maps themselves.

The rule (documented in the report, the group data dictionary and the tests):

1. **CSF** = brain-mask voxels with ``T1 > csf_t1`` (default 2.5 s). At 3 T pure CSF has
   T1 ≈ 4.2 s and the longest-T1 parenchyma (GM) ≈ 1.4–1.6 s, so 2.5 s sits in the gap and
   only strongly CSF-contaminated partial-volume voxels cross it.
2. The remaining brain voxels with ``0 < T1 <= csf_t1`` are split into **WM** (shorter T1)
   and **GM** (longer T1) at the midpoint between the two most prominent peaks of their
   T1 density (Gaussian kernel, bandwidth 0.05 s). The peaks are the pure-tissue T1s; with
   partial volume mixing T1 roughly linearly, the midpoint is the 50 % WM/GM voxel, so a
   voxel goes to the tissue that fills most of it. This adapts to field strength, age
   (neonatal WM has a long T1) and fit bias. A Gaussian mixture was tried and rejected:
   the partial-volume continuum widens the GM component and pulls its decision point to
   ≈1.25 s (86 % agreement with the digital brain's labels, against 97 % for the peaks).
3. ``method="thresholds"`` replaces step 2 by a fixed split at ``wm_gm_t1`` (default
   1.1 s, half-way between typical adult WM and GM at 3 T). It is used automatically when
   the density has no two separate peaks (very noisy maps, fewer than 50 voxels).

Voxels outside the mask or with ``T1 <= 0`` (failed fits) are background (label 0).
Labels follow the digital-brain convention: 0 background, 1 CSF, 2 GM, 3 WM.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage, signal, stats

from ..errors import QalasInputError

LABELS = {"CSF": 1, "GM": 2, "WM": 3}
#: Default T1 threshold (s) above which a brain voxel is CSF.
CSF_T1_THRESHOLD = 2.5
#: Default fixed WM/GM split (s) used by ``method="thresholds"`` and as fallback.
WM_GM_T1_THRESHOLD = 1.1
#: Kernel bandwidth (s) of the T1 density whose peaks give WM and GM.
PEAK_BANDWIDTH_S = 0.05

RULE_DESCRIPTION = (
    "Tissue classes from the fitted T1 map: CSF = brain voxels with T1 > {csf:g} s; the "
    "remaining voxels (0 < T1 <= {csf:g} s) split into WM and GM by {split}."
)


@dataclass
class TissueClasses:
    """Result of :func:`classify_tissues`: a label volume and how it was obtained."""

    labels: np.ndarray  # int8, 0 background, 1 CSF, 2 GM, 3 WM
    method: str
    wm_gm_threshold: float  # s, T1 where the WM/GM decision flips
    csf_threshold: float  # s
    description: str
    info: dict[str, Any] = field(default_factory=dict)

    def mask(self, name: str) -> np.ndarray:
        """Boolean mask of tissue ``name`` (``CSF``, ``GM`` or ``WM``)."""
        try:
            return self.labels == LABELS[name]
        except KeyError:
            raise ValueError(f"unknown tissue {name!r}; expected one of {sorted(LABELS)}") from None


def _density(values: np.ndarray, grid: np.ndarray, bandwidth: float, seed: int = 0) -> np.ndarray:
    """Gaussian kernel density of ``values`` on ``grid`` (``bandwidth`` in the values' units)."""
    sample = np.asarray(values, dtype=np.float64)
    if sample.size > 20_000:  # a 1D density: a random subset is plenty
        sample = np.random.default_rng(seed).choice(sample, 20_000, replace=False)
    if sample.size < 2 or np.ptp(sample) == 0:
        return np.exp(-0.5 * ((grid - sample.mean()) / bandwidth) ** 2)
    kde = stats.gaussian_kde(sample, bw_method=bandwidth / sample.std())
    return kde(grid)


def density_mode(values: np.ndarray, rel_bandwidth: float = 0.01, seed: int = 0) -> float:
    """Most probable value (peak of a kernel density, bandwidth ``rel_bandwidth`` x median).

    Robust to the one-sided tail that partial volume adds to a tissue's T1 distribution,
    unlike the mean or median.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("density_mode of an empty array")
    bandwidth = max(rel_bandwidth * float(np.median(np.abs(values))), 1e-6)
    grid = np.linspace(values.min(), values.max(), 1024)
    return float(grid[int(np.argmax(_density(values, grid, bandwidth, seed)))])


def _peak_split(t1_values: np.ndarray, csf_t1: float, seed: int = 0) -> tuple[float, dict[str, Any]] | None:
    """Midpoint (s) between the WM and GM peaks of the T1 density, or None without two peaks."""
    if t1_values.size < 50:
        return None
    grid = np.linspace(0.2, csf_t1, 1024)
    density = _density(t1_values, grid, PEAK_BANDWIDTH_S, seed)
    peaks, props = signal.find_peaks(density, prominence=0.02 * density.max())
    if peaks.size < 2:
        return None
    top = np.sort(peaks[np.argsort(props["prominences"])[-2:]])
    wm_peak, gm_peak = (float(grid[i]) for i in top)
    if gm_peak - wm_peak < 0.1:
        return None
    return (wm_peak + gm_peak) / 2.0, {"wm_peak_s": wm_peak, "gm_peak_s": gm_peak}


def classify_tissues(
    t1: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    method: str = "peaks",
    csf_t1: float = CSF_T1_THRESHOLD,
    wm_gm_t1: float = WM_GM_T1_THRESHOLD,
    seed: int = 0,
) -> TissueClasses:
    """Label CSF/GM/WM from a T1 map in seconds (see the module docstring for the rule).

    Parameters
    ----------
    t1 : T1 map (s), any shape.
    mask : brain mask of the same shape (default: ``t1 > 0``).
    method : ``"peaks"`` (default) or ``"thresholds"``.
    csf_t1, wm_gm_t1 : thresholds in seconds.
    """
    t1 = np.asarray(t1, dtype=np.float64)
    if method not in ("peaks", "thresholds"):
        raise ValueError(f"method must be 'peaks' or 'thresholds', got {method!r}")
    if mask is None:
        mask = t1 > 0
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != t1.shape:
        raise QalasInputError(
            f"tissue classification: mask shape {mask.shape} differs from T1 shape {t1.shape}; "
            "pass the brain mask written next to the T1 map."
        )
    if not np.isfinite(t1[mask]).all():
        raise QalasInputError("tissue classification: the T1 map has NaN/Inf inside the mask.")
    valid = mask & (t1 > 0)
    if not valid.any():
        raise QalasInputError("tissue classification: no voxel with T1 > 0 inside the mask.")

    labels = np.zeros(t1.shape, dtype=np.int8)
    csf = valid & (t1 > csf_t1)
    labels[csf] = LABELS["CSF"]
    parenchyma = valid & ~csf
    used, info, threshold = "thresholds", {}, float(wm_gm_t1)
    if method == "peaks":
        split = _peak_split(t1[parenchyma], csf_t1, seed=seed)
        if split is not None:
            threshold, info = split
            used = "peaks"
        else:
            info = {"fallback": "no separate WM and GM peaks in the T1 density; fixed threshold used"}
    labels[parenchyma & (t1 <= threshold)] = LABELS["WM"]
    labels[parenchyma & (t1 > threshold)] = LABELS["GM"]
    split_text = (
        f"the midpoint between the WM and GM peaks of the T1 density ({threshold:.3f} s)"
        if used == "peaks"
        else f"a fixed threshold at {threshold:.3f} s"
    )
    return TissueClasses(
        labels=labels,
        method=used,
        wm_gm_threshold=threshold,
        csf_threshold=float(csf_t1),
        description=RULE_DESCRIPTION.format(csf=csf_t1, split=split_text),
        info=info,
    )


def core_mask(tissue_mask: np.ndarray, min_voxels: int = 20) -> np.ndarray:
    """Tissue voxels whose 6 face neighbours are the same tissue (fewer partial volumes).

    Falls back to the mask itself when erosion leaves fewer than ``min_voxels`` voxels.
    """
    tissue_mask = np.asarray(tissue_mask, dtype=bool)
    if tissue_mask.ndim != 3:
        return tissue_mask
    eroded = ndimage.binary_erosion(tissue_mask)
    return eroded if eroded.sum() >= min_voxels else tissue_mask


#: Voxels whose relative fit residual exceeds this are not used for tissue values (at
#: SNR >= 30 well-fitted brain voxels stay below 0.05; eyes, vessels and skull exceed it).
RESIDUAL_MAX = 0.1
#: Voxels whose T1 Cramér-Rao SD exceeds this fraction of T1 carry no T1 information.
REL_CRLB_MAX = 1.0


def reliable_voxels(mask: np.ndarray, t1: np.ndarray, t2: np.ndarray, ie: np.ndarray | None = None,
                    crlb_t1: np.ndarray | None = None,
                    residual: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Voxels of ``mask`` usable for tissue values, the censored ones, and counts.

    Returns ``(reliable, censored_high, counts)``. Not reliable: T1 at a range bound or IE
    at its lower end (:func:`.bounds.at_bound`; T2 at its bound is common in CSF, whose T2
    QALAS barely determines, and says nothing against the voxel's T1), relative residual above
    :data:`RESIDUAL_MAX`, relative T1 CRLB above :data:`REL_CRLB_MAX`. Of those,
    ``censored_high`` are the well-fitted voxels (residual below the limit) whose T1 sits
    at the upper bound or carries no information beyond "long": a median counts them as
    values above every other one (a censored observation) instead of dropping them, which
    would bias a long-T1 tissue (CSF) low. A voxel failing several tests is counted under
    each.
    """
    from ..physics.bounds import T1_RANGE_S, at_bound

    mask = np.asarray(mask, dtype=bool)
    t1 = np.asarray(t1, dtype=np.float64)
    bounds = at_bound(t1, t2, ie)
    tests = {"AtBound": (bounds["T1"] | bounds.get("IE", False)) & mask}
    fitted = mask
    if residual is not None:
        tests["HighResidual"] = mask & (np.asarray(residual) > RESIDUAL_MAX)
        fitted = mask & ~tests["HighResidual"]
    uninformative = bounds["T1"] & (t1 >= 0.5 * T1_RANGE_S[1])
    if crlb_t1 is not None:
        rel = np.asarray(crlb_t1, dtype=np.float64) / np.maximum(t1, 1e-9)
        tests["HighRelativeCRLB"] = mask & (rel > REL_CRLB_MAX)
        uninformative = uninformative | tests["HighRelativeCRLB"]
    keep = mask & ~np.logical_or.reduce(list(tests.values()))
    censored = fitted & uninformative & (t1 > CSF_T1_THRESHOLD)
    counts = {"Voxels": int(mask.sum()), "Used": int(keep.sum()), "CensoredHigh": int(censored.sum())}
    counts.update({k: int(v.sum()) for k, v in tests.items()})
    return keep, censored, counts


def robust_tissue_value(values: np.ndarray, tissue_mask: np.ndarray, reliable: np.ndarray | None = None,
                        estimator: str = "mode", censored_high: np.ndarray | None = None) -> float | None:
    """Robust value of ``values`` in the eroded tissue mask (restricted to ``reliable``).

    ``estimator="mode"`` (:func:`density_mode`: robust to the one-sided partial-volume tail
    of WM/GM) or ``"median"`` (for CSF: per-voxel T1 noise is large and right-skewed, so
    the density mode sits below the truth while the median of noise-floor-corrected fits
    stays within a few per cent of it; the median also minimises the summed |Mz| of a nulled tissue). The median
    counts the ``censored_high`` voxels of the eroded mask as larger than every value.
    None if nothing is left.
    """
    core = core_mask(tissue_mask)
    usable = core if reliable is None else core & reliable
    if not usable.any():
        return None
    sample = np.asarray(values, dtype=np.float64)[usable]
    if estimator != "median":
        return density_mode(sample)
    n_high = int((core & censored_high).sum()) if censored_high is not None else 0
    return float(np.median(np.concatenate([sample, np.full(n_high, np.inf)])))
