"""Group level: the per-run atlas ROI tables gathered into one long table per atlas
(participant x session x run x space x region x map), and their HTML section."""
from __future__ import annotations

import html
import io
from pathlib import Path

import pandas as pd

from ..bids.derivatives import atomic_write_text

_ENTITY_KEYS = {"sub": "participant_id", "ses": "session_id", "acq": "acquisition", "run": "run",
                "space": "space", "cohort": "cohort", "res": "res", "atlas": "atlas"}
MAPS = ("T1_s", "T2_s", "PD", "IE")


def _entities(name: str) -> dict[str, str]:
    out = {}
    for part in name.split("_"):
        key, _, value = part.partition("-")
        if key in _ENTITY_KEYS and value:
            out[_ENTITY_KEYS[key]] = f"sub-{value}" if key == "sub" else value
    return out


def long_atlas_tables(out_dir: Path) -> dict[str, pd.DataFrame]:
    """``{atlas: long table}`` from every ``sub-*/**/*_atlas-*_stat-summary_qmri.tsv``."""
    frames: dict[str, list[pd.DataFrame]] = {}
    for path in sorted(out_dir.glob("sub-*/**/*_atlas-*_stat-summary_qmri.tsv")):
        wide = pd.read_csv(path, sep="\t", na_values="n/a")
        ents = _entities(path.name)
        rows = []
        for m in MAPS:
            part = wide[["index", "name", "voxels", "reliable_voxels"]].copy()
            part["map"] = m
            for stat in ("median", "mean", "iqr"):
                part[stat] = wide[f"{m}_{stat}"]
            rows.append(part)
        long = pd.concat(rows, ignore_index=True)
        for key, value in reversed(list(ents.items())):
            long.insert(0, key, value)
        frames.setdefault(ents.get("atlas", "unknown"), []).append(long)
    return {atlas: pd.concat(parts, ignore_index=True) for atlas, parts in frames.items()}


def write_atlas_tables(out_dir: Path) -> tuple[dict[str, Path], str]:
    """Write ``group_atlas-<label>_stat-summary_qmri.tsv`` per atlas; returns paths and HTML."""
    paths, sections = {}, []
    for atlas, table in sorted(long_atlas_tables(out_dir).items()):
        buf = io.StringIO()
        table.to_csv(buf, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
        name = f"group_atlas-{atlas}_stat-summary_qmri.tsv"
        paths[f"atlas_{atlas}"] = atomic_write_text(out_dir / name, buf.getvalue())
        medians = table.pivot_table(index=["participant_id", "space", "name"], columns="map",
                                    values="median", aggfunc="first")
        sections.append(f"<h3>Atlas {html.escape(atlas)}</h3><p>Regional medians over the reliable voxels "
                        f"(T1, T2 in s). Full long table: <a href='{name}'>{name}</a>.</p>"
                        + medians.to_html(float_format=lambda v: f"{v:.4g}", na_rep="n/a"))
    if not sections:
        return paths, ""
    return paths, "<h2 id='atlases'>Atlas ROI tables</h2>" + "".join(sections)
