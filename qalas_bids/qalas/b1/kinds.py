"""Relative B1+ (actual / nominal flip angle, unitless) from each kind of B1 map's images.

Pure arithmetic on arrays; reading the files and their sidecars is the BIDS layer's job
(:mod:`qalas_bids.bids.inputs_check`).
"""
from __future__ import annotations

import numpy as np

from ..errors import QalasInputError


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
