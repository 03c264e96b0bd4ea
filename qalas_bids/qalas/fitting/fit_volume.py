"""Fit a whole QALAS volume: validate inputs, fit masked voxels, add uncertainty maps.

This is what the nipype interface calls. Dispatches to SSL-QALAS
(:func:`~qalas_bids.qalas.fitting.ssl.fit_ssl`) or dictionary matching
(:func:`~qalas_bids.qalas.fitting.dictionary.fit_dictionary`), then computes CRLB standard
deviations and the relative residual (:mod:`qalas_bids.qalas.fitting.uncertainty`) with the noise
level estimated from the image background.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import progress as prog
from ..errors import QalasInputError
from .results import PARAMETERS, FitResult
from ..physics.timing import SequenceTiming

METHODS = ("scan-specific", "pretrained", "fine-tune", "dictionary")
MAP_KEYS = ("t1", "t2", "pd", "ie", "crlb_t1", "crlb_t2", "crlb_pd", "crlb_ie", "residual")


@dataclass
class VolumeFit:
    """Maps of a fitted volume: ``maps[key]`` 3D float32 (0 outside the mask, never NaN)
    for keys :data:`MAP_KEYS` (T1/T2 and their CRLBs in s, PD in image units, IE and the
    relative residual unitless); ``info`` JSON-serialisable provenance."""

    maps: dict[str, np.ndarray]
    info: dict[str, Any] = field(default_factory=dict)


def validate_volume(qalas4d: Any, b1: Any, mask: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Check shapes and values; raise :class:`QalasInputError` naming the problem.

    Returns ``(qalas4d float64 (X,Y,Z,5), b1 float64 (X,Y,Z) or None, mask bool)``.
    NaN/Inf or negative values *inside the mask* are errors; outside they are ignored.
    """
    data = np.asarray(qalas4d)
    if data.ndim != 4 or data.shape[-1] != 5:
        raise QalasInputError(f"QALAS data must be 4D (X, Y, Z, 5 contrasts), got shape {data.shape}")
    m = np.asarray(mask)
    if m.shape != data.shape[:3]:
        raise QalasInputError(f"mask shape {m.shape} does not match the QALAS grid {data.shape[:3]}")
    m = m.astype(bool)
    if not m.any():
        raise QalasInputError("the brain/head mask is empty: nothing to fit (check the mask or the "
                              "QALAS images)")
    inside = data[m].astype(np.float64)
    n_bad = int((~np.isfinite(inside)).sum())
    if n_bad:
        raise QalasInputError(f"{n_bad} NaN/Inf values in the QALAS images inside the mask: fix the "
                              "reconstruction or exclude those voxels from the mask")
    if (inside < 0).any():
        raise QalasInputError(f"{int((inside < 0).sum())} negative values in the QALAS images inside "
                              "the mask: SSL-QALAS needs magnitude images (not real/phase data)")
    if not (inside > 0).any():
        raise QalasInputError("the QALAS images are all zero inside the mask")
    b1_arr = None
    if b1 is not None:
        b1_arr = np.asarray(b1, dtype=np.float64)
        if b1_arr.shape != data.shape[:3]:
            raise QalasInputError(f"B1 map shape {b1_arr.shape} does not match the QALAS grid "
                                  f"{data.shape[:3]}: resample it into QALAS space first")
        b1_in = b1_arr[m]
        if not np.isfinite(b1_in).all() or (b1_in <= 0).any():
            raise QalasInputError("B1 map has NaN/Inf or non-positive values inside the mask: "
                                  "clip it (e.g. to [0.65, 1.35]) and fill holes before fitting")
    return data, b1_arr, m


def mask_neighbors(mask: np.ndarray) -> np.ndarray:
    """For each masked voxel (C order), indices of its +x/+y/+z neighbours among the masked
    voxels, ``-1`` where the neighbour is outside the mask: ``(N, 3)`` int64."""
    index = np.full(mask.shape, -1, dtype=np.int64)
    index[mask] = np.arange(int(mask.sum()))
    padded = np.pad(index, 1, constant_values=-1)
    coords = np.nonzero(mask)
    out = []
    for axis in range(3):
        shifted = [c + 1 for c in coords]
        shifted[axis] = shifted[axis] + 1
        out.append(padded[tuple(shifted)])
    return np.stack(out, axis=1)


