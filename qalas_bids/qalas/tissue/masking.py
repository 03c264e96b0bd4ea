"""Head mask of a 3D-QALAS acquisition from its five magnitude contrasts.

Method (intensity + morphology, no atlas):

1. ``rms`` = root-mean-square over the five contrasts. Every tissue is bright in at least
   some contrasts (CSF is bright in contrasts 1 and 5 even where contrast 3 crosses zero),
   so the RMS separates tissue from air much better than any single contrast.
2. Background level: Otsu's threshold on ``log(rms)`` splits air from tissue; the voxels
   below it give a robust background estimate (median and MAD of ``rms``). The final
   threshold is ``median_bg + 8 * 1.4826 * MAD_bg`` (far in the tail of the background
   noise distribution), capped at the Otsu threshold so a tissue class is never cut.
   Volumes whose background was zeroed by the scanner work too (threshold > 0).
3. Morphology (scipy.ndimage): opening (removes isolated noise voxels), the 26-connected
   components of at least :data:`MIN_COMPONENT_FRACTION` of the largest (brain and scalp
   are separate where the skull base is out of the field of view), closing, 3D hole filling plus slice-wise hole filling in the
   three orientations (dark structures touching the FOV edge), and a 1-voxel dilation to
   keep partial-volume edge voxels.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import QalasInputError

#: Background threshold = median + BACKGROUND_K * robust std of the background RMS.
BACKGROUND_K = 8.0
#: Components at least this fraction of the largest one are kept: the skull has no
#: signal, so in a slab (or any FOV that cuts the skull base) the scalp and the brain are
#: separate components, and dropping the scalp would put it in the noise background.
MIN_COMPONENT_FRACTION = 0.05
#: Zero voxels kept around the head's bounding box for the closing (2), dilation (1) and
#: hole filling (the background must surround the head), with one to spare.
CROP_MARGIN = 4


def _otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of 1D ``values`` (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(float)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def _fill_holes_slicewise(mask: np.ndarray) -> np.ndarray:
    out = ndimage.binary_fill_holes(mask)
    for axis in range(3):
        moved = np.moveaxis(out, axis, 0)
        filled = np.stack([ndimage.binary_fill_holes(s) for s in moved])
        out = np.moveaxis(filled, 0, axis)
    return out


def head_threshold(rms: np.ndarray) -> float:
    """Intensity threshold separating air from tissue in an RMS image (see module doc)."""
    finite = rms[np.isfinite(rms)]
    positive = finite[finite > 0]
    if positive.size < 10:
        raise QalasInputError("the QALAS images are empty (all zero): cannot compute a head mask")
    log_thr = _otsu_threshold(np.log(positive))
    otsu = float(np.exp(log_thr))
    background = finite[finite <= otsu]
    median = float(np.median(background))
    mad = float(np.median(np.abs(background - median))) * 1.4826
    noise_thr = median + BACKGROUND_K * mad
    return min(max(noise_thr, 0.0), otsu) if noise_thr > 0 else 0.0


def signal_mask(qalas4d: np.ndarray) -> np.ndarray:
    """Voxels whose RMS over the five contrasts is above the background (:func:`head_threshold`):
    tissue with signal, without the air of sinuses and airways that the head mask fills."""
    data = np.asarray(qalas4d)
    rms = np.sqrt(np.einsum("...k,...k->...", data, data, dtype=np.float32, casting="unsafe") / data.shape[-1])
    return rms > head_threshold(rms)


def compute_head_mask(qalas4d: np.ndarray) -> np.ndarray:
    """Boolean head mask ``(X, Y, Z)`` from QALAS magnitudes ``(X, Y, Z, 5)``.

    Keeps CSF (the RMS over the contrasts is used, not one contrast). Raises
    :class:`QalasInputError` for wrong shapes, NaN/Inf values or empty images.
    """
    data = np.asarray(qalas4d)
    if data.ndim != 4 or data.shape[-1] != 5:
        raise QalasInputError(
            f"compute_head_mask expects a 4D array (X, Y, Z, 5) of the five QALAS contrasts, "
            f"got shape {data.shape}")
    if not np.all(np.isfinite(data)):
        raise QalasInputError("the QALAS images contain NaN or Inf values: fix or re-export them")
    rms = np.sqrt(np.einsum("...k,...k->...", data, data, dtype=np.float32, casting="unsafe") / data.shape[-1])
    mask = rms > head_threshold(rms)
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        raise QalasInputError("no head found in the QALAS images (nothing above the background level)")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    mask = np.isin(labels, np.nonzero(sizes >= MIN_COMPONENT_FRACTION * sizes.max())[0])
    # The closing, hole filling and dilation only reach CROP_MARGIN voxels beyond the head,
    # so they run on its bounding box (same result, a fraction of the grid).
    box = bounding_box(mask, CROP_MARGIN)
    head = mask[box]
    head = ndimage.binary_closing(head, iterations=2, border_value=0) | head
    head = _fill_holes_slicewise(head)
    mask[box] = ndimage.binary_dilation(head, iterations=1)
    return mask


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """Slices of the smallest box holding ``mask`` plus ``margin`` voxels (within the grid)."""
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)
