"""Containers for fit results shared by all fitting methods."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Names of the fitted parameters, in network/output order. Units: s, s, a.u., 1.
PARAMETERS = ("t1", "t2", "pd", "ie")


@dataclass
class FitResult:
    """Per-voxel fit of N voxels (float32 arrays of shape ``(N,)``).

    ``t1``/``t2`` in seconds, ``pd`` in the units of the input images, ``ie`` unitless.
    ``method`` is one of ``scan-specific``, ``pretrained``, ``fine-tune``, ``dictionary``.
    ``info`` is JSON-serialisable provenance (wall time, device, epochs, loss history...).
    """

    t1: np.ndarray
    t2: np.ndarray
    pd: np.ndarray
    ie: np.ndarray
    method: str
    info: dict[str, Any] = field(default_factory=dict)

    def params(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in PARAMETERS}

    def stacked(self) -> np.ndarray:
        """``(N, 4)`` array in :data:`PARAMETERS` order."""
        return np.stack([getattr(self, name) for name in PARAMETERS], axis=-1)
