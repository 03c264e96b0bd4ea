"""Relative B1+ brought onto the QALAS grid, clipped, masked and checked.

The relative B1 comes from :mod:`.kinds` (e.g. TurboFLASH famp / (10 * nominal flip
angle)). The B1 map has its own, coarser grid and orientation:
it is resampled in world coordinates (both affines, linear interpolation, nilearn), then
clipped to the range the fit supports and masked outside the head (where it is noise).
It is judged (three-band gates, :mod:`..gates`) in the brain region where it has data,
not in scalp or skull where a real map is 0 or noise.
Unitless throughout. No nipype or pybids here.
"""
from __future__ import annotations

import logging
from typing import Collection, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..errors import QalasInputError
from ..gates import Band, apply_gate
from ..spaces.resample import field_of_view_mask, resample_b1_to_qalas
from .kinds import relative_b1_from_famp

LOGGER = logging.getLogger("qalas_bids")

#: Range of relative B1 the fit supports (matches the dictionary's B1 bins).
B1_RANGE = (0.65, 1.35)
#: Relative B1 a transmit field at 3 T plausibly has in a head (before clipping).
B1_PLAUSIBLE = (0.5, 1.5)
#: Default minimum fraction of the brain region the B1 field of view must cover (``--b1-min-coverage``).
DEFAULT_MIN_COVERAGE = 0.95
#: The B1 map is judged in the head mask eroded by this depth (mm): scalp and skull, where a
#: B1 map is legitimately 0 or noise, are about 10-15 mm thick; the rest is the brain.
JUDGE_DEPTH_MM = 12.0
#: Where the B1 map must have data (the ``b1-support`` gate): the head eroded by this depth
#: (mm), the brain's core, which a masked map never leaves empty (its mask edge, blurred by
#: B1 voxels of up to 6 mm, lies within the outer ~5 mm of the brain).
SUPPORT_DEPTH_MM = 20.0
#: A QALAS voxel has B1 data when every B1 voxel its interpolation uses has data (linear
#: resampling of the 0/1 data mask >= this).
SUPPORT_LEVEL = 0.99

#: The gates of a B1 map (``docs/gates.md``): thresholds and why.
SUPPORT_BAND = Band("b1-support", "fraction of the covered brain core where the B1 map has data "
                    "(nonzero, and signal in its magnitude image)", fine=(0.95, 1.0), tolerated=(0.8, 1.0))
MEDIAN_BAND = Band("b1-median", "median relative B1 in the brain region", fine=(0.8, 1.25), tolerated=(0.6, 1.4))
PLAUSIBLE_BAND = Band("b1-plausible", f"fraction of the brain region with relative B1 in {list(B1_PLAUSIBLE)}",
                      fine=(0.95, 1.0), tolerated=(0.8, 1.0))
ROUGHNESS_BAND = Band("b1-roughness", "median relative deviation of the B1 map from its 6 mm local mean "
                      "in the brain region", fine=(0.0, 0.04), tolerated=(0.0, 0.1))
CLIPPED_BAND = Band("b1-clipped", f"fraction of the brain region with B1 outside the fit's range {list(B1_RANGE)} "
                    "(clipped)", fine=(0.0, 0.05), tolerated=(0.0, 1.0))
#: Kept for callers of the old constants.
B1_MEDIAN_RANGE = MEDIAN_BAND.tolerated
MIN_PLAUSIBLE_FRACTION = PLAUSIBLE_BAND.tolerated[0]


def coverage_band(min_coverage: float = DEFAULT_MIN_COVERAGE) -> Band:
    """Field-of-view coverage of the brain region: refused below ``min_coverage``, warned below 99.9 %."""
    return Band("b1-coverage", "fraction of the brain region inside the B1 field of view",
                fine=(max(0.999, min_coverage), 1.0), tolerated=(min_coverage, 1.0))


def judged_region(head_mask: np.ndarray, zooms: Sequence[float], depth_mm: float = JUDGE_DEPTH_MM) -> np.ndarray:
    """The head mask eroded by ``depth_mm`` (the brain, without scalp and skull).

    The field-of-view border does not erode (a slab stays a slab); a mask too small to
    survive the erosion is returned as it is.
    """
    return eroded_regions(head_mask, zooms, (depth_mm,))[0]


