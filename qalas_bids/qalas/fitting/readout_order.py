"""Cheap plausibility checks of QALAS data before any real work.

Readout order: the five contrasts must be in readout order (T2-prep, then the four
inversion-recovery readouts). A wrong order still "fits" - to wrong maps - so the check
compares orders: a quick fit (shipped network + per-voxel refinement, B1 = 1) of a few
thousand bright voxels gives the median relative residual of the given order and of a set
of alternatives (cyclic shifts, neighbour swaps, the order the sidecars' InversionTime
implies). Residuals scale with the noise, so no absolute threshold is used: the given
order is rejected only when an alternative fits at least ``ratio`` times better (measured
on the demo brain: the correct order leaves 0.5 % / 1.6 % / 10 % at SNR 100 / 30 / 10, the
order [1, 2, 3, 4, 0] 36 % / 35 % / 33 %).
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import permutations
from typing import Sequence

import numpy as np

from ..physics.timing import SequenceTiming

N_CONTRASTS = 5
IDENTITY = tuple(range(N_CONTRASTS))
#: An alternative order must fit this many times better than the given one to reject it.
ORDER_RATIO = 0.5
#: ... and between this and :data:`ORDER_RATIO` the run goes on with a warning (middle band).
ORDER_WARN_RATIO = 0.8
#: ... and the given order must leave at least this median relative residual.
ORDER_FLOOR = 0.01
SAMPLE_VOXELS = 2000


@dataclass(frozen=True)
class OrderCheck:
    """Median relative residual of the given order and of the best alternative."""

    given_residual: float
    best_order: tuple[int, ...]
    best_residual: float
    n_voxels: int

    @property
    def ratio(self) -> float:
        """Best alternative's residual / the given order's (1 when the given order is best)."""
        return self.best_residual / self.given_residual if self.given_residual > 0 else 1.0

    @property
    def verdict(self) -> str:
        """``"refuse"`` (an alternative fits >= 2x better), ``"warning"`` (1.25-2x) or ``"fine"``."""
        if self.best_order == IDENTITY or self.given_residual <= ORDER_FLOOR:
            return "fine"
        if self.ratio < ORDER_RATIO:
            return "refuse"
        return "warning" if self.ratio < ORDER_WARN_RATIO else "fine"

    @property
    def plausible(self) -> bool:
        return self.verdict != "refuse"


def sample_voxels(data4d: np.ndarray, n: int = SAMPLE_VOXELS, seed: int = 0) -> np.ndarray:
    """Up to ``n`` voxels ``(n, 5)`` whose brightest contrast exceeds 20 % of its 99th
    percentile (head tissue, whatever the order), drawn reproducibly."""
    peak = data4d.max(axis=-1)
    positive = peak[peak > 0]
    if positive.size == 0:
        return np.zeros((0, N_CONTRASTS))
    voxels = data4d[peak > 0.2 * np.percentile(positive, 99)].astype(np.float64)
    if voxels.shape[0] > n:
        voxels = voxels[np.random.default_rng(seed).choice(voxels.shape[0], n, replace=False)]
    return voxels


def candidate_orders(extra: Sequence[Sequence[int]] = ()) -> list[tuple[int, ...]]:
    """The given order, its cyclic shifts, its neighbour swaps and ``extra`` orders."""
    orders = [IDENTITY]
    orders += [tuple((i + k) % N_CONTRASTS for i in IDENTITY) for k in range(1, N_CONTRASTS)]
    for i in range(N_CONTRASTS - 1):
        swapped = list(IDENTITY)
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
        orders.append(tuple(swapped))
    valid = set(permutations(IDENTITY))
    orders += [tuple(int(i) for i in o) for o in extra if tuple(o) in valid]
    return list(dict.fromkeys(orders))


class _OtherThreadsOnly(logging.Filter):
    """Drops the records of one thread below ERROR (the others' warnings still show)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self.thread or record.levelno >= logging.ERROR


@contextmanager
def _quiet_single_threaded():
    """Silence the core's logger in this thread (the forced shipped model warns on every
    quick fit) and compute on one thread: this runs in the parent before nipype forks its
    workers, and a process forked after OpenMP started a thread pool can hang in its first
    parallel op. Other threads (the head mask and B1 checks run alongside) log as usual."""
    import torch

    logger = logging.getLogger("qalas_bids")
    quiet = _OtherThreadsOnly()
    old_threads = torch.get_num_threads()
    logger.addFilter(quiet)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
        torch.set_num_threads(old_threads)


def relative_residuals(voxels: np.ndarray, timing: SequenceTiming) -> np.ndarray:
    """Per-voxel relative residual of a quick fit (shipped network + refinement, B1 = 1)."""
    from .ssl import fit_ssl
    from .uncertainty import relative_residual

    fit = fit_ssl(voxels, None, timing, mode="pretrained", force_model=True, progress=False,
                  device="cpu")
    return np.asarray(relative_residual(voxels, fit.t1, fit.t2, fit.pd, fit.ie, 1.0, timing, device="cpu"))


def median_residual(voxels: np.ndarray, timing: SequenceTiming) -> float:
    """Median relative residual of a quick fit (shipped network + refinement, B1 = 1)."""
    return float(np.median(relative_residuals(voxels, timing)))


def check_readout_order(voxels: np.ndarray, timing: SequenceTiming,
                        extra_orders: Sequence[Sequence[int]] = ()) -> OrderCheck:
    """Compare the given contrast order with the alternatives (see the module docstring).

    ``best_order[k]`` is the index of the given volume that should come k-th.
    """
    orders = candidate_orders(extra_orders)
    with _quiet_single_threaded():  # one fit of every order's voxels (per-voxel: same result, less overhead)
        stacked = relative_residuals(np.concatenate([voxels[:, list(o)] for o in orders]), timing)
    residuals = {order: float(np.median(part)) for order, part in zip(orders, np.split(stacked, len(orders)))}
    best = min(residuals, key=residuals.get)
    return OrderCheck(given_residual=residuals[IDENTITY], best_order=best,
                      best_residual=residuals[best], n_voxels=int(voxels.shape[0]))
