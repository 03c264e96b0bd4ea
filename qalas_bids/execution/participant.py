"""One participant-level invocation: checks -> workflow -> run -> boilerplate, QC and reports."""
from __future__ import annotations

import contextlib
import logging
import sys

from ..config import Settings
from .errors import EXIT_FAILURE, EXIT_OK
from .finish import _subjects, qc_and_reports, summarise_warnings, write_boilerplate, write_reports
from .nipype_run import configure_nipype, find_crash_files, report_timing, run_workflow
from .prework import check_device, discover_runs, lock_work_dirs, prepare_inputs, prepare_spaces


LOGGER = logging.getLogger("qalas_bids")


def run_participant(settings: Settings) -> int:
    from ..bids import make_layout, write_bidsignore, write_dataset_description
    from ..bids.derivatives import remove_stale_temporaries
    from ..bids.validation import validate_bids
    from .stage_timing import StageClock

    clock = StageClock()
    with clock.stage("device check"):
        settings = check_device(settings)
    if settings.reports_only:
        return EXIT_OK if write_reports(settings, _subjects(settings, None)) else EXIT_FAILURE
    with clock.stage("preflight (validation, discovery)"):
        if not settings.skip_bids_validation:
            validate_bids(settings.bids_dir)
        layout = make_layout(settings.bids_dir, work_dir=settings.work_dir)  # one pybids index
        runs = discover_runs(settings, layout)
        runs = prepare_spaces(settings, runs, layout)  # T1w, derivatives, templates: exit 2 before work

    status = EXIT_OK
    execgraph = None
    with contextlib.ExitStack() as work_locks:  # released on every way out, Ctrl-C included
        if not settings.boilerplate_only:
            lock_work_dirs(settings, runs, work_locks)
            with clock.stage("input checks (read once: order, head mask, B1)"):
                runs = prepare_inputs(settings, runs)
        configure_nipype(settings)
        settings.output_dir.mkdir(parents=True, exist_ok=True)
        for stale in remove_stale_temporaries(settings.output_dir, _subjects(settings, runs)):
            LOGGER.info("removed a temporary file left by an interrupted run: %s", stale)
        write_dataset_description(settings.output_dir, settings.bids_dir, settings.derivative_sources)
        write_bidsignore(settings.output_dir)
        LOGGER.info("Settings written to %s", settings.write_json())
        if settings.boilerplate_only:
            write_boilerplate(settings, runs)
            return EXIT_OK
        from ..workflows.base import init_qalas_bids_wf

        with clock.stage("workflow build"):
            workflow = init_qalas_bids_wf(settings=settings, runs=runs)
        try:
            LOGGER.info("Running %s with the %s plugin %s (work dir %s)", workflow.name,
                        settings.plugin, settings.plugin_args, settings.work_dir)
            with clock.stage("workflow run (all nodes, wall)"):
                execgraph = run_workflow(workflow, settings)
        except Exception as exc:  # nipype raises RuntimeError after running what it could
            status = EXIT_FAILURE
            crashes = find_crash_files(settings)
            LOGGER.critical("Processing failed: %s", exc)
            for crash in crashes:
                LOGGER.critical("Crash file: %s", crash)
                print(f"qalas-bids: crash file: {crash}", file=sys.stderr)
            if not crashes:
                LOGGER.critical("No crash file found under %s", settings.output_dir)
        finally:
            write_dataset_description(settings.output_dir, settings.bids_dir, settings.derivative_sources)
            write_bidsignore(settings.output_dir)
        with clock.stage("boilerplate, QC gate and reports"):
            try:
                write_boilerplate(settings, runs)
            except Exception as exc:
                LOGGER.error("boilerplate failed: %s: %s", type(exc).__name__, exc)
                status = status or EXIT_FAILURE
            status = qc_and_reports(settings, runs, status)
        try:
            report_timing(settings, clock, execgraph)
        except Exception as exc:  # informative only: never changes the exit status
            LOGGER.warning("stage timing not written: %s: %s", type(exc).__name__, exc)
    summarise_warnings(settings, runs)
    if status == EXIT_OK:
        LOGGER.info("qalas-bids finished successfully: outputs in %s", settings.output_dir)
    return status
