"""Group level repeatability: ``group_repeatability.tsv`` (+ JSON dictionary, report section).

For every participant (and acquisition label) with two or more QALAS runs/sessions, per
tissue (WM, GM, CSF as labelled in each run) and map: the within-subject coefficient of
variation of the tissue medians across runs, and the voxel-wise RMSE between each later run
and the first one after resampling the later run to the first run's grid **by the image
affines only** (linear for maps, nearest neighbour for the mask; no registration, so head
motion between sessions inflates the RMSE but not the CoV).
"""
from __future__ import annotations

import html
import io
import math
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import pandas as pd

from ..bids.derivatives import atomic_write_text, write_json
from ..qalas.tissue.repeatability import voxelwise_rmse, within_subject_cov
from ..qalas.tissue.classes import LABELS
from .collect import MAP_SUFFIXES, RunDerivatives
from .summaries import MAP_UNITS, TISSUES, LoadedRun, column_dictionary, html_table, load_run

TSV_NAME = "group_repeatability.tsv"
METHOD_NOTE = ("Later runs were resampled to the first run's grid using the image affines only "
               "(linear interpolation for maps, nearest neighbour for masks); no registration was "
               "performed, so head motion between runs inflates the voxel-wise RMSE.")


def _on_reference(data: np.ndarray, img: nib.Nifti1Image, ref: nib.Nifti1Image, interpolation: str) -> np.ndarray:
    """``data`` (on ``img``'s grid) on ``ref``'s grid; unchanged when the grids are identical."""
    if data.shape == ref.shape[:3] and np.allclose(img.affine, ref.affine, atol=1e-4):
        return data
    from nilearn.image import resample_to_img

    moved = resample_to_img(nib.Nifti1Image(data.astype(np.float32), img.affine), ref,
                            interpolation=interpolation, force_resample=True, copy_header=True)
    return np.asarray(moved.dataobj, dtype=np.float64)


def _group_key(run: RunDerivatives) -> tuple[str, str]:
    return run.entities["subject"], run.entities.get("acquisition", "")


def subject_repeatability(runs: Sequence[LoadedRun]) -> list[dict[str, Any]]:
    """Rows (one per tissue) for the repeated runs of one participant (first run = reference)."""
    ref = runs[0]
    ents = ref.run.entities
    rows = []
    others = []
    for other in runs[1:]:
        mask = _on_reference(other.mask.astype(np.float32), other.reference, ref.reference, "nearest") > 0.5
        maps = {k: _on_reference(v, other.reference, ref.reference, "linear") for k, v in other.maps.items()}
        others.append((mask, maps))
    for tissue in TISSUES:
        row: dict[str, Any] = {
            "participant_id": f"sub-{ents['subject']}",
            "acquisition": ents.get("acquisition", "n/a"),
            "tissue": tissue,
            "n_runs": len(runs),
            "runs": ";".join(r.run.label for r in runs),
        }
        ref_sel = (ref.labels == LABELS[tissue]) & ref.mask
        n_compared = []
        for suffix in MAP_SUFFIXES:
            medians = []
            for r in runs:
                sel = (r.labels == LABELS[tissue]) & r.mask
                medians.append(float(np.median(r.maps[suffix][sel])) if suffix in r.maps and sel.any() else np.nan)
            row[f"{suffix}_median_mean"] = float(np.nanmean(medians)) if np.isfinite(medians).any() else np.nan
            row[f"{suffix}_wcov"] = within_subject_cov(np.array(medians))
            sq, counts = [], []
            for mask, maps in others:
                sel = ref_sel & mask
                if suffix in maps and suffix in ref.maps and sel.any():
                    sq.append(voxelwise_rmse(ref.maps[suffix], maps[suffix], sel) ** 2)
                    counts.append(int(sel.sum()))
            row[f"{suffix}_rmse"] = float(math.sqrt(np.mean(sq))) if sq else np.nan
            n_compared = counts or n_compared
        row["n_voxels_compared"] = int(min(n_compared)) if n_compared else 0
        rows.append(row)
    return rows


