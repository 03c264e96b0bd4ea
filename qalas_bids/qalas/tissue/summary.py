"""Per-class summary of a fit for the sidecars: voxels at parameter bounds, and how many
voxels the tissue statistics may use (the rest excluded, and why)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..physics.bounds import bound_report
from .classes import classify_tissues, reliable_voxels


def summarise_tissues(maps: dict[str, np.ndarray], brain: np.ndarray,
                      head: np.ndarray) -> tuple[dict[str, Any], list[str]]:
    """``({"ParameterBounds": ..., "TissueReliability": ...}, warnings)`` of fitted ``maps``
    (keys t1, t2, ie, crlb_t1, residual) inside the brain and head masks."""
    brain = np.asarray(brain, dtype=bool)
    head = np.asarray(head, dtype=bool)
    classes = classify_tissues(maps["t1"], brain) if (brain & (maps["t1"] > 0)).any() else None
    regions = {name: classes.mask(name) for name in ("CSF", "GM", "WM")} if classes else {}
    regions["NonBrainHead"] = head & ~brain
    bounds, warnings = bound_report(maps["t1"], maps["t2"], maps.get("ie"), regions)
    _, _, counts = reliable_voxels(brain, maps["t1"], maps["t2"], maps.get("ie"), maps.get("crlb_t1"),
                                   maps.get("residual"))
    return {"ParameterBounds": {"Description": "fraction of voxels per tissue class (classes from the "
                                               "fitted T1 inside the brain mask) whose value sits at the "
                                               "fit range (qalas_bids.qalas.physics.bounds)", "Classes": bounds},
            "TissueReliability": {"Description": "brain voxels usable for tissue values (null T1s, report "
                                                 "and group tables) and the exclusions, counted per test",
                                  **counts}}, warnings