def eroded_regions(head_mask: np.ndarray, zooms: Sequence[float], depths_mm: Sequence[float]) -> list[np.ndarray]:
    """:func:`judged_region` for several depths (mm, increasing), eroding once; a region
    too small to count (< 5 % of the head) is replaced by the previous depth's (or the head)."""
    head = np.asarray(head_mask, bool)
    if not head.any():
        return [head for _ in depths_mm]
    box = tuple(slice(max(int(i.min()) - 1, 0), int(i.max()) + 2) for i in np.nonzero(head))
    inner = head[box]
    out, done = [], 0
    for depth in depths_mm:
        steps = [max(int(round(depth / float(z))), 0) for z in zooms[:3]]
        for step in range(done, max(steps)):  # erode each axis by its own number of voxels
            structure = np.zeros((3, 3, 3), bool)
            structure[1, 1, 1] = True
            for axis, n in enumerate(steps):
                if step < n:
                    for offset in (0, 2):
                        index = [1, 1, 1]
                        index[axis] = offset
                        structure[tuple(index)] = True
            inner = ndimage.binary_erosion(inner, structure, border_value=1)
        done = max(done, max(steps))
        region = np.zeros_like(head)
        region[box] = inner
        out.append(region if region.sum() >= 0.05 * head.sum() else (out[-1] if out else head))
    return out


#: Smoothing (mm, Gaussian sigma) of the local mean a B1 map is compared with (``b1-roughness``).
ROUGHNESS_SMOOTHING_MM = 6.0


def roughness_map(values: np.ndarray, support: np.ndarray, zooms: Sequence[float],
                  sigma_mm: float = ROUGHNESS_SMOOTHING_MM) -> np.ndarray:
    """``|B1 - local mean| / local mean`` on the map's own grid (0 where it has no data).

    A transmit field varies over centimetres; an anatomical image (or a map with edges and
    holes) differs from its ``sigma_mm`` local mean by tissue contrast. The local mean is a
    normalised convolution over ``support`` (the mask edge does not count).
    """
    weight = support.astype(np.float32)
    sigma = [sigma_mm / max(float(z), 1e-3) for z in zooms[:3]]
    num = ndimage.gaussian_filter(np.where(support, values, 0).astype(np.float32), sigma, mode="constant")
    den = ndimage.gaussian_filter(weight, sigma, mode="constant")
    local = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-3)
    out = np.divide(np.abs(values - local), np.abs(local), out=np.zeros_like(num), where=np.abs(local) > 1e-6)
    return np.where(support, out, 0.0).astype(np.float32)


