"""pybids layout creation and ``--bids-filter-file`` parsing.

The layout is built with ``validate=False``: QALAS (suffix ``QALAS``) is not in the BIDS
specification yet, so pybids' validator would drop the very files we need. pybids 0.22's
default ``bids`` config already knows the ``inv`` entity (``inv-<index>``, MP2RAGE style)
and takes any alphanumeric suffix, so ``layout.get(suffix="QALAS", inv=...)`` works without
a custom config; the app adds its own checks on top (see :mod:`.discovery`).

The SQLite index lives in memory, one per invocation: participants started at the same
time with the same work directory (an array job) never share, lock or corrupt an index
file, and a re-run always sees files added since. Nothing is written inside ``bids_dir``.

Filter file (``--bids-filter-file``, fMRIPrep format): a JSON object whose keys name the
queries and whose values are pybids entity filters added to them::

    {"qalas": {"session": "01", "acquisition": null},
     "b1":    {"acquisition": ["anat", "famp"], "run": 2}}

Keys: ``qalas`` (the QALAS volumes), ``b1`` (every B1+ candidate: TB1TFL, TB1map, AFI) and
``t1w`` (the raw T1w that ``--output-spaces`` registers to, e.g. ``{"t1w": {"acquisition":
"mprage"}}``; a ``session`` there takes the T1w of that session for every run).
Values: a string, integer, boolean, list of those, ``null`` (entity must be absent) or
``"*"`` (entity must be present, any value). ``suffix``, ``extension`` and ``datatype`` are
set by the app and cannot be filtered.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

from bids import BIDSLayout
from bids.layout import BIDSLayoutIndexer, Query

from ..qalas.errors import QalasInputError

#: Keys accepted at the top level of a ``--bids-filter-file``.
FILTER_KEYS = ("qalas", "b1", "t1w")
#: Entities the app sets itself (a filter on them would break the queries).
RESERVED_ENTITIES = ("suffix", "extension", "datatype")
#: Entities a filter may use (pybids ``bids`` config names).
FILTERABLE_ENTITIES = (
    "subject", "session", "acquisition", "reconstruction", "run", "inv", "part", "echo",
    "flip", "mt", "ceagent", "direction", "proc", "chunk", "space",
)

# Only anat/ and fmap/ hold what we need: skipping the other datatypes keeps indexing fast
# on large cohorts (HBCD-sized datasets have thousands of func/dwi files).
_IGNORE = [
    re.compile(r"^/(code|models|sourcedata|stimuli|derivatives)(/|$)"),
    re.compile(r"/\."),
    re.compile(r"/(func|dwi|perf|beh|eeg|meg|ieeg|pet|micr|nirs|motion|mrs)/"),
]


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def _ignored(rel: str) -> bool:
    return any(pattern.search(rel) for pattern in _IGNORE)


def indexed_json_files(bids_dir: Path) -> list[Path]:
    """The JSON files pybids will read from ``bids_dir`` (the same ignore rules)."""
    found = []
    for folder, dirs, files in os.walk(bids_dir):
        here = Path(folder).relative_to(bids_dir)
        rel = "" if here == Path(".") else "/" + here.as_posix()
        dirs[:] = sorted(d for d in dirs if not _ignored(f"{rel}/{d}/"))
        found += [Path(folder) / f for f in sorted(files)
                  if f.endswith(".json") and not _ignored(f"{rel}/{f}")]
    return found


def _json_problem(path: Path) -> str | None:
    """Why ``path`` is not a usable BIDS sidecar (a JSON object), or None."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if raw.startswith(b"\xef\xbb\xbf"):
        return "starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without BOM"
    if not raw.strip():
        return "is empty; a sidecar must be a JSON object such as {\"RepetitionTime\": 2.4}"
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"is not UTF-8 text (byte {exc.start})"
    except json.JSONDecodeError as exc:
        return f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
            type(value), "a number")
        return (f"holds {kind} at its top level; a BIDS sidecar must be a JSON object "
                "({\"Key\": value, ...})")
    return None


