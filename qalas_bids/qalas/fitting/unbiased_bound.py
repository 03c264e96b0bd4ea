"""Hammersley-Chapman-Robbins (HCR) bound: the variance no unbiased estimator can beat,
including where the Cramér-Rao bound is not reachable.

The Cramér-Rao bound (:func:`.uncertainty.crlb_std`) is local: it uses the slope of the
five magnitudes at the true parameters. For long-T1 fluid the magnitudes hardly change
with T1 over seconds (and a contrast passes through its magnitude null), so the likelihood
is flat and non-quadratic over the range the noise explores, and no unbiased estimator
reaches the CRLB. The HCR bound keeps the same model (Gaussian noise of std ``sigma`` on
the magnitudes ``|S_k|``, B1 known) but compares the truth ``theta`` with finite
alternatives ``theta'``:

``Var(T) >= sup_theta' (g(theta') - g(theta))^2 / (exp(||mu(theta') - mu(theta)||^2 / sigma^2) - 1)``

for any estimator ``T`` of ``g(theta)`` that is unbiased at every ``theta'`` (the
denominator is the chi-square divergence of two Gaussians of equal covariance). It tends to
the CRLB as ``theta' -> theta``, so HCR >= CRLB; both are exact lower bounds. For a shift
``d`` of the estimated parameter the other three parameters are chosen to make
``mu(theta')`` as close to ``mu(theta)`` as the fit ranges allow (the profile distance), which
makes the bound as tight as this construction gets.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import least_squares

from ..physics.bounds import IE_RANGE, T1_RANGE_S, T2_RANGE_S
from ..physics.signal_model import qalas_magnitude
from ..physics.timing import SequenceTiming
from .results import PARAMETERS
from .uncertainty import crlb_std

#: Relative shifts of the estimated parameter (multiplicative: ``theta' = theta * (1 + d)``),
#: dense near 0 (where the bound meets the CRLB) and reaching far into the fluid's flat tail.
DEFAULT_SHIFTS = np.unique(np.concatenate([
    [-0.005, 0.005], np.linspace(-0.6, -0.02, 24), np.linspace(0.02, 1.5, 60)]))
#: PD range of the profile search, relative to the true PD.
PD_SEARCH_FACTOR = 20.0


@dataclass(frozen=True)
class UnbiasedBound:
    """HCR standard deviation ``std`` (parameter units) per noise level, the CRLB ``crlb``
    at the same point, and the relative shift ``shift`` that attains the supremum (0 where
    the bound is the CRLB itself)."""

    std: np.ndarray
    crlb: np.ndarray
    shift: np.ndarray


def _magnitudes(t1: float, t2: float, pd: float, ie: float, b1: float, timing: SequenceTiming) -> np.ndarray:
    t = [torch.tensor([float(v)], dtype=torch.float64) for v in (t1, t2, pd, ie, b1)]
    return qalas_magnitude(*t, timing).numpy()[0]


def profile_distance(theta: dict[str, float], timing: SequenceTiming, which: str = "t1",
                     shifts: np.ndarray = DEFAULT_SHIFTS) -> tuple[np.ndarray, np.ndarray]:
    """``(shifts kept, D)``: ``D[i] = min ||mu(theta') - mu(theta)||^2`` over the three other
    parameters, with ``theta'[which] = theta[which] * (1 + shifts[i])`` inside the fit ranges.

    ``theta``: ``t1``, ``t2`` (s), ``pd``, ``ie``, ``b1``. ``which``: ``t1``, ``t2`` or ``pd``.
    Each shift starts from the true nuisance values and from the previous shift's optimum
    (a continuation along each side), and keeps the closer one.
    """
    if which not in ("t1", "t2", "pd"):
        raise ValueError(f"which must be t1, t2 or pd, got {which!r}")
    names = [p for p in PARAMETERS if p != which]
    ranges = {"t1": T1_RANGE_S, "t2": T2_RANGE_S, "ie": IE_RANGE,
              "pd": (theta["pd"] / PD_SEARCH_FACTOR, theta["pd"] * PD_SEARCH_FACTOR)}
    # Nuisance coordinates: log for T1/T2/PD, linear for IE.
    to_z = {p: (math.log if p != "ie" else float) for p in names}
    from_z = {p: (math.exp if p != "ie" else float) for p in names}
    lo = np.array([to_z[p](ranges[p][0]) for p in names])
    hi = np.array([to_z[p](ranges[p][1]) for p in names])
    z_true = np.clip([to_z[p](theta[p]) for p in names], lo, hi)
    mu0 = _magnitudes(theta["t1"], theta["t2"], theta["pd"], theta["ie"], theta["b1"], timing)
    low, high = ranges[which]
    shifts = np.sort(np.asarray(shifts, dtype=np.float64))
    value = theta[which] * (1.0 + shifts)
    keep = (value >= low) & (value <= high)
    shifts, value = shifts[keep], value[keep]
    dist = np.empty(shifts.size)
    # Walk outwards from 0 on each side so that the previous optimum is a near start.
    order = np.concatenate([np.nonzero(shifts < 0)[0][::-1], np.nonzero(shifts >= 0)[0]])
    previous = z_true
    for rank, i in enumerate(order):
        if rank and np.sign(shifts[i]) != np.sign(shifts[order[rank - 1]]):
            previous = z_true

        def residual(z, v=value[i]):
            args = {which: v, **{p: from_z[p](zj) for p, zj in zip(names, z)}}
            return _magnitudes(args["t1"], args["t2"], args["pd"], args["ie"], theta["b1"], timing) - mu0

        best = None
        for start in (z_true, previous):
            fit = least_squares(residual, np.clip(start, lo + 1e-12, hi - 1e-12), bounds=(lo, hi),
                                x_scale="jac", xtol=1e-12, ftol=1e-14, gtol=1e-14)
            if best is None or fit.cost < best.cost:
                best = fit
        dist[i] = 2.0 * best.cost
        previous = best.x
    return shifts, dist


def hcr_std(theta: dict[str, float], timing: SequenceTiming, sigma: np.ndarray | float, which: str = "t1",
            shifts: np.ndarray = DEFAULT_SHIFTS) -> UnbiasedBound:
    """HCR bound on the standard deviation of any unbiased estimate of ``theta[which]``
    from the five magnitudes with Gaussian noise ``sigma`` (one value or an array: the
    profile is computed once). ``theta``: ``t1``, ``t2`` (s), ``pd``, ``ie``, ``b1``."""
    sig = np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    kept, dist = profile_distance(theta, timing, which, shifts)
    delta = theta[which] * kept
    # (exp(x) - 1) overflows beyond x ~ 700; such shifts bound nothing.
    ratio = delta[None, :] ** 2 / np.expm1(np.minimum(dist[None, :] / sig[:, None] ** 2, 700.0))
    best = np.argmax(ratio, axis=1)
    crlb = np.array([float(crlb_std(*(np.array([theta[p]]) for p in PARAMETERS), np.array([theta["b1"]]),
                                    timing, float(s), device="cpu")[which][0]) for s in sig])
    # The CRLB is the bound's limit at zero shift: a finite grid of shifts can only miss it.
    std = np.maximum(np.sqrt(ratio[np.arange(sig.size), best]), crlb)
    return UnbiasedBound(std=std, crlb=crlb, shift=np.where(std > crlb, kept[best], 0.0))
