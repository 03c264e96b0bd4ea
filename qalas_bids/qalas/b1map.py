"""Relative B1+ from a TurboFLASH flip-angle map, brought onto the QALAS grid.

Relative B1 = famp / (10 * nominal flip angle) (Siemens ``tfl_b1map`` stores the measured
flip angle in tenths of a degree). The B1 map has its own, coarser grid and orientation:
it is resampled in world coordinates (both affines, linear interpolation, nilearn), then
clipped to the range the fit supports and masked outside the head (where it is noise).
Unitless throughout. No nipype or pybids here.
"""
from __future__ import annotations

import logging
import warnings

import nibabel as nib
import numpy as np
from nilearn.image import resample_to_img

from .errors import QalasInputError

LOGGER = logging.getLogger("qalas_bids")

#: Range of relative B1 the fit supports (matches the dictionary's B1 bins).
B1_RANGE = (0.65, 1.35)


def relative_b1_from_famp(famp: np.ndarray, flip_angle_deg: float) -> np.ndarray:
    """Relative B1 (unitless, float32) from a TurboFLASH ``famp`` image.

    ``flip_angle_deg`` is the nominal flip angle of the B1 sequence (``FlipAngle`` of the
    famp sidecar, 80 degrees on Siemens by default). Non-finite voxels raise
    :class:`QalasInputError`.
    """
    if not (flip_angle_deg and np.isfinite(flip_angle_deg) and 0 < flip_angle_deg < 180):
        raise QalasInputError(
            f"B1 map nominal flip angle {flip_angle_deg!r} is not a valid angle in degrees; "
            "set it with --b1-flip-angle (Siemens tfl_b1map default: 80)"
        )
    famp = np.asarray(famp, dtype=np.float64)
    if not np.all(np.isfinite(famp)):
        raise QalasInputError("the B1 famp image contains NaN/Inf values: check the conversion")
    return (famp / (10.0 * float(flip_angle_deg))).astype(np.float32)


def resample_b1_to_qalas(b1_img: nib.spatialimages.SpatialImage,
                         qalas_img: nib.spatialimages.SpatialImage,
                         fill_value: float = 0.0) -> nib.Nifti1Image:
    """Resample a 3D B1 image onto the (first 3 dimensions of the) QALAS grid.

    Uses both affines (world coordinates) and linear interpolation
    (:func:`nilearn.image.resample_to_img`). Voxels outside the B1 field of view get
    ``fill_value``.
    """
    if b1_img.ndim == 4 and b1_img.shape[3] == 1:
        b1_img = nib.Nifti1Image(np.asanyarray(b1_img.dataobj)[..., 0], b1_img.affine)
    if b1_img.ndim != 3:
        raise QalasInputError(f"B1 map must be a 3D image, got shape {b1_img.shape}")
    target = nib.Nifti1Image(np.zeros(qalas_img.shape[:3], dtype=np.uint8), qalas_img.affine)
    source = nib.Nifti1Image(np.asarray(b1_img.dataobj, dtype=np.float32), b1_img.affine)
    with warnings.catch_warnings():  # a constant map looks "binary" to nilearn: harmless
        warnings.filterwarnings("ignore", message=".*binary images.*", category=UserWarning)
        out = resample_to_img(source, target, interpolation="linear", fill_value=fill_value,
                              force_resample=True, copy_header=True)
    return nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), qalas_img.affine)


def field_of_view_mask(b1_img: nib.spatialimages.SpatialImage,
                       qalas_img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """Boolean QALAS-grid mask of the voxels covered by the B1 field of view."""
    ones = nib.Nifti1Image(np.ones(b1_img.shape[:3], dtype=np.float32), b1_img.affine)
    return np.asarray(resample_b1_to_qalas(ones, qalas_img).dataobj) > 0.999


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


def b1_in_qalas_space(famp_img: nib.spatialimages.SpatialImage, flip_angle_deg: float,
                      qalas_img: nib.spatialimages.SpatialImage,
                      head_mask: np.ndarray | None = None,
                      relative: bool = False) -> tuple[nib.Nifti1Image, dict]:
    """Full B1 preparation: relative B1 -> QALAS grid -> clip -> mask outside the head.

    ``famp_img`` is a TurboFLASH famp image (``relative=False``) or an already relative B1
    map (``relative=True``, ``flip_angle_deg`` ignored). Returns the image (0 outside the
    head when a mask is given) and a JSON-friendly summary (fraction clipped, coverage).
    Raises :class:`QalasInputError` when the B1 field of view misses most of the head.
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
    if coverage < 0.5:
        raise QalasInputError(
            f"the B1 map covers only {coverage:.0%} of the head on the QALAS grid: the B1 map and "
            "the QALAS images do not overlap (wrong B1 file paired, or broken affines?)"
        )
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
    }
    if coverage < 0.98:
        LOGGER.warning("B1 map covers %.0f%% of the head; B1 = 1 assumed in the rest", 100 * coverage)
    if clipped > 0.05:
        LOGGER.warning("%.0f%% of head voxels had B1 outside %s and were clipped", 100 * clipped, B1_RANGE)
    return nib.Nifti1Image(b1, qalas_img.affine), info
