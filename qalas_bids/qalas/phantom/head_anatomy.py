"""Tissues around the digital brain: scalp, fat, skull, sinuses and eyes (1 mm geometry).

Built on the 1 mm grid of the brain fractions so that :func:`.phantom.make_digital_brain`
can resample everything to the requested resolution with the same partial-volume rule.
Distances are in mm; geometry in the MNI152 (world) coordinates of the template:

* **CSF rim**: 2.5 mm of CSF around the template brain (subarachnoid space and dura);
* **skull**: bone with no signal, from the CSF rim to the scalp (about 6-7 mm);
* **scalp**: the outer 6 mm of the head, skin/muscle (outer 3 mm) over subcutaneous fat;
* **eyes**: two vitreous spheres (radius 12 mm, centres (+-32, 48, -42) mm) in 4 mm of
  orbital fat; **sinuses**: air (no signal), frontal (in the bone in front of the frontal
  lobes) and maxillary (below the eyes);
* the head outline is the union of the brain dilated by 15 mm, the orbits and the
  maxillary sinuses, smoothed (Gaussian, 3 mm) so the face has no corners.

Each class is a hard label on the 1 mm grid whose indicator is smoothed with a 0.5 mm
Gaussian: the classes still add up to one per voxel and every boundary has partial
volume, also at 1 mm. Where the template brain fraction is ``b``, these classes fill the
remaining ``1 - b``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

#: 3 T values (seconds; PD relative to water; IE of the adiabatic inversion).
HEAD_TISSUE_PARAMETERS: dict[str, dict[str, float]] = {
    "Scalp": {"t1": 1.42, "t2": 0.032, "pd": 0.70, "ie": 0.85},   # skin and muscle
    "Fat": {"t1": 0.38, "t2": 0.10, "pd": 0.90, "ie": 0.90},      # subcutaneous, orbital
    "Vitreous": {"t1": 4.0, "t2": 1.2, "pd": 1.00, "ie": 0.98},   # vitreous humour
}
#: Classes without signal (fractions kept for the labels only).
NO_SIGNAL = ("Bone", "Air")
#: Label values of the head classes (the brain uses 1 CSF, 2 GM, 3 WM).
HEAD_LABELS: dict[str, int] = {"Scalp": 4, "Fat": 5, "Vitreous": 6, "Bone": 7, "Air": 8}

EYE_CENTRES_MM = ((-32.0, 48.0, -42.0), (32.0, 48.0, -42.0))
EYE_RADIUS_MM = 12.0
ORBITAL_FAT_MM = 4.0
#: (centre, semi-axes) of air-filled sinuses, mm.
SINUSES_MM = (((0.0, 75.0, 6.0), (12.0, 3.5, 9.0)),
              ((-24.0, 42.0, -68.0), (10.0, 12.0, 13.0)), ((24.0, 42.0, -68.0), (10.0, 12.0, 13.0)))
CSF_RIM_MM, HEAD_MARGIN_MM, SKIN_MM, SCALP_MM = 2.5, 15.0, 3.0, 6.0
#: Tissue in front of the orbital fat (eyelid) and around the maxillary sinuses (mm).
EYELID_MM, MAXILLARY_COVER_MM = 4.0, 10.0
#: World margin (mm) the 1 mm grid needs around the brain to hold the head.
GRID_MARGIN_MM = 26.0


def _ellipsoid_distance(world: np.ndarray, centre, axes) -> np.ndarray:
    """Approximate distance (mm) to an ellipsoid surface; negative inside."""
    r = np.sqrt((((world - np.asarray(centre)) / np.asarray(axes)) ** 2).sum(-1))
    return (r - 1.0) * float(np.min(axes))


def head_fractions(brain_total: np.ndarray, world: np.ndarray) -> dict[str, np.ndarray]:
    """Fractions of Scalp, Fat, Vitreous, Bone, Air and CSF (rim) on a 1 mm grid.

    ``brain_total`` is the template brain fraction (0-1) and ``world`` the ``(X, Y, Z, 3)``
    mm coordinates of the same grid. The returned fractions fill ``1 - brain_total``
    (outside the head that remainder is background and not returned).
    """
    brain = brain_total >= 0.5
    d_brain = ndimage.distance_transform_edt(~brain)
    d_eyes = np.min([_ellipsoid_distance(world, c, (EYE_RADIUS_MM,) * 3) for c in EYE_CENTRES_MM], axis=0)
    d_sinus = np.min([_ellipsoid_distance(world, c, a) for c, a in SINUSES_MM], axis=0)
    d_maxillary = np.min([_ellipsoid_distance(world, c, a) for c, a in SINUSES_MM[1:]], axis=0)
    head = ((d_brain <= HEAD_MARGIN_MM) | (d_eyes <= ORBITAL_FAT_MM + EYELID_MM)
            | (d_maxillary <= MAXILLARY_COVER_MM))
    head = ndimage.gaussian_filter(head.astype(np.float32), 3.0) >= 0.5
    head = ndimage.binary_fill_holes(head | brain)
    d_out = ndimage.distance_transform_edt(head)

    label = np.full(brain.shape, -1, dtype=np.int8)  # -1 background
    order = ["Vitreous", "Scalp", "Air", "Fat", "CSF", "Bone"]
    rules = [d_eyes <= 0, d_out <= SKIN_MM, d_sinus <= 0,
             (d_out <= SCALP_MM) | (d_eyes <= ORBITAL_FAT_MM), d_brain <= CSF_RIM_MM, np.ones_like(head)]
    for index in range(len(order) - 1, -1, -1):  # first rule wins: paint in reverse
        label[head & rules[index]] = index
    remainder = 1.0 - np.clip(brain_total, 0.0, 1.0)
    return {name: ndimage.gaussian_filter((label == i).astype(np.float32), 0.5).astype(np.float64) * remainder
            for i, name in enumerate(order)}