def data_support(values: np.ndarray, magnitude: np.ndarray | None = None) -> np.ndarray:
    """Voxels of a B1 map that carry data: nonzero and, with a magnitude image, above its
    noise level (:func:`~qalas_bids.qalas.tissue.masking.head_threshold`)."""
    support = values != 0
    if magnitude is not None:
        from ..tissue.masking import head_threshold

        mag = np.asarray(magnitude, dtype=np.float32)
        if mag.shape == support.shape and np.count_nonzero(mag) >= 10:
            support &= mag > head_threshold(mag)
    return support


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
                          flip_angle_deg: float | None = None,
                          relaxed: Collection[str] = ()) -> tuple[dict, list[str]]:
    """Judge a B1 map's summary with its gates (``docs/gates.md``); refuse only on evidence.

    ``info`` is the summary of :func:`b1_in_qalas_space` (figures in the brain region, see
    :func:`judged_region`). Gates, in order: field-of-view coverage of the brain region
    (``min_coverage``; B1 = 1 would be assumed elsewhere), the median relative B1 (a wrong
    nominal flip angle or an empty map moves it out; the message names the angle that would
    give 1), the fraction of the region where the map has data, the fraction with a
    plausible B1, the fraction clipped (warning only). A refusal raises
    :class:`QalasInputError` naming ``--relax-gate <gate>`` (or ``--b1-min-coverage``)
    unless the gate is in ``relaxed``. Returns ``({gate: record}, warnings)``.
    """
    coverage, median = info["FieldOfViewCoverage"], info["MedianUnclippedInHead"]
    hint = ""
    if flip_angle_deg and median and median > 0:
        hint = (f" If the famp sidecar's FlipAngle ({flip_angle_deg:g} deg) is wrong, the nominal "
                f"angle that gives a median of 1 is about {flip_angle_deg * median:.0f} deg: pass it "
                "with --b1-flip-angle.")
    checks = [
        (coverage_band(min_coverage), coverage,
         f"the B1 map covers only {coverage:.0%} of the head's brain region on the QALAS grid (at least "
         f"{min_coverage:.0%} needed): B1 = 1 would be assumed in the rest, biasing T1 and T2 there by "
         "several percent. Use a B1 map that covers the brain, or lower the threshold with "
         "--b1-min-coverage if the uncovered part does not matter to you"),
        (MEDIAN_BAND, median,
         f"the relative B1 of the B1 map has a median of {median or 0:.2f} in the head's brain region; "
         f"a B1+ map at 3 T lies around 1 (between {MEDIAN_BAND.tolerated[0]} and "
         f"{MEDIAN_BAND.tolerated[1]}).{hint} If the map is empty or not a flip-angle map, fix the B1 "
         "data (or fit without it: --no-b1)"),
        (SUPPORT_BAND, info["FractionWithData"],
         f"the B1 map has data (nonzero, above its magnitude's noise) in only {info['FractionWithData']:.0%} "
         f"of the brain's core it covers (the head mask eroded by {SUPPORT_DEPTH_MM:g} mm): it is masked "
         "too tightly, damaged or misregistered - check it"),
        (PLAUSIBLE_BAND, info["FractionPlausible"],
         f"only {info['FractionPlausible']:.0%} of the brain region has a relative B1 between "
         f"{B1_PLAUSIBLE[0]} and {B1_PLAUSIBLE[1]} (at least {PLAUSIBLE_BAND.tolerated[0]:.0%} expected): "
         "the B1 map is damaged, misregistered or not a B1 map - check it"),
        (ROUGHNESS_BAND, info["Roughness"],
         f"the B1 map deviates from its own {ROUGHNESS_SMOOTHING_MM:g} mm local mean by {info['Roughness'] or 0:.0%} "
         "(median in the brain region): a transmit field varies over centimetres, this map has the edges "
         "of an anatomical image (or heavy noise) - check that it is a B1 map"),
        (CLIPPED_BAND, info["FractionClipped"], ""),
    ]
    records, warnings_ = {}, []
    for band, value, refusal in checks:
        record, warning = apply_gate(band, value, refusal, relaxed=relaxed)
        records[band.gate] = record
        if warning:
            warnings_.append(warning)
    return records, warnings_


def supported_on_grid(b1_img: nib.spatialimages.SpatialImage,
                      magnitude_img: nib.spatialimages.SpatialImage | None,
                      qalas_img: nib.spatialimages.SpatialImage) -> tuple[np.ndarray, np.ndarray]:
    """Where a B1 map has data (:func:`data_support`): on its own grid, and on the QALAS grid
    (every B1 voxel the interpolation uses has data)."""
    magnitude = _squeeze(magnitude_img) if magnitude_img is not None else None
    support = data_support(_squeeze(b1_img), magnitude)
    support_img = nib.Nifti1Image(support.astype(np.float32), b1_img.affine)
    return support, np.asarray(resample_b1_to_qalas(support_img, qalas_img).dataobj) >= SUPPORT_LEVEL


def b1_in_qalas_space(*args, **kwargs) -> tuple[nib.Nifti1Image, dict]:
    """:func:`judged_b1_in_qalas_space` without the judged mask: the image and its summary."""
    img, info, _ = judged_b1_in_qalas_space(*args, **kwargs)
    return img, info


