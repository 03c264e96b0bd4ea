"""Group level: one TSV row per run, a JSON data dictionary and an HTML page with outliers.

Tissue classes come from each run's fitted T1 map (:mod:`qalas_bids.qalas.tissue.classes`: CSF =
T1 > 2.5 s, WM/GM split at the midpoint between the two T1-density peaks) unless an
fMRIPrep/sMRIPrep derivatives folder is given, whose ``dseg`` (1 GM, 2 WM, 3 CSF) and
``desc-brain_mask`` of the same subject/session are resampled to the QALAS grid by the
image affines (nearest neighbour) — no registration is done, and a warning says so.

Outliers: a value is flagged when its robust z-score ``0.6745·(x − median)/MAD`` across
runs exceeds 3.5 (Iglewicz & Hoaglin), computed for every per-tissue median column when
at least 4 runs are present; the MAD is floored at 1 % of the median.
"""
from __future__ import annotations

import html
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..bids.derivatives import atomic_write_text, write_bidsignore, write_json
from ..qalas.errors import QalasInputError
from .collect import MAP_SUFFIXES, find_runs
from .participant import render_page
from .summaries import MAP_UNITS, RESIDUAL_FLAG, TISSUES, column_dictionary, html_table, load_run, run_summary

LOGGER = logging.getLogger("qalas_bids")
TSV_NAME = "group_T1T2PDIE.tsv"
OUTLIER_Z = 3.5
MIN_RUNS_FOR_OUTLIERS = 4
MAD_FLOOR = 0.01


def data_dictionary(columns: list[str], tissue_source: str) -> dict[str, dict[str, str]]:
    """BIDS-style JSON description of every TSV column."""
    fixed = {
        "participant_id": {"Description": "participant label"},
        "session_id": {"Description": "session label (n/a without sessions)"},
        "acquisition": {"Description": "acq entity of the run (n/a when absent)"},
        "run": {"Description": "run entity (n/a when absent)"},
        "residual_median": {"Description": "median relative RMS residual of the fit in the brain mask", "Units": "1"},
        "residual_p95": {"Description": "95th percentile of the relative residual in the brain mask", "Units": "1"},
        "fit_mode": {"Description": "fit mode recorded in the T1map sidecar"},
        "n_warnings": {"Description": "number of warnings recorded in the T1map sidecar"},
        "qc_no_b1": {"Description": "1 when no B1+ map was used (B1 = 1 assumed)", "Levels": {"0": "B1 used", "1": "no B1"}},
        "qc_high_residual": {"Description": f"1 when residual_median > {RESIDUAL_FLAG}", "Levels": {"0": "ok", "1": "flagged"}},
        "qc_failed": {"Description": "1 when the run failed the participant level's post-fit QC gate "
                      "(QC.Status in its sidecars; WM median T1 outside 0.3-3 s or median residual > 15 %)",
                      "Levels": {"0": "passed", "1": "failed"}},
        "qc_outlier_columns": {"Description": f"columns whose robust z-score across runs exceeds {OUTLIER_Z} "
                               "(0.6745*(x - median)/MAD; only with at least 4 runs); n/a if none"},
    }

    def describe(col: str) -> dict[str, str] | None:
        parts = col.split("_")
        if col.startswith("n_voxels_"):
            return {"Description": f"number of {parts[-1]} voxels used (brain mask; voxels at a parameter "
                                   f"bound, with a residual > 0.1 or a relative T1 CRLB > 1 excluded). "
                                   f"{tissue_source}"}
        if col.startswith("crlb_rel_"):
            return {"Description": f"median CRLB standard deviation of {parts[2]} relative to {parts[2]} "
                    "in WM and GM", "Units": "1"}
        if parts[0] in MAP_SUFFIXES:
            stat = "median" if parts[-1] == "median" else "interquartile range"
            return {"Description": f"{stat} of {parts[0]} in {parts[1]} (reliable voxels only, see "
                                   f"n_voxels_{parts[1]})", "Units": MAP_UNITS[parts[0]]}
        return None

    return column_dictionary(columns, fixed, describe)


def dropped_participants(out_dir: Path, included: set[str]) -> dict[str, str]:
    """``sub-*`` folders of the output without a fitted run, with the likely reason."""
    dropped = {}
    for folder in sorted(p for p in out_dir.glob("sub-*") if p.is_dir()):
        if folder.name in included:
            continue
        crashes = sorted(folder.glob("log/*/crash*"))
        dropped[folder.name] = (f"no T1 map; the participant level crashed (latest crash file: "
                                f"{crashes[-1].relative_to(out_dir)})" if crashes else
                                "no T1 map (the participant level did not finish)")
    return dropped


def _dropped_html(dropped: dict[str, str]) -> str:
    if not dropped:
        return ""
    items = "".join(f"<li>{html.escape(p)}: {html.escape(r)}</li>" for p, r in dropped.items())
    return f"<h3>Participants left out</h3><ul>{items}</ul>"


def flag_outliers(table: pd.DataFrame) -> pd.DataFrame:
    """Boolean frame (same shape as the per-tissue median columns) of robust outliers."""
    cols = [c for c in table.columns if c.endswith("_median") and c.split("_")[0] in MAP_SUFFIXES]
    flags = pd.DataFrame(False, index=table.index, columns=cols)
    if len(table) < MIN_RUNS_FOR_OUTLIERS:
        return flags
    for c in cols:
        x = table[c].astype(float)
        med = x.median()
        mad = (x - med).abs().median()
        # floor: 1 % of the median, so that near-identical runs (phantom rescans) do not
        # turn measurement noise into "outliers"
        mad = max(mad if np.isfinite(mad) else 0.0, MAD_FLOOR * abs(med), 1e-12)
        flags[c] = (0.6745 * (x - med) / mad).abs() > OUTLIER_Z
    return flags


