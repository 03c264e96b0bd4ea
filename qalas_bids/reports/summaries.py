"""Per-tissue summaries of a run's maps (shared by the participant report and group level)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from ..qalas.tissue.classes import LABELS, classify_tissues, reliable_voxels
from ..utils.nifti_io import read_array, read_arrays
from .collect import MAP_SUFFIXES, RunDerivatives

TISSUES = ("WM", "GM", "CSF")
MAP_UNITS = {"T1map": "s", "T2map": "s", "PDmap": "a.u.", "IEmap": "1"}
#: fMRIPrep/sMRIPrep ``dseg`` labels: 1 GM, 2 WM, 3 CSF.
FMRIPREP_DSEG = {"GM": 1, "WM": 2, "CSF": 3}
#: A run is flagged when its median relative residual in the brain exceeds this.
RESIDUAL_FLAG = 0.05


@dataclass
class LoadedRun:
    """Arrays of one run, all on the QALAS grid."""

    run: RunDerivatives
    reference: nib.Nifti1Image
    maps: dict[str, np.ndarray]
    crlb: dict[str, np.ndarray]
    residual: np.ndarray | None
    mask: np.ndarray
    labels: np.ndarray  # 0 bg, 1 CSF, 2 GM, 3 WM
    tissue_source: str
    head_mask: np.ndarray | None = None
    reliable: np.ndarray | None = None  # brain voxels usable for tissue values


def _load(path: Path) -> np.ndarray:
    return read_array(path, dtype=np.float64)


def _labels_from_fmriprep(derivatives_dir: Path, run: RunDerivatives, reference: nib.Nifti1Image):
    """(labels on the QALAS grid, description) from an fMRIPrep/sMRIPrep folder, or None."""
    from bids import BIDSLayout
    from nilearn.image import resample_to_img

    layout = BIDSLayout(str(derivatives_dir), validate=False, is_derivative=True)
    query = {"subject": run.entities["subject"], "extension": [".nii", ".nii.gz"]}
    ses = run.entities.get("session")
    query["session"] = ses if ses else None
    dseg = [f for f in layout.get(suffix="dseg", **query) if not f.entities.get("space")]
    brain = [f for f in layout.get(suffix="mask", desc="brain", **query)
             if not f.entities.get("space") and f.entities.get("datatype") == "anat"]
    if not dseg:
        return None
    seg = resample_to_img(dseg[0].path, reference, interpolation="nearest",
                          force_resample=True, copy_header=True)
    seg = np.asarray(seg.dataobj).round().astype(int)
    labels = np.zeros(seg.shape, dtype=np.int8)
    for name, value in FMRIPREP_DSEG.items():
        labels[seg == value] = LABELS[name]
    if brain:
        bm = resample_to_img(brain[0].path, reference, interpolation="nearest",
                             force_resample=True, copy_header=True)
        labels[np.asarray(bm.dataobj) <= 0] = 0
    msg = (f"Tissue classes from {Path(dseg[0].path).name} (fMRIPrep/sMRIPrep dseg), resampled "
           "to the QALAS grid by the image affines only: NO registration was done.")
    warnings.warn(msg, stacklevel=2)
    return labels, msg


def load_run(run: RunDerivatives, derivatives_dir: str | Path | None = None) -> LoadedRun:
    """Load maps, uncertainty and mask of ``run`` and label its tissues.

    Tissues come from the fitted T1 (:func:`qalas_bids.qalas.tissue.classes.classify_tissues`) or,
    with ``derivatives_dir``, from the fMRIPrep/sMRIPrep ``dseg`` of the same subject/session.
    """
    reference = nib.load(str(run.maps["T1map"]))
    maps = dict(zip(run.maps, read_arrays(run.maps.values(), dtype=np.float64)))
    crlb = dict(zip(run.crlb, read_arrays(run.crlb.values(), dtype=np.float64)))
    residual = _load(run.residual) if run.residual else None
    mask = _load(run.mask) > 0 if run.mask else maps["T1map"] > 0
    head = _load(run.head_mask) > 0 if run.head_mask else None
    reliable = None
    if "T1map" in maps and "T2map" in maps:
        reliable = reliable_voxels(mask, maps["T1map"], maps["T2map"], maps.get("IEmap"),
                                   crlb.get("T1map"), residual)[0]
    labels = source = None
    if derivatives_dir is not None:
        found = _labels_from_fmriprep(Path(derivatives_dir), run, reference)
        if found is not None:
            labels, source = found
    if labels is None:
        classes = classify_tissues(maps["T1map"], mask)
        labels, source = classes.labels, classes.description
        if derivatives_dir is not None:
            source = f"No dseg for this session in {derivatives_dir}; " + source
    return LoadedRun(run, reference, maps, crlb, residual, mask, labels, source, head, reliable)


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"median": float("nan"), "iqr": float("nan"), "n": 0}
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(med), "iqr": float(q3 - q1), "n": int(values.size)}


def tissue_table(loaded: LoadedRun) -> dict[str, dict[str, dict[str, float]]]:
    """``{tissue: {map suffix: {median, iqr, n}}}`` over the labelled voxels that
    :func:`~qalas_bids.qalas.tissue.classes.reliable_voxels` keeps (no bound, residual or CRLB outliers)."""
    table = {}
    for tissue in TISSUES:
        sel = (loaded.labels == LABELS[tissue]) & loaded.mask
        if loaded.reliable is not None:
            sel &= loaded.reliable
        table[tissue] = {k: _stats(loaded.maps[k][sel]) for k in MAP_SUFFIXES if k in loaded.maps}
    return table


def run_summary(loaded: LoadedRun) -> dict[str, Any]:
    """One flat row: per-tissue median/IQR of each map, residual/CRLB summaries, QC flags."""
    ents = loaded.run.entities
    row: dict[str, Any] = {
        "participant_id": f"sub-{ents['subject']}",
        "session_id": f"ses-{ents['session']}" if ents.get("session") else "n/a",
        "acquisition": ents.get("acquisition", "n/a"),
        "run": ents.get("run", "n/a"),
    }
    for tissue, maps in tissue_table(loaded).items():
        for suffix, st in maps.items():
            row[f"{suffix}_{tissue}_median"] = st["median"]
            row[f"{suffix}_{tissue}_iqr"] = st["iqr"]
        row[f"n_voxels_{tissue}"] = maps["T1map"]["n"] if "T1map" in maps else 0
    brain = loaded.mask
    if loaded.residual is not None:
        row["residual_median"] = float(np.median(loaded.residual[brain]))
        row["residual_p95"] = float(np.percentile(loaded.residual[brain], 95))
    else:
        row["residual_median"] = row["residual_p95"] = float("nan")
    parenchyma = brain & np.isin(loaded.labels, [LABELS["WM"], LABELS["GM"]])
    for suffix in ("T1map", "T2map"):
        if suffix in loaded.crlb and parenchyma.any():
            rel = loaded.crlb[suffix][parenchyma] / np.maximum(loaded.maps[suffix][parenchyma], 1e-6)
            row[f"crlb_rel_{suffix}_parenchyma_median"] = float(np.median(rel))
        else:
            row[f"crlb_rel_{suffix}_parenchyma_median"] = float("nan")
    side = loaded.run.sidecar
    row["fit_mode"] = side.get("FitMode", "n/a")
    row["n_warnings"] = len(side.get("Warnings", []) or [])
    row["qc_no_b1"] = int(loaded.run.b1 is None)
    row["qc_high_residual"] = int(np.isfinite(row["residual_median"]) and row["residual_median"] > RESIDUAL_FLAG)
    row["qc_failed"] = int((side.get("QC") or {}).get("Status") == "failed")
    return row


def column_dictionary(columns: Sequence[str], fixed: dict[str, dict[str, str]],
                      describe: Callable[[str], dict[str, str] | None]) -> dict[str, dict[str, str]]:
    """BIDS-style JSON data dictionary of TSV ``columns``: ``fixed`` entries first, then
    ``describe(column)`` for the others (``{"Description": column}`` when it returns None)."""
    return {col: fixed.get(col) or describe(col) or {"Description": col} for col in columns}


def html_table(table: "pd.DataFrame", columns: Sequence[str],
               fmt: Callable[[str, float], str] = lambda col, v: f"{v:.4g}",
               cell_class: Callable[[Any, str], str] = lambda idx, col: "") -> str:
    """HTML ``<table>`` of ``columns`` of ``table``: finite floats through ``fmt(column, value)``,
    other values as text; ``cell_class(row_index, column)`` names a CSS class (or "")."""
    import html
    import math

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = []
    for idx, row in table.iterrows():
        cells = []
        for col in columns:
            value = row[col]
            text = fmt(col, value) if isinstance(value, float) and math.isfinite(value) else str(value)
            cls = cell_class(idx, col)
            cells.append(f"<td{f' class={cls!r}' if cls else ''}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"
