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
#: Fraction of head voxels filled from neighbours (no B1 solution) above which a map is flagged.
MAX_HOLE_FRACTION = 0.01
#: Relative-B1 change per mm above which a voxel counts as a step.
MAX_GRADIENT_PER_MM = 0.03
#: Fraction of (eroded) head voxels with a step above which a map is flagged.
MAX_STEP_FRACTION = 0.01


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


def structure_stats(b1: np.ndarray, head_mask: np.ndarray, voxel_mm: tuple[float, float, float],
                    filled: np.ndarray | None = None) -> dict[str, float]:
    """Fractions of head voxels that are holes (``filled`` > 0.5) and steps (B1 gradient
    above :data:`MAX_GRADIENT_PER_MM`, on the head eroded by 2 voxels)."""
    head = np.asarray(head_mask, bool)
    n = int(head.sum())
    holes = float(np.mean(np.asarray(filled)[head] > 0.5)) if filled is not None and n else 0.0
    inner = ndimage.binary_erosion(head, iterations=2)
    steps = 0.0
    if inner.any():
        grads = np.gradient(np.asarray(b1, dtype=np.float64), *voxel_mm)
        magnitude = np.sqrt(sum(g * g for g in grads))
        steps = float(np.mean(magnitude[inner] > MAX_GRADIENT_PER_MM))
    return {"HoleFraction": round(holes, 4), "StepFraction": round(steps, 4)}


def structure_warnings(stats: dict[str, float]) -> list[str]:
    """Warnings for the fractions of :func:`structure_stats` above their limits."""
    out = []
    if stats["HoleFraction"] > MAX_HOLE_FRACTION:
        out.append(f"B1 QC: {100 * stats['HoleFraction']:.1f}% of the head had no valid B1 (the map's formula "
                   "has no solution there, e.g. AFI/DAM signal ratio out of range) and was filled from the "
                   "nearest valid voxels; check the B1 images")
    if stats["StepFraction"] > MAX_STEP_FRACTION:
        out.append(f"B1 QC: the B1 field has steps: in {100 * stats['StepFraction']:.1f}% of the head it changes "
                   f"by more than {MAX_GRADIENT_PER_MM:g} per mm (a transmit field is smooth); the map may be "
                   "damaged, wrapped or misregistered - check it")
    return out
