"""After the workflow: methods boilerplate, post-fit QC gate, HTML reports, warnings summary."""
from __future__ import annotations

import logging
import sys

from ..config import Settings
from .errors import EXIT_FAILURE, EXIT_OK


LOGGER = logging.getLogger("qalas_bids")


def _subjects(settings: Settings, runs: list | None) -> list[str]:
    if runs:
        return sorted({r.subject for r in runs})
    if settings.participant_labels:
        return list(settings.participant_labels)
    return sorted(p.name[4:] for p in settings.output_dir.glob("sub-*") if p.is_dir())


def write_reports(settings: Settings, subjects: list[str], loaded_runs: dict | None = None,
                  layout=None, figure_workers: int | None = None) -> bool:
    """HTML report per participant (reads derivatives from disk, except the runs in
    ``loaded_runs``, label -> LoadedRun, already read by the QC gate). Returns success."""
    ok = True
    try:
        from ..reports.participant import make_participant_report
    except ImportError as exc:
        LOGGER.error("reports unavailable: %s", exc)
        return False
    for subject in subjects:
        try:
            path = make_participant_report(settings.output_dir, subject, bids_dir=settings.bids_dir,
                                           run_uuid=None if settings.reports_only else settings.run_uuid,
                                           loaded_runs=loaded_runs, layout=layout,
                                           workers=settings.nprocs if figure_workers is None else figure_workers)
            LOGGER.info("Report written: %s", path)
        except Exception as exc:  # a report problem must not hide the processing result
            LOGGER.error("report for sub-%s failed: %s: %s", subject, type(exc).__name__, exc)
            ok = False
    return ok


def run_sidecars(settings: Settings, runs: list) -> list[dict]:
    """T1map sidecar of each run as written (``{}`` before the fit) plus its ``entities``."""
    import json

    from ..bids import derivative_path

    out = []
    for run in runs:
        sidecar = settings.output_dir / derivative_path(run.entities, "T1map", extension=".json")
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            meta = {"FitMode": settings.fit_mode}
        out.append({**meta, "entities": dict(run.entities)})
    return out


def write_boilerplate(settings: Settings, runs: list) -> None:
    """``logs/CITATION.{md,html,bib}`` describing every run in the output directory.

    Runs of this invocation come from its settings and sidecars; runs that other
    invocations (other array tasks) wrote into the same output directory are read back, so
    the text counts every participant. Done under the output's shared-file lock.
    """
    from ..bids.derivatives import shared_file_lock
    from ..reports.boilerplate import runs_from_derivatives, write_citation_files

    def key(run: dict) -> tuple:
        ents = run.get("entities") or {}
        return tuple(str(ents.get(k) or "") for k in ("subject", "session", "acquisition", "run"))

    with shared_file_lock(settings.output_dir):
        mine = run_sidecars(settings, runs)
        seen = {key(r) for r in mine}
        others = [r for r in runs_from_derivatives(settings.output_dir) if key(r) not in seen]
        paths = write_citation_files(settings.output_dir, settings.as_dict(), mine + others)
    LOGGER.info("Methods boilerplate written: %s", paths.get("md"))


def qc_gate(settings: Settings, runs: list, *, subject: str | None = None,
            loaded_runs: dict | None = None, layout=None) -> int:
    """Mark runs with implausible maps failed-QC (sidecars, report); their exit status.

    ``subject``, ``loaded_runs`` and ``layout`` are passed to :func:`~qalas_bids.reports.qc_gate.apply_qc_gate`.
    """
    from ..reports.qc_gate import EXIT_QC_FAILED, apply_qc_gate

    failed = apply_qc_gate(settings.output_dir, [run.label for run in runs], subject=subject,
                           loaded_runs=loaded_runs, layout=layout)
    for label, reasons in failed.items():
        LOGGER.error("%s failed QC: %s (marked in its sidecars and report)", label, "; ".join(reasons))
    if not failed:
        return EXIT_OK
    if settings.accept_qc_failures:
        LOGGER.warning("%d run(s) failed QC; exit status 0 because of --accept-qc-failures", len(failed))
        return EXIT_OK
    print(f"qalas-bids: {len(failed)} run(s) failed QC (exit status {EXIT_QC_FAILED}): "
          + ", ".join(failed) + "; pass --accept-qc-failures to exit 0 anyway", file=sys.stderr)
    return EXIT_QC_FAILED


def qc_and_reports(settings: Settings, runs: list, status: int) -> int:
    """Per participant: the QC gate (only after a successful workflow), then the report,
    which reuses the maps the gate read. Participants run side by side in ``--nprocs``
    processes (one participant: its figures do). Returns the updated exit status."""
    from ..reports.collect import output_layout
    from ..utils.parallel import fork_map

    workflow_ok = status == EXIT_OK
    subjects = _subjects(settings, runs)
    figure_workers = settings.nprocs if len(subjects) == 1 else 1

    def one(index: int) -> tuple[int, bool, bool]:
        """(QC verdict, QC crashed, report written) of one participant."""
        subject, loaded = subjects[index], {}
        try:
            layout = output_layout(settings.output_dir)  # one index for the gate and the report
        except Exception:  # no outputs at all: the report says so below
            layout = None
        verdict, crashed = EXIT_OK, False
        if workflow_ok:
            try:
                verdict = qc_gate(settings, [r for r in runs if r.subject == subject], subject=subject,
                                  loaded_runs=loaded, layout=layout)
            except Exception as exc:  # a QC problem must not hide finished maps
                LOGGER.error("post-fit QC of sub-%s could not run: %s: %s", subject, type(exc).__name__, exc)
                crashed = True
        written = write_reports(settings, [subject], loaded_runs=loaded, layout=layout,
                                figure_workers=figure_workers)
        return verdict, crashed, written

    for verdict, crashed, written in fork_map(one, len(subjects), settings.nprocs):
        status = EXIT_FAILURE if crashed else status or verdict
        if not written:
            status = status or EXIT_FAILURE
    return status


def summarise_warnings(settings: Settings, runs: list) -> None:
    """Repeat every warning recorded in this invocation's sidecars at the end of the run."""
    found = [(run, warning) for run, meta in zip(runs, run_sidecars(settings, runs))
             for warning in meta.get("Warnings", []) or []]
    if not found:
        return
    LOGGER.warning("%d warning(s) recorded in the sidecars of %d run(s) (also in the reports):", len(found),
                   len({run.label for run, _ in found}))
    for run, warning in found:
        LOGGER.warning("  %s: %s", run.label, warning)
