"""Post-fit sanity gate: a run whose maps are implausible is marked failed-QC.

Checked on the written derivatives of each run of the invocation (tissue classes from the
fitted T1 map, :func:`qalas_bids.reports.summaries.run_summary`):

- the WM median T1 lies in :data:`WM_T1_RANGE` (3 T brain: about 0.8-1.0 s in adults,
  longer in infants; outside 0.3-3 s the maps are wrong, e.g. contrasts out of order);
- the median relative fit residual in the mask is at most :data:`MAX_MEDIAN_RESIDUAL`
  (the demo brain gives 0.5 % / 1.6 % / 10 % at SNR 100 / 30 / 10; contrasts that the
  model cannot explain give 30 % and more).

A failed run gets ``"QC": {"Status": "failed", "Reasons": [...]}`` and a ``Warnings``
entry in every JSON sidecar of the run (so the report and the group table show it); the
CLI then exits with :data:`EXIT_QC_FAILED` unless ``--accept-qc-failures``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

from ..bids.derivatives import write_json
from .collect import find_runs
from .summaries import load_run, run_summary

WM_T1_RANGE = (0.3, 3.0)
MAX_MEDIAN_RESIDUAL = 0.15
#: Exit status of a run that finished but whose maps failed the QC gate.
EXIT_QC_FAILED = 3
CRITERIA = {"WM_T1_median_s": list(WM_T1_RANGE), "residual_median_max": MAX_MEDIAN_RESIDUAL}


def qc_failures(row: dict[str, Any]) -> list[str]:
    """Reasons (empty when the run passes) from a :func:`run_summary` row."""
    reasons = []
    wm_t1 = row.get("T1map_WM_median", math.nan)
    if not (isinstance(wm_t1, float) and WM_T1_RANGE[0] <= wm_t1 <= WM_T1_RANGE[1]):
        reasons.append(f"WM median T1 {wm_t1:.3g} s is outside {WM_T1_RANGE[0]}-{WM_T1_RANGE[1]} s")
    residual = row.get("residual_median", math.nan)
    if not (isinstance(residual, float) and residual <= MAX_MEDIAN_RESIDUAL):
        reasons.append(f"median relative fit residual {residual:.1%} exceeds {MAX_MEDIAN_RESIDUAL:.0%}: "
                       "the signal model does not explain the images")
    return reasons


def _run_sidecars(output_dir: Path, label: str) -> list[Path]:
    """Sidecars ``<label>_[desc-|space-...]<suffix>.json`` of one run (not of a run whose
    label merely starts with ``label``, such as ``sub-01_acq-x`` for ``sub-01``)."""
    subject = label.split("_")[0]
    out = []
    for path in (output_dir / subject).rglob(f"{label}_*.json"):
        first = path.name[len(label) + 1:].split("_")[0]
        if "-" not in first or first.startswith(("desc-", "space-")):
            out.append(path)
    return sorted(out)


def mark_failed(output_dir: Path, label: str, reasons: list[str]) -> int:
    """Add the QC verdict to every sidecar of run ``label``; returns how many were changed."""
    changed = 0
    for path in _run_sidecars(output_dir, label):
        meta = json.loads(path.read_text())
        meta["QC"] = {"Status": "failed", "Reasons": reasons, "Criteria": CRITERIA}
        warning = "QC failed: " + "; ".join(reasons)
        meta["Warnings"] = [w for w in meta.get("Warnings", []) if not w.startswith("QC failed:")] + [warning]
        write_json(path, meta)
        changed += 1
    return changed


def apply_qc_gate(output_dir: str | Path, labels: Iterable[str], *, subject: str | None = None,
                  loaded_runs: dict[str, Any] | None = None, layout: Any = None) -> dict[str, list[str]]:
    """Check the runs ``labels`` (``sub-01_ses-01_run-1``) of ``output_dir``; mark failures.

    ``subject`` limits the search to one participant (``layout``: a pybids layout of
    ``output_dir`` to reuse). When ``loaded_runs`` is a dict, each
    checked run's :class:`~.summaries.LoadedRun` is stored in it under its label, so the
    report can reuse the maps instead of reading them again.
    Returns ``{label: reasons}`` for the runs that failed.
    """
    output_dir = Path(output_dir)
    wanted = set(labels)
    failed = {}
    for run in find_runs(output_dir, subject, layout=layout):
        if run.label not in wanted:
            continue
        loaded = load_run(run)
        if loaded_runs is not None:
            loaded_runs[run.label] = loaded
        reasons = qc_failures(run_summary(loaded))
        if reasons:
            mark_failed(output_dir, run.label, reasons)
            failed[run.label] = reasons
    return failed
