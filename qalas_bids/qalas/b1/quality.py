"""Warnings (not refusals) about a B1+ map on the QALAS grid: large motion, holes, steps.

A transmit field at 3 T is smooth: it changes by well under 1 % per mm inside the head.
:func:`structure_warnings` flags a map with holes (voxels whose B1 formula had no solution,
filled from neighbours) or steps (a sizeable fraction of brain voxels where B1 changes
faster than :data:`MAX_GRADIENT_PER_MM`); :func:`motion_warnings` flags a rigid
registration that moved the map by more than :data:`MAX_MOTION_MM` or
:data:`MAX_ROTATION_DEG`. Refusing a map is the plausibility gate's job
(:func:`qalas_bids.qalas.b1.prepare.check_b1_plausibility`), not this module's.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

#: Registration motion above which the B1 map is flagged (mm at the head centre, degrees).
MAX_MOTION_MM, MAX_ROTATION_DEG = 2.0, 2.0
#: Fraction of the judged brain region filled from neighbours (no B1 solution) above which a map is flagged.
MAX_HOLE_FRACTION = 0.01
#: Relative-B1 change per mm above which a voxel counts as a step.
MAX_GRADIENT_PER_MM = 0.03
#: Fraction of the judged brain region with a step above which a map is flagged.
MAX_STEP_FRACTION = 0.01
#: Gaussian smoothing (sigma, mm) before the B1 gradient is taken.
STEP_SMOOTHING_MM = 2.0


def motion_warnings(motion_mm: float, rotation_deg: float, applied: bool = True) -> list[str]:
    """A warning when the registration moved the B1 map by more than 2 mm or 2 degrees
    (``applied=False``: measured only, the map was placed by its header)."""
    if motion_mm > MAX_MOTION_MM or rotation_deg > MAX_ROTATION_DEG:
        fix = ("check the B1 overlay in the report" if applied else
               "the map was placed by its header (--b1-registration header), so B1 is misplaced: "
               "rerun with --b1-registration rigid")
        return [f"B1 QC: the rigid registration moved the B1 map by {motion_mm:.1f} mm and {rotation_deg:.1f} "
                f"deg relative to its header position (more than {MAX_MOTION_MM:g} mm / {MAX_ROTATION_DEG:g} deg): "
                f"the head moved between the B1 map and QALAS; {fix}"]
    return []


def structure_stats(b1: np.ndarray, region: np.ndarray, voxel_mm: tuple[float, float, float],
                    filled: np.ndarray | None = None) -> dict[str, float]:
    """Fractions of the judged ``region`` (the brain region of the B1 gates) that are holes
    (``filled`` > 0.5) and steps (B1 gradient above :data:`MAX_GRADIENT_PER_MM`).

    Steps are measured on the map smoothed by :data:`STEP_SMOOTHING_MM` (voxel noise of a
    fine, noisy map is no step; a step of 0.2 still reaches 0.04 per mm), 2 voxels inside
    both the region and the map's own data (B1 > 0): the edge of a map that is 0 outside
    its magnitude, or of its field of view, is no step either.
    """
    region = np.asarray(region, bool)
    n = int(region.sum())
    holes = float(np.mean(np.asarray(filled)[region] > 0.5)) if filled is not None and n else 0.0
    b1 = np.asarray(b1, dtype=np.float64)
    support = b1 > 0
    inner = ndimage.binary_erosion(region & support, iterations=2)
    steps = 0.0
    if inner.any():
        sigma = [STEP_SMOOTHING_MM / float(z) for z in voxel_mm]
        weight = ndimage.gaussian_filter(support.astype(np.float64), sigma)
        smooth = ndimage.gaussian_filter(np.where(support, b1, 0.0), sigma) / np.maximum(weight, 1e-6)
        grads = np.gradient(smooth, *voxel_mm)
        magnitude = np.sqrt(sum(g * g for g in grads))
        steps = float(np.mean(magnitude[inner] > MAX_GRADIENT_PER_MM))
    return {"HoleFraction": round(holes, 4), "StepFraction": round(steps, 4)}


def structure_warnings(stats: dict[str, float]) -> list[str]:
    """Warnings for the fractions of :func:`structure_stats` above their limits."""
    out = []
    if stats["HoleFraction"] > MAX_HOLE_FRACTION:
        out.append(f"B1 QC: {100 * stats['HoleFraction']:.1f}% of the brain region had no valid B1 (the map's formula "
                   "has no solution there, e.g. AFI/DAM signal ratio out of range) and was filled from the "
                   "nearest valid voxels; check the B1 images")
    if stats["StepFraction"] > MAX_STEP_FRACTION:
        out.append(f"B1 QC: the B1 field has steps: in {100 * stats['StepFraction']:.1f}% of the brain region it changes "
                   f"by more than {MAX_GRADIENT_PER_MM:g} per mm (a transmit field is smooth); the map may be "
                   "damaged, wrapped or misregistered - check it")
    return out