def _strip_plots(table: pd.DataFrame, flags: pd.DataFrame, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = [k for k in MAP_SUFFIXES if f"{k}_WM_median" in table]
    fig = Figure(figsize=(3.2 * len(keys), 3.0))
    FigureCanvasAgg(fig)
    rng = np.random.default_rng(0)
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for j, tissue in enumerate(TISSUES):
            col = f"{key}_{tissue}_median"
            x = j + 0.12 * rng.standard_normal(len(table))
            out = flags[col].to_numpy() if col in flags else np.zeros(len(table), bool)
            ax.scatter(x[~out], table[col][~out], s=14, color="tab:blue")
            ax.scatter(x[out], table[col][out], s=30, color="tab:red", marker="x")
        ax.set_xticks(range(len(TISSUES)), TISSUES)
        ax.set_title(f"{key[:-3]} ({MAP_UNITS[key]})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, facecolor="white")
    return path


def _html_table(table: pd.DataFrame, flags: pd.DataFrame) -> str:
    shown = ["participant_id", "session_id", "run"] + [c for c in table.columns if c.endswith("_median")] + [
        "qc_no_b1", "qc_high_residual", "qc_failed"]
    outlier = lambda idx, col: "outlier" if col in flags and flags.at[idx, col] else ""  # noqa: E731
    return f"<div style='overflow-x:auto'>{html_table(table, shown, cell_class=outlier)}</div>"


def run_group_level(output_dir: str | Path, derivatives_dir: str | Path | None = None) -> dict[str, Path]:
    """Summarise every run in ``output_dir``; returns ``{"tsv", "json", "html", "figure"}`` paths
    (plus ``repeatability_tsv``/``repeatability_json`` when a participant has repeated runs)."""
    out_dir = Path(output_dir).absolute()
    runs = find_runs(out_dir)
    if not runs:
        raise QalasInputError(f"no T1 maps found in {out_dir}: run the participant level before the group level.")
    rows, sources = [], set()
    for run in runs:
        loaded = load_run(run, derivatives_dir)
        rows.append(run_summary(loaded))
        sources.add(loaded.tissue_source.split(" (")[0] if derivatives_dir is None else loaded.tissue_source)
    table = pd.DataFrame(rows)
    dropped = dropped_participants(out_dir, set(table["participant_id"]))
    for participant, reason in dropped.items():
        LOGGER.warning("group level: %s left out: %s", participant, reason)
    flags = flag_outliers(table)
    table["qc_outlier_columns"] = [",".join(c for c in flags.columns if flags.at[i, c]) or "n/a" for i in table.index]
    buf = io.StringIO()
    table.to_csv(buf, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    tissue_source = " / ".join(sorted(sources))
    paths = {
        "tsv": atomic_write_text(out_dir / TSV_NAME, buf.getvalue()),
        "json": write_json(out_dir / TSV_NAME.replace(".tsv", ".json"), data_dictionary(list(table.columns), tissue_source)),
    }
    from .repeatability import write_repeatability

    rep_paths, rep_section = write_repeatability(out_dir, runs, derivatives_dir)
    paths.update(rep_paths)
    from .atlas_tables import write_atlas_tables

    atlas_paths, atlas_section = write_atlas_tables(out_dir)
    paths.update(atlas_paths)
    paths["figure"] = _strip_plots(table, flags, out_dir / "group" / "figures" / "group_desc-distributions_T1map.png")
    n_out = int(flags.to_numpy().sum())
    body = (f"<h2 id='summary'>Summary</h2><p>{len(table)} runs of {table['participant_id'].nunique()} participants. "
            f"{n_out} outlying values (red; robust z &gt; {OUTLIER_Z}"
            f"{'' if len(table) >= MIN_RUNS_FOR_OUTLIERS else f', needs at least {MIN_RUNS_FOR_OUTLIERS} runs'}).</p>"
            f"<p class='note'>{html.escape(tissue_source)}</p>"
            f"{_dropped_html(dropped)}"
            f"<h2 id='distributions'>Distributions</h2><img src='{paths['figure'].relative_to(out_dir).as_posix()}' "
            "alt='per-tissue medians'>"
            f"<h2 id='table'>Per-run values</h2>{_html_table(table, flags)}"
            f"<p>Full table: <a href='{TSV_NAME}'>{TSV_NAME}</a> (columns described in "
            f"<a href='{TSV_NAME.replace('.tsv', '.json')}'>{TSV_NAME.replace('.tsv', '.json')}</a>).</p>"
            + rep_section + atlas_section)
    page = render_page("qalas-bids group report", [("summary", "Summary"), ("distributions", "Distributions"),
                                                   ("table", "Table"),
                                                   ("repeatability", "Repeatability")]
                       + ([("atlases", "Atlas tables")] if atlas_section else []), body)
    paths["html"] = atomic_write_text(out_dir / TSV_NAME.replace(".tsv", ".html"), page)
    paths["bidsignore"] = write_bidsignore(out_dir)  # group_* and group/ are not BIDS files
    return paths
