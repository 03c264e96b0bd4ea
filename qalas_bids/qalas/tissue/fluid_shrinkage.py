"""Uncertainty-aware fluid values for synthetic images (empirical-Bayes shrinkage).

Fluid (CSF, vitreous) T1 has a per-voxel Cramér-Rao SD of about 25 % at SNR 60, so a
synthetic FLAIR computed from each voxel's own T1 leaves most fluid voxels far from the
null (FLAIR CSF/WM about 0.26 on the digital head). The true T1 of fluid varies much less
than that between voxels. Per group of fluid voxels (brain fluid, fluid outside the brain)
and per parameter, in log units for T1/T2 and linear units for IE:

* prior centre ``c``: the tissue value used for the null (brain fluid: the CSF null T1
  and IE) or else the median over the group's reliable core voxels;
* prior spread ``tau^2 = max(MAD-variance of the group - median(sigma^2), TAU_MIN^2)`` (the
  observed spread minus the part the CRLB explains);
* shrunk value ``c + w (x - c)`` with ``w = tau^2 / (tau^2 + sigma_i^2)``, ``sigma_i`` the
  voxel's CRLB SD: the posterior mean under a normal prior and normal errors.

Only the synthetic images use these values; the T1/T2/IE maps are the per-voxel fits
(unbiased, at the CRLB). A shrunk value leans towards the group centre: that is a bias
for a map, and the reason it is kept out of the maps. Partial-volume voxels (shorter T1,
smaller CRLB) keep most of their own value.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

#: Smallest prior SD of fluid (3 %: the voxel-to-voxel variation of CSF T1 in vivo is of
#: that order; the digital head uses 3 %).
TAU_MIN = 0.03


def shrink_fluid(maps: Mapping[str, np.ndarray], crlb: Mapping[str, np.ndarray],
                 groups: Mapping[str, tuple[np.ndarray, np.ndarray, Mapping[str, float]]],
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Shrunk copies of ``maps`` (``t1``, ``t2`` in s, ``ie``) inside each group.

    ``groups`` maps a name to ``(voxels, core, centres)``: the voxels to shrink, the reliable
    voxels that set the prior spread, and prior centres per key (e.g. the CSF null T1 and
    IE; keys missing there use the core median). ``crlb`` holds the CRLB SD maps; keys
    without a CRLB are unchanged. Returns the maps and a JSON-friendly summary.
    """
    out = {k: np.array(v, dtype=np.float64, copy=True) for k, v in maps.items()}
    info: dict[str, Any] = {}
    for gname, (group, core, centres) in groups.items():
        group = np.asarray(group, dtype=bool)
        core = np.asarray(core, dtype=bool) & group
        if core.sum() < 20:
            continue
        summary: dict[str, Any] = {"Voxels": int(group.sum())}
        for key, values in maps.items():
            if key not in crlb:
                continue
            log = key in ("t1", "t2")
            v = np.asarray(values, dtype=np.float64)[group]  # the group's voxels only
            sd = np.asarray(crlb[key], dtype=np.float64)[group]
            in_core = core[group]
            x = np.log(np.maximum(v, 1e-6)) if log else v
            s = sd / np.maximum(v, 1e-6) if log else sd
            given = centres.get(key)
            centre = float(np.log(given) if log else given) if given is not None else float(np.median(x[in_core]))
            mad_var = (1.4826 * float(np.median(np.abs(x[in_core] - centre)))) ** 2
            tau2 = max(mad_var - float(np.median(s[in_core] ** 2)), TAU_MIN ** 2 if log else (TAU_MIN * abs(centre)) ** 2)
            w = tau2 / (tau2 + s ** 2)
            shrunk = centre + w * (x - centre)
            out[key][group] = np.exp(shrunk) if log else shrunk
            summary[key.upper()] = {"Centre": float(np.exp(centre)) if log else centre,
                                    "PriorSD": float(np.sqrt(tau2)), "MeanWeight": float(np.mean(w))}
        info[gname] = summary
    return out, info
