"""Parameter ranges shared by every fit, and which voxels sit at them.

One set of ranges for the network heads (:mod:`.network`), the per-voxel refinement
(:func:`.ssl.refine_least_squares`), the dictionary grid (:func:`.dictionary.paper_grid`)
and the pretrained-model training distribution (``scripts/train_pretrained.py``).

Why T1 reaches 10 s (docs/methods.md, "Parameter ranges"): pure CSF at 3 T has T1 of about
4.2 s and, with the shipped QALAS timing, a Cramér-Rao standard deviation of 2.1 s at
SNR 30 (1.0 s at SNR 60). An upper bound only a standard deviation above the truth (the
old 5 s) piles noisy CSF voxels onto it and biases every CSF statistic. 10 s is
4.2 s + 2.8 sigma at SNR 30; on the digital head (pretrained fit, noise-floor corrected)
0.5 % of pure CSF sits at 10 s at SNR 60 and 6.4 % at SNR 30 (27 % sat at >= 4.95 s).
T2 of CSF is barely identifiable by QALAS (CRLB about 100 % at SNR 60): 5 s keeps
the T2 > T1 region of long-T1 fluid reachable without letting noise run to infinity.
"""
from __future__ import annotations

import numpy as np

#: T1 and T2 ranges (seconds) of every fit.
T1_RANGE_S = (1e-3, 10.0)
T2_RANGE_S = (1e-3, 5.0)
#: Inversion-efficiency range (unitless; 1 = perfect inversion).
IE_RANGE = (0.5, 1.0)
#: Relative tolerance within which a value counts as "at" a T1/T2 bound.
AT_BOUND_RTOL = 0.01


def at_bound(t1: np.ndarray, t2: np.ndarray, ie: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Boolean arrays of the voxels whose T1 or T2 sits at (within 1 % of) a range end.

    ``ie`` adds ``"IE"``: voxels at the lower IE bound (0.5; the upper bound 1 is a physical
    limit that real tissue approaches, so it is not a sign of a failed fit). Keys ``T1``,
    ``T2`` (and ``IE``) plus ``any``. Zeros (outside the mask) are not counted.
    """
    t1, t2 = np.asarray(t1, dtype=np.float64), np.asarray(t2, dtype=np.float64)
    out = {}
    for name, values, (lo, hi) in (("T1", t1, T1_RANGE_S), ("T2", t2, T2_RANGE_S)):
        out[name] = (values > 0) & ((values >= hi * (1 - AT_BOUND_RTOL)) | (values <= lo * (1 + AT_BOUND_RTOL)))
    if ie is not None:
        ie = np.asarray(ie, dtype=np.float64)
        out["IE"] = (ie > 0) & (ie <= IE_RANGE[0] * (1 + AT_BOUND_RTOL))
    out["any"] = np.logical_or.reduce(list(out.values()))
    return out


#: Warn when more than this fraction of a brain tissue class has T1 at a bound (or, in
#: WM/GM, T2 at a bound). WM/GM are well determined, so 2 % at a bound means a failed fit;
#: the CSF class (T1 > 2.5 s) also holds partial-volume and vessel voxels and, at SNR 60,
#: 3-4 % of it reaches 10 s on the digital head, so it warns at 10 %. CSF T2 is exempt:
#: QALAS barely determines it (CRLB about 100 % at SNR 60).
AT_BOUND_WARN_FRACTION = {"CSF": 0.10, "GM": 0.02, "WM": 0.02}


def bound_report(t1: np.ndarray, t2: np.ndarray, ie: np.ndarray | None,
                 classes: dict[str, np.ndarray]) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Fraction of voxels at a range bound per parameter and class, and warnings.

    ``classes`` maps a name (``CSF``, ``GM``, ``WM``, ``NonBrain``...) to a boolean mask.
    Returns ``({class: {"Voxels": n, "T1": f, "T2": f, "IE": f, "Any": f}}, warnings)``;
    only the brain classes (CSF, GM, WM) can raise a warning.
    """
    flags = at_bound(t1, t2, ie)
    report: dict[str, dict[str, float]] = {}
    warnings: list[str] = []
    for name, sel in classes.items():
        sel = np.asarray(sel, dtype=bool)
        n = int(sel.sum())
        row: dict[str, float] = {"Voxels": n}
        for key, flag in flags.items():
            row["Any" if key == "any" else key] = round(float(flag[sel].mean()), 4) if n else 0.0
        report[name] = row
        checked = ("T1",) if name == "CSF" else ("T1", "T2") if name in ("GM", "WM") else ()
        for key in checked:
            if n and row[key] > AT_BOUND_WARN_FRACTION[name]:
                lo, hi = T1_RANGE_S if key == "T1" else T2_RANGE_S
                warnings.append(
                    f"{100 * row[key]:.1f}% of the {name} voxels have {key} at the fit range "
                    f"[{lo:g}, {hi:g}] s: noisy data (low SNR), motion or a wrong sequence timing; "
                    "check the residual map and the report")
    return report, warnings