def repeatability_table(runs: Sequence[RunDerivatives],
                        derivatives_dir: str | Path | None = None) -> pd.DataFrame:
    """All participants with >= 2 runs (same acquisition label); empty frame when none.

    Runs are loaded one participant at a time (:func:`~.summaries.load_run`, same tissue
    labels as the group table), so memory stays bounded by one participant's runs.
    """
    groups: dict[tuple[str, str], list[RunDerivatives]] = {}
    for run in runs:
        groups.setdefault(_group_key(run), []).append(run)
    rows = []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda r: r.label)
        if len(members) >= 2:
            rows.extend(subject_repeatability([load_run(r, derivatives_dir) for r in members]))
    return pd.DataFrame(rows)


def data_dictionary(columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """BIDS-style JSON description of every column of ``group_repeatability.tsv``."""
    fixed = {
        "participant_id": {"Description": "participant label"},
        "acquisition": {"Description": "acq entity shared by the repeated runs (n/a when absent)"},
        "tissue": {"Description": "tissue class (labels of each run: fitted-T1 classes or fMRIPrep dseg)"},
        "n_runs": {"Description": "number of runs/sessions of this participant compared"},
        "runs": {"Description": "runs compared, the first one is the reference grid"},
        "n_voxels_compared": {"Description": "voxels of the tissue (reference run) inside every "
                              "later run's resampled mask, used for the RMSE"},
    }

    def describe(col: str) -> dict[str, str] | None:
        suffix, stat = col.split("_", 1)
        units = MAP_UNITS.get(suffix, "")
        if stat == "median_mean":
            return {"Description": f"mean over runs of the median {suffix} in the tissue", "Units": units}
        if stat == "wcov":
            return {"Description": f"within-subject coefficient of variation of the median {suffix} "
                    "across runs: sample SD (ddof=1) / mean", "Units": "1"}
        if stat == "rmse":
            return {"Description": f"voxel-wise RMSE of {suffix} between the first run and each later "
                    f"run (RMS over later runs), in the tissue of the first run. {METHOD_NOTE}",
                    "Units": units}
        return None

    return column_dictionary(columns, fixed, describe)


def html_section(table: pd.DataFrame) -> str:
    """The 'Repeatability' section of the group report (HTML fragment)."""
    head = "<h2 id='repeatability'>Repeatability</h2>"
    if table.empty:
        return head + "<p>No participant has two or more QALAS runs or sessions: nothing to compare.</p>"
    shown = ["participant_id", "tissue", "n_runs"] + [f"{s}_wcov" for s in MAP_SUFFIXES] + [
        f"{s}_rmse" for s in MAP_SUFFIXES]
    shown = [c for c in shown if c in table]
    fmt = lambda col, v: f"{100 * v:.2f} %" if col.endswith("_wcov") else f"{v:.4g}"  # noqa: E731
    return (head + f"<p>{table['participant_id'].nunique()} participant(s) with repeated runs. Within-subject "
            "CoV of the tissue medians across runs and voxel-wise RMSE between runs (map units).</p>"
            f"<p class='note'>{html.escape(METHOD_NOTE)}</p>"
            f"<div style='overflow-x:auto'>{html_table(table, shown, fmt=fmt)}</div>"
            f"<p>Full table: <a href='{TSV_NAME}'>{TSV_NAME}</a>.</p>")


def write_repeatability(out_dir: str | Path, runs: Sequence[RunDerivatives],
                        derivatives_dir: str | Path | None = None) -> tuple[dict[str, Path], str]:
    """Write ``group_repeatability.tsv``/``.json`` when some participant has repeated runs.

    Returns ``({"repeatability_tsv", "repeatability_json"} paths (empty when nothing to
    compare), HTML section)``.
    """
    out_dir = Path(out_dir)
    table = repeatability_table(runs, derivatives_dir)
    section = html_section(table)
    if table.empty:
        return {}, section
    buf = io.StringIO()
    table.to_csv(buf, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    paths = {
        "repeatability_tsv": atomic_write_text(out_dir / TSV_NAME, buf.getvalue()),
        "repeatability_json": write_json(out_dir / TSV_NAME.replace(".tsv", ".json"),
                                         data_dictionary(list(table.columns))),
    }
    return paths, section
