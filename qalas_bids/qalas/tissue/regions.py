"""Per-region statistics of the maps for atlas tables: one row per atlas region.

Values are taken over the region's *reliable* voxels (:func:`.classes.reliable_voxels`: not
at a range bound, residual and relative CRLB below their limits), in the maps' units
(seconds for T1/T2).
"""
from __future__ import annotations

import numpy as np

#: Map keys and their column prefixes.
MAP_COLUMNS = (("t1", "T1_s"), ("t2", "T2_s"), ("pd", "PD"), ("ie", "IE"))


def region_rows(labels: np.ndarray, names: dict[int, str], maps: dict[str, np.ndarray],
                reliable: np.ndarray) -> list[dict]:
    """One dict per region of ``names``: index, name, voxel counts, and median, mean and IQR
    (75th - 25th percentile) of each map over the reliable voxels (NaN when there are none)."""
    labels = np.asarray(labels)
    rows = []
    for index, name in sorted(names.items()):
        region = labels == index
        use = region & reliable
        row = {"index": int(index), "name": name, "voxels": int(region.sum()),
               "reliable_voxels": int(use.sum())}
        for key, column in MAP_COLUMNS:
            values = np.asarray(maps[key])[use]
            if values.size:
                q25, q50, q75 = np.percentile(values, [25, 50, 75])
                row.update({f"{column}_median": float(q50), f"{column}_mean": float(values.mean()),
                            f"{column}_iqr": float(q75 - q25)})
            else:
                row.update({f"{column}_{stat}": float("nan") for stat in ("median", "mean", "iqr")})
        rows.append(row)
    return rows


def rows_to_tsv(rows: list[dict]) -> str:
    """Tab-separated text of ``rows`` (``n/a`` for NaN, BIDS style)."""
    if not rows:
        return ""
    columns = list(rows[0])

    def cell(value) -> str:
        if isinstance(value, float):
            return "n/a" if np.isnan(value) else f"{value:.6g}"
        return str(value)

    return "\n".join(["\t".join(columns)] + ["\t".join(cell(r[c]) for c in columns) for r in rows]) + "\n"


def read_label_table(text: str) -> dict[int, str]:
    """``index``/``name`` of a BIDS ``dseg.tsv`` (or FreeSurfer-style ``index name ...`` lines)."""
    lines = [line.split("\t") if "\t" in line else line.split() for line in text.splitlines() if line.strip()]
    if lines and not lines[0][0].lstrip("-").isdigit():
        header = lines.pop(0)
        i_index = header.index("index") if "index" in header else 0
        i_name = header.index("name") if "name" in header else 1
    else:
        i_index, i_name = 0, 1
    return {int(row[i_index]): row[i_name] for row in lines if len(row) > max(i_index, i_name)
            and int(row[i_index]) != 0}
