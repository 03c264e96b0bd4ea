"""Running the nipype workflow: global configuration, plugins, Ctrl-C, crash files, timing."""
from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path

from ..config import Settings
from .errors import EXIT_INTERRUPTED


LOGGER = logging.getLogger("qalas_bids")


#: Seconds between two scheduling rounds of nipype's MultiProc loop (nipype's default is 2 s,
#: which adds up to 2 s of idle time per node; the loop itself costs microseconds). Cluster
#: plugins keep nipype's default: each of their rounds asks the scheduler.
MULTIPROC_POLL_S = 0.1


def configure_nipype(settings: Settings) -> None:
    """Global nipype configuration (set before any workflow is built)."""
    from nipype import config as ncfg
    from nipype import logging as nlogging

    ncfg.update_config({
        "execution": {
            "crashdump_dir": str(settings.output_dir / "logs" / settings.run_uuid),
            "crashfile_format": "txt",
            "hash_method": "content",
            "remove_unnecessary_outputs": True,
            "stop_on_first_crash": settings.stop_on_first_crash,
            "check_version": False,
            "get_linked_libs": False,
            "parameterize_dirs": False,
            **({"poll_sleep_duration": MULTIPROC_POLL_S} if settings.plugin == "MultiProc" else {}),
        },
        "monitoring": {"enabled": False},
        "logging": {
            "workflow_level": "DEBUG" if settings.verbose >= 2 else "INFO" if settings.verbose else "WARNING",
            "interface_level": "DEBUG" if settings.verbose >= 2 else "WARNING",
            "utils_level": "WARNING",
            "log_to_file": False,
        },
    })
    nlogging.update_logging(ncfg)


def find_crash_files(settings: Settings) -> list[Path]:
    patterns = [f"sub-*/log/{settings.run_uuid}/crash-*", f"logs/{settings.run_uuid}/crash-*"]
    return sorted(p for pat in patterns for p in settings.output_dir.glob(pat))


INTERRUPTED_MESSAGE = "qalas-bids: interrupted (Ctrl-C); finished outputs are kept, re-run to complete"


def quiet_interrupts() -> None:
    """Ctrl-C while the workflow runs: one line and exit 130, at once.

    The main process and the MultiProc workers forked from it leave immediately (no
    traceback per worker, no "broken process pool" from nipype's callbacks). Nothing is
    lost: derivatives are written atomically (leftover temporaries are removed by the next
    run), the dataset files were written before the workflow, locks die with the process.
    An ignored SIGINT (background jobs) stays ignored.
    """
    import os
    import signal

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return
    main_pid = os.getpid()

    def on_sigint(signum, frame):
        if os.getpid() == main_pid:
            sys.stderr.write(INTERRUPTED_MESSAGE + "\n")
            sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, on_sigint)


def run_workflow(workflow, settings: Settings):
    """Run with the chosen plugin; with SLURMGraph, also wait for the submitted jobs.

    Returns nipype's execution graph. Raises ``RuntimeError`` when nodes failed (nipype's
    own error for local plugins; for SLURMGraph, nodes left without a result file).
    """
    import time as _time

    started = _time.time()
    quiet_interrupts()
    # nipype's MultiProc loop calls gc.collect() before each submission round; with torch,
    # nilearn and pybids loaded that full collection took ~0.2 s (57 rounds, 10 s of a 1 mm
    # run). Objects alive now live as long as the process: freeze them out of collections.
    gc.freeze()
    try:
        execgraph = workflow.run(plugin=settings.plugin, plugin_args=dict(settings.plugin_args))
    finally:
        gc.unfreeze()
    if settings.plugin == "SLURMGraph":
        from ..utils.slurm_wait import submitted_job_names, wait_for_slurm_jobs

        wait_for_slurm_jobs(submitted_job_names(settings.work_dir, started))
        missing = [node.fullname for node in execgraph.nodes()
                   if not (Path(node.output_dir()) / f"result_{node.name}.pklz").is_file()]
        if missing:
            raise RuntimeError(f"{len(missing)} node(s) of the SLURM jobs did not finish: "
                               + ", ".join(missing[:5]) + " (see the job logs under the work "
                               "directory's batch/ folder)")
    return execgraph


def report_timing(settings: Settings, clock, execgraph) -> None:
    """Print the stage-timing table (unless ``-q``) and write ``logs/timing-<run>.json``."""
    from .stage_timing import format_table, node_times, write_timing_json

    rows = list(clock.rows)
    if execgraph is not None:
        rows += node_times(execgraph, clock.started)
    path = write_timing_json(settings.output_dir / "logs" / f"timing-{settings.run_uuid}.json", rows,
                             run_uuid=settings.run_uuid, device=settings.resolved_device,
                             plugin=settings.plugin, fit_mode=settings.fit_mode,
                             version=settings.version)
    if not settings.quiet:
        print(format_table(rows, title=f"qalas-bids stage timing (s; also in {path})"), file=sys.stderr)
