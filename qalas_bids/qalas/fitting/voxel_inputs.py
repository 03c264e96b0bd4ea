"""Validation of per-voxel fit inputs shared by every fitting method."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..b1.no_b1 import no_b1_bias_text
from ..errors import QalasInputError
from ..physics.signal_model import N_CONTRASTS

#: Sidecar/report warning of a fit without a B1 map (the expected bias per 10 % of B1 error).
NO_B1_WARNING = no_b1_bias_text()


def validate_voxels(magnitudes: Any, b1: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Check ``magnitudes (N, 5)`` and ``b1 (N,)`` (``None`` = 1); return float64 copies + warnings.

    Raises :class:`QalasInputError` naming the problem (shape, empty, NaN/Inf, negative
    magnitudes, B1 size or non-positive B1).
    """
    mags = np.asarray(magnitudes, dtype=np.float64)
    if mags.ndim != 2 or mags.shape[1] != N_CONTRASTS:
        raise QalasInputError(f"magnitudes must have shape (N, {N_CONTRASTS}), got {mags.shape}")
    if mags.shape[0] == 0:
        raise QalasInputError("no voxels to fit (empty mask?)")
    if not np.isfinite(mags).all():
        raise QalasInputError(f"{int((~np.isfinite(mags)).sum())} NaN/Inf values in the QALAS magnitudes: "
                              "mask them out or fix the images")
    if (mags < 0).any():
        raise QalasInputError("negative values in the QALAS images: the fit expects magnitude images "
                              "(not real/phase or PSIR data)")
    warnings: list[str] = []
    if b1 is None:
        warnings.append(NO_B1_WARNING)
        return mags, np.ones(mags.shape[0]), warnings
    b1v = np.asarray(b1, dtype=np.float64).reshape(-1)
    if b1v.shape[0] != mags.shape[0]:
        raise QalasInputError(f"B1 has {b1v.shape[0]} voxels but the magnitudes have {mags.shape[0]}")
    if not np.isfinite(b1v).all() or (b1v <= 0).any():
        raise QalasInputError("B1 map has NaN/Inf or non-positive values inside the mask: "
                              "clip it to [0.65, 1.35] and fill holes")
    return mags, b1v, warnings
