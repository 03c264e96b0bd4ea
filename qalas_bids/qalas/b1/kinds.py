"""Relative B1+ (actual / nominal flip angle, unitless) from each kind of B1 map's images.

Pure arithmetic on arrays; reading the files and their sidecars is the BIDS layer's job
(:mod:`qalas_bids.bids.inputs_check`). Formulas (``/work/shared`` brief, section 5):

- TurboFLASH ``TB1TFL``: ``famp / (10 * FA)`` (famp in degrees * 10);
- Siemens ``rf_map`` ``TB1RFM``: ``(famp - 2048) * 180 / 2048 / FA``;
- AFI ``TB1AFI`` (Yarnykh 2007, Eq. 6): ``r = S2/S1``, ``n = TR2/TR1``,
  ``alpha = arccos((r n - 1)/(n - r))``, ``B1 = alpha / FA``;
- double angle ``TB1DAM`` (Insko & Bolinger 1993): ``alpha = arccos(S(2a) / (2 S(a)))``;
- a ready map ``TB1map``: ratio, or percent divided by 100.

Voxels where a formula has no real solution (AFI/DAM cosine outside [-1, 1], no signal)
are NaN, never 0; :func:`fill_invalid` replaces them by the nearest valid value.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import QalasInputError

#: Range of the 90th percentile of a ready TB1map's positive voxels read as percent (the
#: head is ~100); a percentile, not the median, because background noise may fill most of
#: the field of view.
PERCENT_MEDIAN_RANGE = (20.0, 300.0)
#: The same for a ratio TB1map (the head is ~1).
RATIO_MEDIAN_RANGE = (0.2, 3.0)
#: Percentile of the positive voxels that decides percent or ratio.
SCALE_PERCENTILE = 90.0


def check_flip_angle(flip_angle_deg: float, what: str = "B1 map") -> float:
    """The nominal flip angle (degrees) as a float; exit-2 error when it is not an angle."""
    try:
        angle = float(flip_angle_deg)
    except (TypeError, ValueError):
        angle = float("nan")
    if not (np.isfinite(angle) and 0 < angle < 180):
        raise QalasInputError(
            f"{what} nominal flip angle {flip_angle_deg!r} is not a valid angle in degrees; "
            "set it with --b1-flip-angle (Siemens tfl_b1map default: 80)")
    return angle


def _finite(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(image)):
        raise QalasInputError(f"the {what} contains NaN/Inf values: check the conversion")
    return image


def relative_b1_from_famp(famp: np.ndarray, flip_angle_deg: float) -> np.ndarray:
    """Relative B1 (unitless, float32) from a TurboFLASH ``famp`` image.

    ``flip_angle_deg`` is the nominal flip angle of the B1 sequence (``FlipAngle`` of the
    famp sidecar, 80 degrees on Siemens by default). Non-finite voxels raise
    :class:`QalasInputError`.
    """
    angle = check_flip_angle(flip_angle_deg)
    famp = _finite(famp, "B1 famp image")
    return (famp / (10.0 * angle)).astype(np.float32)


def relative_b1_from_rfm(famp: np.ndarray, flip_angle_deg: float) -> np.ndarray:
    """Relative B1 (float32) from a Siemens ``rf_map`` flip-angle image (``TB1RFM``):
    ``(famp - 2048) * 180 / 2048`` degrees divided by the nominal flip angle."""
    angle = check_flip_angle(flip_angle_deg)
    famp = _finite(famp, "B1 rf_map flip-angle image")
    return ((famp - 2048.0) * 180.0 / 2048.0 / angle).astype(np.float32)


def _angle_from_cosine(cosine: np.ndarray, valid: np.ndarray, flip_angle_deg: float) -> np.ndarray:
    valid = valid & np.isfinite(cosine) & (np.abs(cosine) <= 1.0)
    alpha = np.degrees(np.arccos(np.where(valid, cosine, 1.0)))
    return np.where(valid, alpha / flip_angle_deg, np.nan).astype(np.float32)


def signal_threshold(image: np.ndarray, fraction: float = 0.1) -> float:
    """``fraction`` of the 99th percentile of ``image``: below it a B1 map's magnitude is
    background or partial volume, where a signal ratio gives no usable angle."""
    return float(fraction * np.percentile(np.asarray(image, dtype=np.float64), 99))


def relative_b1_from_afi(s1: np.ndarray, s2: np.ndarray, tr_ratio: float,
                         flip_angle_deg: float, min_signal: float = 0.0) -> np.ndarray:
    """Relative B1 (float32, NaN where invalid) from AFI magnitudes (Yarnykh 2007, Eq. 6).

    ``s1``/``s2`` are the images of the short (TR1) and long (TR2) interleaved repetition,
    ``tr_ratio = TR2 / TR1`` (> 1), ``flip_angle_deg`` the nominal excitation angle.
    Voxels with ``s1 <= min_signal`` (e.g. :func:`signal_threshold`), ``s2 < 0`` or a
    cosine outside [-1, 1] are NaN.
    """
    angle = check_flip_angle(flip_angle_deg, "AFI")
    n = float(tr_ratio)
    if not (np.isfinite(n) and n > 1.0):
        raise QalasInputError(f"AFI TR ratio TR2/TR1 = {tr_ratio!r} must be > 1: the acq-tr2 image is the "
                              "long-TR one (check RepetitionTimeExcitation or --afi-tr-ratio)")
    s1, s2 = _finite(s1, "AFI tr1 image"), _finite(s2, "AFI tr2 image")
    with np.errstate(divide="ignore", invalid="ignore"):
        r = s2 / s1
        cosine = (r * n - 1.0) / (n - r)
    return _angle_from_cosine(cosine, (s1 > max(min_signal, 0.0)) & (s2 >= 0) & (r < n), angle)


def relative_b1_from_dam(s_alpha: np.ndarray, s_2alpha: np.ndarray, flip_angle_deg: float,
                         min_signal: float = 0.0) -> np.ndarray:
    """Relative B1 (float32, NaN where invalid) from double-angle magnitudes:
    ``arccos(S(2a) / (2 S(a))) / a``; ``flip_angle_deg`` is the smaller angle ``a``; voxels
    with ``S(a) <= min_signal`` are NaN.

    Exact for full relaxation (TR >> T1); magnitude images cannot show S(2a) < 0, so
    angles above 90 degrees fold back (the B1 map's protocol keeps 2a below 180)."""
    angle = check_flip_angle(flip_angle_deg, "double-angle")
    s1, s2 = _finite(s_alpha, "double-angle first image"), _finite(s_2alpha, "double-angle second image")
    with np.errstate(divide="ignore", invalid="ignore"):
        cosine = s2 / (2.0 * s1)
    return _angle_from_cosine(cosine, (s1 > max(min_signal, 0.0)) & (s2 >= 0), angle)


def relative_b1_from_map(values: np.ndarray, units: str | None) -> tuple[np.ndarray, str]:
    """A ready ``TB1map`` as a ratio (float32) and how its scale was decided.

    ``units`` is the sidecar ``Units``: ``percent``/``%`` divides by 100, a ratio unit
    (``1``, ``ratio``, ``arbitrary``, ``a.u.``...) keeps the values. Without units, or when
    the values contradict the units, the 90th percentile of the positive voxels decides
    (about 100: percent, about 1: ratio); a value that fits neither raises
    :class:`QalasInputError`.
    Returns ``(ratio, "percent (Units)" | "ratio (Units)" | "percent (values)" | ...)``.
    """
    values = _finite(values, "B1 map")
    positive = values[values > 0]
    median = float(np.percentile(positive, SCALE_PERCENTILE)) if positive.size else 0.0
    looks_percent = PERCENT_MEDIAN_RANGE[0] <= median <= PERCENT_MEDIAN_RANGE[1]
    looks_ratio = RATIO_MEDIAN_RANGE[0] <= median <= RATIO_MEDIAN_RANGE[1]
    text = str(units or "").strip().lower()
    declared = "percent" if text in ("percent", "%", "pct") else ("ratio" if text else None)
    if declared == "percent" and looks_percent or declared is None and looks_percent:
        scale = "percent"
    elif declared == "ratio" and looks_ratio or declared is None and looks_ratio:
        scale = "ratio"
    else:
        raise QalasInputError(
            f"the B1 map's values (90th percentile of positive voxels {median:.3g}) do not fit its Units "
            f"{units!r}: a relative B1+ map is about 1 (ratio) or about 100 (percent); fix the "
            "sidecar's Units or the map")
    how = f"{scale} ({'Units' if declared == scale else 'values'})"
    ratio = values / 100.0 if scale == "percent" else values
    return ratio.astype(np.float32), how


def fill_invalid(b1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace NaN voxels by the nearest valid voxel's value (float32).

    Returns ``(filled, invalid_mask)``; all-invalid input raises :class:`QalasInputError`.
    """
    b1 = np.asarray(b1, dtype=np.float32)
    invalid = ~np.isfinite(b1)
    if invalid.all():
        raise QalasInputError("the B1 map has no valid voxel (the B1 formula has no solution anywhere): "
                              "check the B1 images and their order")
    if not invalid.any():
        return b1, invalid
    _, nearest = ndimage.distance_transform_edt(invalid, return_indices=True)
    return b1[tuple(nearest)], invalid