def fit_volume(
    qalas4d: np.ndarray,
    b1: np.ndarray | None,
    mask: np.ndarray,
    timing: SequenceTiming,
    *,
    method: str = "scan-specific",
    device: str = "auto",
    seed: int = 0,
    model_path: str | None = None,
    ssl_options: dict[str, Any] | None = None,
    with_uncertainty: bool = True,
    progress: bool = True,
    dictionary_options: dict[str, Any] | None = None,
    noise_floor_correction: bool = True,
) -> VolumeFit:
    """Fit the masked voxels of ``qalas4d (X, Y, Z, 5)`` and return maps + provenance.

    ``method``: ``scan-specific`` | ``pretrained`` | ``fine-tune`` (SSL-QALAS) or
    ``dictionary``. ``b1 (X, Y, Z)`` relative B1 in QALAS space (``None``: B1 = 1 and a
    warning in ``info["warnings"]``). ``ssl_options`` are passed to
    :func:`~qalas_bids.qalas.fitting.ssl.fit_ssl` (epochs, batch_size, lr, tv_weight,
    use_b1_input, refine_steps, num_threads, force_model...). ``noise_floor_correction``
    fits the power-corrected magnitudes (:func:`~.uncertainty.correct_noise_floor`) when
    the noise level comes from the image background; the residual map is then relative
    to the corrected magnitudes (what was fitted). Raises
    :class:`QalasInputError` for NaN/Inf/negative values, shape mismatches or an empty mask.
    """
    if method not in METHODS:
        raise QalasInputError(f"unknown fit method {method!r}: choose one of {METHODS}")
    t_start = time.perf_counter()
    data, b1_arr, m = validate_volume(qalas4d, b1, mask)
    warnings: list[str] = []
    if b1_arr is None:
        warnings.append("no B1 map: fitted with B1 = 1 everywhere; T2 and IE are biased where the "
                        "true B1 differs from 1")
        b1_vox = np.ones(int(m.sum()))
    else:
        b1_vox = b1_arr[m]
    mags = data[m].astype(np.float64)
    sigma, sigma_method = None, None
    if with_uncertainty or noise_floor_correction:
        from .uncertainty import estimate_noise_sigma
        prog.phase("noise level")
        t0 = time.perf_counter()
        sigma, sigma_method = estimate_noise_sigma(data, m)
        stage_times_pre = {"noise_sigma": time.perf_counter() - t0}
    else:
        stage_times_pre = {}
    floor = _noise_floor(mags, sigma, sigma_method, enabled=noise_floor_correction)
    if floor["applied"]:
        from .uncertainty import correct_noise_floor
        mags = correct_noise_floor(mags, sigma)

    if method == "dictionary":
        from .dictionary import fit_dictionary
        result: FitResult = fit_dictionary(mags, b1_vox, timing, device=device, progress=progress,
                                           **(dictionary_options or {}))
    else:
        from .ssl import fit_ssl
        options = dict(ssl_options or {})
        if options.get("tv_weight", 0) > 0 and "neighbors" not in options:
            options["neighbors"] = mask_neighbors(m)
        result = fit_ssl(mags, b1_vox, timing, mode=method, device=device, seed=seed,
                         model_path=model_path, progress=progress, **options)
    info = dict(result.info)
    t_fit = time.perf_counter() - t_start - sum(stage_times_pre.values())
    refinement = info.get("refinement") or {}
    stage_times = {"fit": t_fit} if not refinement else {
        "network": t_fit - refinement["time_s"], "refinement": refinement["time_s"]}
    warnings.extend(w for w in info.pop("warnings", []) if "no B1 map" not in w)

    maps = {}
    for name in PARAMETERS:
        maps[name] = _to_volume(getattr(result, name), m)
    for key in ("crlb_t1", "crlb_t2", "crlb_pd", "crlb_ie", "residual"):
        maps[key] = np.zeros(m.shape, dtype=np.float32)
    stage_times.update(stage_times_pre)
    info["noise_floor_correction"] = floor
    if sigma is not None:
        info["noise_sigma"] = float(sigma)
        info["noise_sigma_method"] = sigma_method
    if with_uncertainty:
        from .uncertainty import crlb_std, relative_residual
        t1_ = time.perf_counter()
        crlb = crlb_std(result.t1, result.t2, result.pd, result.ie, b1_vox, timing, sigma, device=device)
        for name in PARAMETERS:
            maps[f"crlb_{name}"] = _to_volume(crlb[name], m)
        t2_ = time.perf_counter()
        maps["residual"] = _to_volume(
            relative_residual(mags, result.t1, result.t2, result.pd, result.ie, b1_vox, timing,
                              device=device), m)
        stage_times.update(crlb=t2_ - t1_, residual=time.perf_counter() - t2_)
    info.update(method=method, timing=timing.as_dict(), warnings=warnings,
                stage_times_s={k: round(v, 3) for k, v in stage_times.items()},
                wall_time_s=time.perf_counter() - t_start, n_voxels=int(m.sum()))
    info.setdefault("epochs", 0)
    info.setdefault("loss_history", [])
    info.setdefault("device", str(device))
    return VolumeFit(maps=maps, info=_jsonable(info))


def _noise_floor(mags: np.ndarray, sigma: float | None, method: str | None, *, enabled: bool) -> dict[str, Any]:
    """Whether the Rician noise floor is removed before fitting, and why (sidecar record)."""
    record: dict[str, Any] = {"applied": False, "method": "power image: sqrt(max(M^2 - 2 sigma^2, 0))"}
    if not enabled:
        record["reason"] = "disabled (--no-noise-floor-correction)"
    elif method != "background-rayleigh":
        record["reason"] = (f"noise level from {method or 'nowhere'}, not from the image background: "
                            "not trusted for a correction")
    else:
        record.update(applied=True, sigma=float(sigma),
                      fraction_of_values_zeroed=float(np.mean(mags * mags <= 2.0 * sigma * sigma)))
    return record


def _to_volume(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Scatter masked values into a float32 volume; non-finite values become 0."""
    vol = np.zeros(mask.shape, dtype=np.float32)
    v = np.asarray(values, dtype=np.float32)
    vol[mask] = np.where(np.isfinite(v), v, 0.0)
    return vol


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
