"""Brain (intracranial) mask from the fitted maps, separated from the rest of the head.

The head mask (:mod:`.masking`) keeps everything with signal plus the enclosed skull and
sinuses: it is what gets fitted. Tissue statistics and synthetic nulls need the brain
alone, without scalp, fat or eyes. QALAS images give a reliable separator: bone has no
signal in any contrast, so between the brain and the scalp there is a shell of voxels
whose fitted PD is at the noise level. Method (no atlas, no download):

1. **Candidates**: head voxels with PD above :data:`PD_FRACTION` x the 90th percentile of
   PD in the head (drops skull, sinuses and air) and T1 above :data:`MIN_T1_S` (drops fat,
   T1 about 0.38 s at 3 T; brain T1 is longer at every age and field strength in use).
2. **Separate**: erode the candidates by :data:`EROSION_MM` (6-connected), which cuts thin
   partial-volume bridges through the skull, and keep the largest connected component.
3. **Restore**: dilate it back by the same distance plus one voxel inside the candidates,
   keep the largest component, fill holes (3D).

Returns the mask and a summary (volumes in ml) for the sidecar and the report.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import QalasInputError

PD_FRACTION = 0.3
MIN_T1_S = 0.45
EROSION_MM = 3.0


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def brain_mask_from_maps(t1: np.ndarray, pd: np.ndarray, head_mask: np.ndarray,
                         voxel_size_mm: float | tuple[float, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """Boolean brain mask (CSF included) inside ``head_mask`` from T1 (s) and PD maps."""
    t1, pd = np.asarray(t1, dtype=np.float64), np.asarray(pd, dtype=np.float64)
    head = np.asarray(head_mask, dtype=bool)
    if not (t1.shape == pd.shape == head.shape):
        raise QalasInputError(f"brain mask: T1 {t1.shape}, PD {pd.shape} and head mask {head.shape} differ")
    if not head.any():
        raise QalasInputError("brain mask: the head mask is empty")
    voxel = float(np.mean(np.atleast_1d(voxel_size_mm)))
    pd_ref = float(np.percentile(pd[head], 90))
    candidates = head & (pd > PD_FRACTION * pd_ref) & (t1 > MIN_T1_S)
    steps = max(1, int(round(EROSION_MM / voxel)))
    core = _largest_component(ndimage.binary_erosion(candidates, iterations=steps))
    if not core.any():  # tiny or very thin data: skip the separation step
        core = _largest_component(candidates)
    brain = ndimage.binary_dilation(core, iterations=steps + 1) & candidates
    brain = ndimage.binary_fill_holes(_largest_component(brain))
    unit = voxel ** 3 / 1000.0
    info = {"Method": "fitted PD above the bone/air level and T1 > %.2f s, eroded %.0f mm, largest "
                      "component, dilated back, holes filled" % (MIN_T1_S, EROSION_MM),
            "BrainVolumeMl": round(float(brain.sum()) * unit, 1),
            "HeadVolumeMl": round(float(head.sum()) * unit, 1)}
    return brain, info