def check_sidecars(bids_dir: str | Path) -> None:
    """Raise :class:`QalasInputError` naming every sidecar pybids could not index."""
    bids_dir = Path(bids_dir)
    problems = [(path, _json_problem(path)) for path in indexed_json_files(bids_dir)]
    problems = [(path, why) for path, why in problems if why]
    if problems:
        lines = "\n".join(f"  {path.relative_to(bids_dir)} {why}" for path, why in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise QalasInputError(
            f"{len(problems)} JSON file(s) in {bids_dir} are not valid BIDS sidecars:\n"
            f"{lines}{more}\nfix or remove them (the input dataset is never changed by qalas-bids)")


def make_layout(
    bids_dir: str | Path,
    work_dir: str | Path | None = None,
    reset_database: bool = True,
) -> BIDSLayout:
    """Index ``bids_dir`` with pybids (``validate=False``, metadata indexed).

    Parameters
    ----------
    bids_dir : the raw BIDS dataset (must contain ``dataset_description.json``)
    work_dir : the run's work directory, only checked to lie outside ``bids_dir`` (the
        index itself is kept in memory, never shared between invocations)
    reset_database : kept for API compatibility (an in-memory index is always fresh)
    """
    bids_dir = Path(bids_dir).absolute()
    if not bids_dir.is_dir():
        raise QalasInputError(f"BIDS directory {bids_dir} does not exist: check the bids_dir argument")
    if not (bids_dir / "dataset_description.json").is_file():
        raise QalasInputError(
            f"{bids_dir} is not a BIDS dataset: dataset_description.json is missing "
            "(add one with at least Name and BIDSVersion)"
        )
    if work_dir is not None and _inside(Path(work_dir).absolute(), bids_dir):
        raise QalasInputError(
            f"the work directory {work_dir} is inside the BIDS dataset {bids_dir}: "
            "choose a work directory (-w) outside the input dataset"
        )
    check_sidecars(bids_dir)
    indexer = BIDSLayoutIndexer(validate=False, ignore=_IGNORE, index_metadata=True)
    try:
        return BIDSLayout(str(bids_dir), validate=False, indexer=indexer, database_path=None,
                          reset_database=reset_database)
    except (ValueError, OSError) as exc:
        raise QalasInputError(f"pybids could not index {bids_dir}: {exc}") from exc


def _check_filter_value(key: str, entity: str, value: Any, source: str) -> Any:
    scalar = (str, int, bool, type(None))
    if isinstance(value, Query):  # already converted
        return value
    if isinstance(value, list):
        if not value or not all(isinstance(v, scalar) and v is not None for v in value):
            raise QalasInputError(
                f"{source}: filter '{key}.{entity}' must be a non-empty list of strings/numbers, "
                f"got {value!r}"
            )
        return value
    if isinstance(value, float) or not isinstance(value, scalar):
        raise QalasInputError(
            f"{source}: filter '{key}.{entity}' must be a string, integer, list, null or \"*\", "
            f"got {value!r}"
        )
    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    return value


def validate_bids_filters(filters: Any, source: str = "BIDS filters") -> dict[str, dict[str, Any]]:
    """Check a filter mapping (see module docstring) and convert null/"*" to pybids queries."""
    if not isinstance(filters, Mapping):
        raise QalasInputError(
            f"{source}: must be a JSON object like "
            '{"qalas": {"session": "01"}, "b1": {"acquisition": ["anat", "famp"]}}'
        )
    unknown = sorted(set(filters) - set(FILTER_KEYS))
    if unknown:
        raise QalasInputError(
            f"{source}: unknown key(s) {unknown}; valid keys are {list(FILTER_KEYS)}"
        )
    out: dict[str, dict[str, Any]] = {}
    for key, query in filters.items():
        if not isinstance(query, Mapping):
            raise QalasInputError(f"{source}: '{key}' must map entity names to values, got {query!r}")
        checked = {}
        for entity, value in query.items():
            if entity in RESERVED_ENTITIES:
                raise QalasInputError(
                    f"{source}: '{key}.{entity}' cannot be filtered (the app sets {entity}); "
                    "remove it"
                )
            if entity not in FILTERABLE_ENTITIES:
                raise QalasInputError(
                    f"{source}: '{key}.{entity}' is not a BIDS entity name pybids knows; use "
                    f"one of {list(FILTERABLE_ENTITIES)} (full names: 'acquisition', not 'acq')"
                )
            checked[entity] = _check_filter_value(key, entity, value, source)
        out[key] = checked
    return out


def load_bids_filters(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and validate a ``--bids-filter-file`` (JSON); raise :class:`QalasInputError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise QalasInputError(f"cannot read the BIDS filter file {path}: {exc.strerror or exc}") from exc
    try:
        filters = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QalasInputError(
            f"the BIDS filter file {path} is not valid JSON (line {exc.lineno}, column "
            f"{exc.colno}: {exc.msg})"
        ) from exc
    return validate_bids_filters(filters, source=str(path))
