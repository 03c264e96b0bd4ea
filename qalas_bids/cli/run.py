"""``qalas-bids`` entry point: parse -> settings -> checks -> workflow -> run -> reports.

Exit status: 0 success, 1 processing failure (crash files listed), 2 usage/input error
(one message, no traceback). The raw dataset is only read; outputs are written atomically
and never deleted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import sys
from pathlib import Path
from typing import Sequence

from ..config import Settings
from .parser import parse_args

LOGGER = logging.getLogger("qalas_bids")
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A user/input problem found after parsing (exit 2, message only)."""


def setup_logging(verbose: int, quiet: bool = False) -> None:
    """Timestamped log lines on stderr; ``-v`` nipype info, ``-vv`` debug, ``-q`` warnings only."""
    level = logging.DEBUG if verbose >= 2 else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format="%(asctime)s | %(levelname)-7s | %(name)s: %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S")
    logging.getLogger("qalas_bids").setLevel(level)
    for noisy in ("bids", "matplotlib", "PIL", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Library warnings (matplotlib/nilearn figure code, ...) are not the user's business:
    # logged with -v, silent otherwise. qalas-bids' own warnings go through its logger.
    logging.captureWarnings(True)
    logging.getLogger("py.warnings").setLevel(logging.WARNING if verbose else logging.ERROR)


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


def check_device(settings: Settings) -> Settings:
    """Resolve ``--device`` now (exit 2 when a requested GPU is missing).

    The check runs in a child process (:func:`~qalas_bids.qalas.device.probe_device`):
    CUDA initialised here would break every MultiProc worker forked later. When the fit
    runs on a GPU under MultiProc, the workers are started with ``spawn`` (unless the
    plugin YAML names an ``mp_context``), so no worker inherits a CUDA state either.
    """
    from ..qalas.device import probe_device

    info = probe_device(settings.device)
    LOGGER.info("Compute device: %s (requested %s)", info.describe(), settings.device)
    plugin_args = dict(settings.plugin_args)
    if info.is_cuda and settings.plugin == "MultiProc":
        plugin_args.setdefault("mp_context", "spawn")
    return settings.replace(resolved_device=info.device, plugin_args=plugin_args)


def check_flip_angle_known(settings: Settings, run) -> None:
    """A TurboFLASH famp map needs its nominal flip angle (sidecar or --b1-flip-angle)."""
    if run.b1.kind == "tfl" and settings.b1_flip_angle is None and not run.b1.metadata.get("FlipAngle"):
        raise UsageError(
            f"{run.label}: the B1 famp sidecar ({Path(run.b1.files['famp']).name}) has no "
            "FlipAngle: pass the B1 map's nominal flip angle with --b1-flip-angle "
            "(Siemens tfl_b1map default: 80)")


def discover_runs(settings: Settings) -> list:
    """Find every QALAS run and check what needs no image data (names, sidecars, timing,
    B1 pairing, network weights); :func:`prepare_inputs` checks the images."""
    from ..bids import collect_qalas_runs
    from ..qalas.errors import QalasInputError

    runs = collect_qalas_runs(
        settings.bids_dir,
        participant_labels=settings.participant_labels,
        session_labels=settings.session_labels,
        bids_filters=settings.bids_filters,
        require_b1=not settings.no_b1,
        vendor_preset=settings.vendor_preset,
        work_dir=settings.work_dir,
    )
    if not runs:
        raise UsageError("no QALAS runs selected: check --participant-label/--session-label and "
                         "--bids-filter-file")
    for run in runs:
        if run.b1 is not None and not settings.no_b1:
            check_flip_angle_known(settings, run)
        if settings.no_b1:
            if run.b1 is not None:
                LOGGER.warning("%s: a B1 map exists (%s) but --no-b1 was given: fitting with B1 = 1",
                               run.label, run.b1.reason)
            else:
                LOGGER.warning("%s: no B1 map (--no-b1): T2 and IE will be biased", run.label)
    if settings.fit_mode in ("pretrained", "fine-tune"):
        from ..qalas.pretrained import default_model_path

        model = Path(settings.model_path) if settings.model_path else default_model_path()
        if not model.is_file():
            raise UsageError(f"--fit-mode {settings.fit_mode} needs network weights, but {model} "
                             "does not exist: use --fit-mode scan-specific (trains on this scan) "
                             "or reinstall qalas-bids")
        if settings.model_path:  # refuse a model trained for another protocol before any work
            from ..qalas.cohort import check_model_compatibility

            for run in runs:
                if run.timing is not None:
                    check_model_compatibility(model, run.timing.timing, run.metadata,
                                              force=settings.force_model, label=run.label)
        elif settings.fit_mode == "pretrained":  # a shipped model for each run's vendor timing
            from ..qalas.pretrained import select_pretrained_model

            for run in runs:
                if run.timing is not None:
                    try:
                        chosen = select_pretrained_model(run.timing.timing)
                    except QalasInputError as exc:
                        raise UsageError(f"{run.label}: {exc}") from None
                    LOGGER.info("%s: pretrained model %s", run.label, chosen.name)
    LOGGER.info("%d QALAS run(s) of %d participant(s) selected", len(runs),
                len({r.subject for r in runs}))
    return runs


def prepare_inputs(settings: Settings, runs: list) -> list:
    """Read each run's images once and check them (exit 2 on bad data, before any work).

    The checked arrays (4D QALAS, head mask, B1 on the QALAS grid) are written to
    ``<work dir>/<workflow>/inputs/<run>/`` and are the workflow's inputs, so nothing is
    read twice. Returns the runs with ``prepared`` set and the checks' warnings added.
    """
    from ..bids.inputs_check import check_run_inputs, write_run_inputs
    from ..utils.parallel import fork_map
    from ..workflows.base import workflow_base_name

    folder = settings.work_dir / workflow_base_name(settings.version) / "inputs"

    def prepare(index: int):
        run = runs[index]
        checked = check_run_inputs(run, use_b1=not settings.no_b1, flip_angle_override=settings.b1_flip_angle,
                                   min_coverage=settings.b1_min_coverage)
        return write_run_inputs(checked, folder / run.label), checked.warnings

    prepared = []
    for run, (files, warnings) in zip(runs, fork_map(prepare, len(runs), settings.nprocs)):  # runs side by side
        for warning in warnings:
            LOGGER.warning("%s: %s", run.label, warning)
        prepared.append(dataclasses.replace(run, warnings=run.warnings + warnings, prepared=files))
    return prepared


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
    from ..utils.stage_timing import format_table, node_times, write_timing_json

    rows = list(clock.rows)
    if execgraph is not None:
        rows += node_times(execgraph, clock.started)
    path = write_timing_json(settings.output_dir / "logs" / f"timing-{settings.run_uuid}.json", rows,
                             run_uuid=settings.run_uuid, device=settings.resolved_device,
                             plugin=settings.plugin, fit_mode=settings.fit_mode,
                             version=settings.version)
    if not settings.quiet:
        print(format_table(rows, title=f"qalas-bids stage timing (s; also in {path})"), file=sys.stderr)


def lock_work_dirs(settings: Settings, runs: list, stack) -> None:
    """Hold one lock per participant in the work directory for the whole run.

    Different participants may share a work directory (their node folders differ); the
    same participant started twice with one work directory would overwrite its own
    intermediate files, so the second process is refused (exit 2) while the first runs.
    """
    from filelock import FileLock, Timeout

    from ..workflows.base import workflow_base_name

    folder = settings.work_dir / workflow_base_name(settings.version)
    folder.mkdir(parents=True, exist_ok=True)
    for subject in sorted({r.subject for r in runs}):
        lock = FileLock(str(folder / f".sub-{subject}.lock"))
        try:
            stack.enter_context(lock.acquire(timeout=0))
        except Timeout:
            raise UsageError(
                f"another qalas-bids process is already processing sub-{subject} with the work "
                f"directory {settings.work_dir}: wait for it to finish, or give this run its own "
                "work directory with -w") from None


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


def run_participant(settings: Settings) -> int:
    from ..bids import write_bidsignore, write_dataset_description
    from ..bids.derivatives import remove_stale_temporaries
    from ..utils.bids_validation import validate_bids
    from ..utils.stage_timing import StageClock

    clock = StageClock()
    with clock.stage("device check"):
        settings = check_device(settings)
    if settings.reports_only:
        return EXIT_OK if write_reports(settings, _subjects(settings, None)) else EXIT_FAILURE
    with clock.stage("preflight (validation, discovery)"):
        if not settings.skip_bids_validation:
            validate_bids(settings.bids_dir)
        runs = discover_runs(settings)

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
        write_dataset_description(settings.output_dir, settings.bids_dir)
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
            write_dataset_description(settings.output_dir, settings.bids_dir)
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


def run_group(settings: Settings) -> int:
    from ..reports.group import run_group_level

    written = run_group_level(settings.output_dir, derivatives_dir=settings.derivatives)
    for kind, path in written.items():
        LOGGER.info("group level %s: %s", kind, path)
    return EXIT_OK


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..qalas.errors import DeviceError, QalasInputError
    from ..qalas.timing import TimingError

    errors: list[type[BaseException]] = [UsageError, QalasInputError, DeviceError, TimingError,
                                         PermissionError]
    try:
        from ..bids.derivatives import OutputLocationError
        errors.append(OutputLocationError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``qalas-bids`` (returns and exits with the status code)."""
    opts = parse_args(argv)  # argparse exits 2 on usage errors
    settings = Settings.from_namespace(opts)
    setup_logging(settings.verbose, settings.quiet)
    from ..utils.environment import check_writable, prepare_environment

    try:
        check_writable(settings.work_dir)
        check_writable(settings.output_dir)  # read-only, or an existing file: exit 2 now
        prepare_environment(settings.work_dir, settings.omp_nthreads)
        user_errors = _user_errors()
    except PermissionError as exc:
        print(f"qalas-bids: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if settings.notrack:
        LOGGER.debug("--notrack: nothing to disable, qalas-bids never sends usage data")
    LOGGER.info("qalas-bids %s (%s level), run %s", settings.version, settings.analysis_level,
                settings.run_uuid)
    try:
        if settings.analysis_level == "group":
            status = run_group(settings)
        else:
            status = run_participant(settings)
    except user_errors as exc:
        print(f"qalas-bids: error: {exc}", file=sys.stderr)
        status = EXIT_USAGE
    except KeyboardInterrupt:
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        status = EXIT_INTERRUPTED
    sys.exit(status)


if __name__ == "__main__":
    main()
