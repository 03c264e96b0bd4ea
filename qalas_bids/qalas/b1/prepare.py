"""Relative B1+ brought onto the QALAS grid, clipped, masked and checked.

The relative B1 comes from :mod:`.kinds` (e.g. TurboFLASH famp / (10 * nominal flip
angle)). The B1 map has its own, coarser grid and orientation:
it is resampled in world coordinates (both affines, linear interpolation, nilearn), then
clipped to the range the fit supports and masked outside the head (where it is noise).
Unitless throughout. No nipype or pybids here.
"""
from __future__ import annotations

import logging

import nibabel as nib
import numpy as np

from ..errors import QalasInputError
from ..spaces.resample import field_of_view_mask, resample_b1_to_qalas
from .kinds import relative_b1_from_famp

LOGGER = logging.getLogger("qalas_bids")

#: Range of relative B1 the fit supports (matches the dictionary's B1 bins).
B1_RANGE = (0.65, 1.35)
#: Relative B1 a transmit field at 3 T plausibly has in a head (before clipping).
B1_PLAUSIBLE = (0.5, 1.5)
#: The head median of a usable map lies in this range (a wrong nominal angle moves it out).
B1_MEDIAN_RANGE = (0.6, 1.4)
#: At least this fraction of the covered head must lie in :data:`B1_PLAUSIBLE`.
MIN_PLAUSIBLE_FRACTION = 0.9
#: Default minimum fraction of the head the B1 field of view must cover (``--b1-min-coverage``).
DEFAULT_MIN_COVERAGE = 0.95


def clip_b1(b1: np.ndarray, lo: float = B1_RANGE[0], hi: float = B1_RANGE[1]) -> np.ndarray:
    """Clip relative B1 to ``[lo, hi]`` (float32)."""
    return np.clip(np.asarray(b1, dtype=np.float32), lo, hi)


