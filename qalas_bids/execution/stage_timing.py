"""Per-stage timing of one invocation: a table printed at the end, a JSON under ``logs/``.

Stages are the invocation's own phases (preflight, workflow, reports) plus every nipype
node of the executed graph, read back from the node's result file (so it works for every
plugin, including nodes run as SLURM jobs), and the fit's own sub-stages (network or
dictionary, refinement, noise, CRLB, residual) from the fit node's sidecar output.
"""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator


@dataclass
class StageTime:
    """One row: ``scope`` (``run`` or a run label), ``stage`` name, ``seconds``, ``note``."""

    scope: str
    stage: str
    seconds: float
    note: str = ""


class StageClock:
    """Collects invocation-level stages: ``with clock.stage("preflight"): ...``."""

    def __init__(self) -> None:
        self.rows: list[StageTime] = []
        self.started = datetime.now().astimezone()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.rows.append(StageTime("invocation", name, time.perf_counter() - t0))


def _node_label(fullname: str) -> tuple[str, str]:
    """``wf.sub_01_wf.qalas_ses_01_run_1_wf.fit`` -> ``("sub_01/qalas_ses_01_run_1", "fit")``."""
    parts = fullname.split(".")
    scope = "/".join(p[:-3] if p.endswith("_wf") else p for p in parts[1:-1])
    return scope or "workflow", parts[-1]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.astimezone()


def node_times(execgraph: Any, since: datetime) -> list[StageTime]:
    """Rows for each node of a nipype execution graph that has a result file.

    Nodes whose result predates ``since`` were reused from the work directory and are
    marked ``cached``; the fit node adds its sub-stages (``fit: crlb`` ...).
    """
    from nipype.utils.filemanip import loadpkl

    rows: list[StageTime] = []
    for node in execgraph.nodes():
        result_file = Path(node.output_dir()) / f"result_{node.name}.pklz"
        if not result_file.is_file():
            continue
        try:
            result = loadpkl(result_file)
        except Exception:  # an unreadable result is not worth failing a finished run
            continue
        runtime = getattr(result, "runtime", None)
        duration = getattr(runtime, "duration", None)
        if duration is None:
            continue
        start = getattr(runtime, "startTime", None)
        cached = bool(start) and _aware(datetime.fromisoformat(start)) < _aware(since)
        scope, stage = _node_label(node.fullname)
        rows.append(StageTime(scope, stage, float(duration), "cached" if cached else ""))
        sidecar = getattr(getattr(result, "outputs", None), "sidecar", None)
        if node.name == "fit" and isinstance(sidecar, dict):  # its sub-stages (FitInfo.StageTimesSeconds)
            for sub, seconds in ((sidecar.get("FitInfo") or {}).get("StageTimesSeconds") or {}).items():
                rows.append(StageTime(scope, f"{stage}: {sub}", float(seconds), "cached" if cached else ""))
    return sorted(rows, key=lambda r: (r.scope, r.stage))


def format_table(rows: list[StageTime], title: str = "Stage timing") -> str:
    """Plain-text table (one line per row) with the seconds right-aligned."""
    if not rows:
        return f"{title}: nothing ran"
    w_scope = max(len(r.scope) for r in rows)
    w_stage = max(len(r.stage) for r in rows)
    lines = [f"{title}:", f"  {'scope':<{w_scope}}  {'stage':<{w_stage}}  {'seconds':>8}"]
    for r in rows:
        note = f"  ({r.note})" if r.note else ""
        lines.append(f"  {r.scope:<{w_scope}}  {r.stage:<{w_stage}}  {r.seconds:8.2f}{note}")
    return "\n".join(lines)


def write_timing_json(path: Path, rows: list[StageTime], **context: Any) -> Path:
    """``{"context": ..., "stages": [...]}`` written atomically."""
    from ..bids.derivatives import write_json

    return write_json(path, {**context, "stages": [asdict(r) for r in rows]})


def read_timing_json(path: Path) -> list[StageTime]:
    return [StageTime(**row) for row in json.loads(Path(path).read_text())["stages"]]