def judged_b1_in_qalas_space(famp_img: nib.spatialimages.SpatialImage, flip_angle_deg: float,
                             qalas_img: nib.spatialimages.SpatialImage,
                             head_mask: np.ndarray | None = None,
                             relative: bool = False,
                             min_coverage: float = DEFAULT_MIN_COVERAGE, *,
                             magnitude_img: nib.spatialimages.SpatialImage | None = None,
                             signal: np.ndarray | None = None,
                             relaxed: Collection[str] = ()) -> tuple[nib.Nifti1Image, dict, np.ndarray]:
    """Full B1 preparation: relative B1 -> QALAS grid -> clip -> mask outside the head.

    ``famp_img`` is a TurboFLASH famp image (``relative=False``) or an already relative B1
    map (``relative=True``, ``flip_angle_deg`` ignored); ``magnitude_img`` the B1 map's own
    magnitude (TurboFLASH anat image; optional) on the same grid; ``signal`` the QALAS voxels
    with tissue signal (:func:`~qalas_bids.qalas.tissue.masking.signal_mask`; optional: the air
    of sinuses is then not judged). The map is judged where it means something: in the brain
    region (:func:`judged_region`) where it has data (:func:`data_support`), not in scalp or skull. Returns the image (0 outside the head when
    a mask is given), a JSON-friendly summary (figures, gate records ``Gates``, warnings) and
    the judged voxels (bool, QALAS grid: brain region, in the field of view, with data and signal).
    Raises :class:`QalasInputError` for an implausible map (:func:`check_b1_plausibility`).
    """
    data = _squeeze(famp_img)
    if relative:
        if not np.all(np.isfinite(data)):
            raise QalasInputError("the B1 map contains NaN/Inf values: check the conversion")
        rel = data
    else:
        rel = relative_b1_from_famp(data, flip_angle_deg)
    rel_img = nib.Nifti1Image(rel, famp_img.affine)
    resampled = np.asarray(resample_b1_to_qalas(rel_img, qalas_img).dataobj)
    covered = field_of_view_mask(rel_img, qalas_img)
    support, supported = supported_on_grid(famp_img, magnitude_img, qalas_img)
    rough_img = nib.Nifti1Image(roughness_map(rel, support, famp_img.header.get_zooms()), famp_img.affine)
    rough = np.asarray(resample_b1_to_qalas(rough_img, qalas_img).dataobj)
    head = head_mask.astype(bool) if head_mask is not None else np.ones(covered.shape, bool)
    zooms = qalas_img.header.get_zooms()[:3]
    region, core = eroded_regions(head, zooms, (JUDGE_DEPTH_MM, SUPPORT_DEPTH_MM))
    core = covered & core & (signal if signal is not None else True)
    n_region, n_head = int(region.sum()), int(head.sum())
    in_fov = covered & region
    judged = in_fov & supported & (signal if signal is not None else True)
    coverage = float(in_fov.sum() / n_region) if n_region else 0.0
    raw = resampled[judged] if judged.any() else resampled[in_fov]  # an empty map: all of it
    # Outside the B1 field of view assume nominal B1 rather than an extrapolated value.
    resampled = np.where(covered, resampled, 1.0)
    b1 = clip_b1(resampled)
    if head_mask is not None:
        b1 = mask_b1(b1, head)
    info = {
        "JudgedRegion": f"head mask eroded by {JUDGE_DEPTH_MM:g} mm, where the B1 map has data",
        "JudgedVoxels": int(judged.sum()),
        "FieldOfViewCoverage": round(coverage, 4),
        "HeadCoverage": round(float((covered & head).sum() / n_head), 4) if n_head else 0.0,
        "FractionWithData": round(float((core & supported).sum() / core.sum()), 4) if core.any() else 0.0,
        "FractionClipped": round(_fraction(raw, lambda v: (v < B1_RANGE[0]) | (v > B1_RANGE[1])), 4),
        "ClipRange": list(B1_RANGE),
        "MedianInHead": float(np.median(b1[head])) if n_head else None,
        "MedianUnclippedInHead": float(np.median(raw)) if raw.size else None,
        "Roughness": round(float(np.median(rough[judged])), 4) if judged.any() else 0.0,
        "FractionPlausible": round(_fraction(raw, lambda v: (v >= B1_PLAUSIBLE[0]) & (v <= B1_PLAUSIBLE[1])), 4),
    }
    gates, warnings_ = check_b1_plausibility(info, min_coverage=min_coverage, relaxed=relaxed,
                                             flip_angle_deg=None if relative else flip_angle_deg)
    if 0.999 <= coverage and info["HeadCoverage"] < 0.999:
        warnings_.append(f"the B1 map covers {100 * info['HeadCoverage']:.1f}% of the head (all of the "
                         "brain region); B1 = 1 was assumed in the rest")
    for warning in warnings_:
        LOGGER.warning(warning)
    info["Gates"] = gates
    info["Warnings"] = warnings_
    return nib.Nifti1Image(b1, qalas_img.affine), info, judged


def _squeeze(img: nib.spatialimages.SpatialImage) -> np.ndarray:
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data[..., 0] if data.ndim == 4 and data.shape[3] == 1 else data


def _fraction(values: np.ndarray, test) -> float:
    return float(np.mean(test(values))) if values.size else 0.0