def mask_b1(b1: np.ndarray, head_mask: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Set B1 to ``fill`` outside ``head_mask`` (there it is noise, not a field)."""
    b1 = np.array(b1, dtype=np.float32)
    if b1.shape != head_mask.shape:
        raise QalasInputError(f"B1 shape {b1.shape} does not match the mask shape {head_mask.shape}")
    b1[~head_mask.astype(bool)] = fill
    return b1


def check_b1_plausibility(info: dict, *, min_coverage: float = DEFAULT_MIN_COVERAGE,
                          flip_angle_deg: float | None = None) -> None:
    """Refuse a B1 map that would silently give wrong maps (:class:`QalasInputError`).

    ``info`` is the summary of :func:`b1_in_qalas_space`. Checks, in order: field-of-view
    coverage of the head (``min_coverage``; B1 = 1 would be assumed elsewhere), the head
    median of the unclipped relative B1 (:data:`B1_MEDIAN_RANGE`: an empty famp map or a
    wrong nominal flip angle moves it out; the message names the angle that would give a
    median of 1) and the fraction of head voxels in :data:`B1_PLAUSIBLE`.
    """
    coverage, median = info["FieldOfViewCoverage"], info["MedianUnclippedInHead"]
    if coverage < min_coverage:
        raise QalasInputError(
            f"the B1 map covers only {coverage:.0%} of the head on the QALAS grid (at least "
            f"{min_coverage:.0%} needed): B1 = 1 would be assumed in the rest, biasing T1 and T2 "
            "there by several percent. Use a B1 map that covers the head, lower the threshold "
            "with --b1-min-coverage if the uncovered part does not matter to you, or fit without "
            "the map with --no-b1 (biased everywhere)")
    if median is None or not (B1_MEDIAN_RANGE[0] <= median <= B1_MEDIAN_RANGE[1]):
        hint = ""
        if flip_angle_deg and median and median > 0:
            hint = (f" If the famp sidecar's FlipAngle ({flip_angle_deg:g} deg) is wrong, the "
                    f"nominal angle that gives a median of 1 is about {flip_angle_deg * median:.0f} "
                    "deg: pass it with --b1-flip-angle.")
        raise QalasInputError(
            f"the relative B1 of the B1 map has a median of {median if median is not None else 0:.2f} "
            f"in the head; a usable B1+ map lies around 1 (between {B1_MEDIAN_RANGE[0]} and "
            f"{B1_MEDIAN_RANGE[1]}).{hint} If the map is empty or not a flip-angle map, fix the "
            "B1 data or fit without it (--no-b1)")
    if info["FractionPlausible"] < MIN_PLAUSIBLE_FRACTION:
        raise QalasInputError(
            f"only {info['FractionPlausible']:.0%} of the head has a relative B1 between "
            f"{B1_PLAUSIBLE[0]} and {B1_PLAUSIBLE[1]} (at least {MIN_PLAUSIBLE_FRACTION:.0%} expected): "
            "the B1 map is damaged, misregistered or not a B1 map - check it, or use --no-b1")


def b1_in_qalas_space(famp_img: nib.spatialimages.SpatialImage, flip_angle_deg: float,
                      qalas_img: nib.spatialimages.SpatialImage,
                      head_mask: np.ndarray | None = None,
                      relative: bool = False,
                      min_coverage: float = DEFAULT_MIN_COVERAGE) -> tuple[nib.Nifti1Image, dict]:
    """Full B1 preparation: relative B1 -> QALAS grid -> clip -> mask outside the head.

    ``famp_img`` is a TurboFLASH famp image (``relative=False``) or an already relative B1
    map (``relative=True``, ``flip_angle_deg`` ignored). Returns the image (0 outside the
    head when a mask is given) and a JSON-friendly summary (fraction clipped, coverage).
    Raises :class:`QalasInputError` for an implausible map (:func:`check_b1_plausibility`).
    """
    data = np.asarray(famp_img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if relative:
        if not np.all(np.isfinite(data)):
            raise QalasInputError("the B1 map contains NaN/Inf values: check the conversion")
        rel = data
    else:
        rel = relative_b1_from_famp(data, flip_angle_deg)
    rel_img = nib.Nifti1Image(rel, famp_img.affine)
    resampled = np.asarray(resample_b1_to_qalas(rel_img, qalas_img).dataobj)
    covered = field_of_view_mask(rel_img, qalas_img)
    region = head_mask.astype(bool) if head_mask is not None else np.ones(covered.shape, bool)
    n_region = int(region.sum())
    coverage = float((covered & region).sum() / n_region) if n_region else 0.0
    raw = resampled[covered & region]
    # Outside the B1 field of view assume nominal B1 rather than an extrapolated value.
    resampled = np.where(covered, resampled, 1.0)
    inside = resampled[region]
    clipped = float(np.mean((inside < B1_RANGE[0]) | (inside > B1_RANGE[1]))) if inside.size else 0.0
    b1 = clip_b1(resampled)
    if head_mask is not None:
        b1 = mask_b1(b1, region)
    info = {
        "FieldOfViewCoverage": round(coverage, 4),
        "FractionClipped": round(clipped, 4),
        "ClipRange": list(B1_RANGE),
        "MedianInHead": float(np.median(b1[region])) if n_region else None,
        "MedianUnclippedInHead": float(np.median(raw)) if raw.size else None,
        "FractionPlausible": round(float(np.mean((raw >= B1_PLAUSIBLE[0]) & (raw <= B1_PLAUSIBLE[1]))), 4)
                             if raw.size else 0.0,
    }
    check_b1_plausibility(info, min_coverage=min_coverage, flip_angle_deg=None if relative else flip_angle_deg)
    warnings_ = []
    if coverage < 0.999:
        warnings_.append(f"the B1 map covers {100 * coverage:.1f}% of the head; B1 = 1 was assumed in the rest")
    if clipped > 0.05:
        warnings_.append(f"{100 * clipped:.0f}% of head voxels had B1 outside {list(B1_RANGE)} and were clipped")
    for warning in warnings_:
        LOGGER.warning(warning)
    info["Warnings"] = warnings_
    return nib.Nifti1Image(b1, qalas_img.affine), info
