"""Checks before any work: device, discovery of the runs, flip angles, network weights,
input images (read once), per-participant locks of the work directory."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from ..config import Settings
from ..qalas.b1.no_b1 import no_b1_bias_text
from .errors import UsageError


LOGGER = logging.getLogger("qalas_bids")


def check_device(settings: Settings) -> Settings:
    """Resolve ``--device`` now (exit 2 when a requested GPU is missing).

    The check runs in a child process (:func:`~qalas_bids.qalas.fitting.device.probe_device`):
    CUDA initialised here would break every MultiProc worker forked later. When the fit
    runs on a GPU under MultiProc, the workers are started with ``spawn`` (unless the
    plugin YAML names an ``mp_context``), so no worker inherits a CUDA state either.
    """
    from ..qalas.fitting.device import probe_device

    info = probe_device(settings.device)
    LOGGER.info("Compute device: %s (requested %s)", info.describe(), settings.device)
    plugin_args = dict(settings.plugin_args)
    if info.is_cuda and settings.plugin == "MultiProc":
        plugin_args.setdefault("mp_context", "spawn")
    return settings.replace(resolved_device=info.device, plugin_args=plugin_args)


def check_flip_angle_known(settings: Settings, run) -> None:
    """The B1 map's conversion needs its sidecar keys (FlipAngle, AFI RepetitionTimeExcitation)
    or the options that replace them: exit 2 naming the key and the file before any work."""
    from ..bids.b1_read import b1_parameters
    from ..qalas.errors import QalasInputError

    try:
        b1_parameters(run.b1, settings.b1_flip_angle, settings.afi_tr_ratio)
    except QalasInputError as exc:
        raise UsageError(f"{run.label}: {exc}") from None


def discover_runs(settings: Settings, layout=None) -> list:
    """Find every QALAS run and check what needs no image data (names, sidecars, timing,
    B1 pairing, network weights) on ``layout`` (the pybids index; built when None);
    :func:`prepare_inputs` checks the images."""
    from ..bids import collect_qalas_runs
    from ..qalas.errors import QalasInputError

    runs = collect_qalas_runs(
        settings.bids_dir,
        layout=layout,
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
                LOGGER.warning("%s: no B1 map (--no-b1): %s", run.label, no_b1_bias_text())
    if settings.fit_mode in ("pretrained", "fine-tune"):
        from ..qalas.fitting.pretrained import default_model_path

        model = Path(settings.model_path) if settings.model_path else default_model_path()
        if not model.is_file():
            raise UsageError(f"--fit-mode {settings.fit_mode} needs network weights, but {model} "
                             "does not exist: use --fit-mode scan-specific (trains on this scan) "
                             "or reinstall qalas-bids")
        if settings.model_path:  # refuse a model trained for another protocol before any work
            from ..qalas.fitting.cohort import check_model_compatibility

            for run in runs:
                if run.timing is not None:
                    check_model_compatibility(model, run.timing.timing, run.metadata,
                                              force=settings.force_model, label=run.label)
        elif settings.fit_mode == "pretrained":  # the shipped model's timing ranges
            from ..qalas.fitting.pretrained import check_pretrained_timing

            for run in runs:
                if run.timing is not None:
                    try:
                        check_pretrained_timing(run.timing.timing, model)
                    except QalasInputError as exc:
                        if not settings.pretrained_fallback:
                            raise UsageError(f"{run.label}: {exc}") from None
                        LOGGER.warning("%s: %s -- it will be fine-tuned on this scan "
                                       "(--pretrained-fallback)", run.label, exc)
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
                                   min_coverage=settings.b1_min_coverage, relaxed=settings.relaxed_gates,
                                   afi_tr_ratio=settings.afi_tr_ratio,
                                   b1_registration=settings.b1_registration)
        return write_run_inputs(checked, folder / run.label), checked.warnings

    prepared = []
    for run, (files, warnings) in zip(runs, fork_map(prepare, len(runs), settings.nprocs)):  # runs side by side
        for warning in warnings:
            LOGGER.warning("%s: %s", run.label, warning)
        if files.b1_transform_file:
            files = _publish_b1_transform(settings, run, files)
        prepared.append(dataclasses.replace(run, warnings=run.warnings + warnings, prepared=files))
    return prepared


def _publish_b1_transform(settings: Settings, run, files):
    """Copy the rigid B1 -> QALAS ITK transform into the derivatives (``fmap/..._xfm.txt``)
    and record its path in the B1 summary that every sidecar carries."""
    from ..bids.derivatives import atomic_write_text, check_output_dir, transform_path

    rel = transform_path(run.entities)
    check_output_dir(settings.output_dir, settings.bids_dir)
    atomic_write_text(Path(settings.output_dir) / rel, Path(files.b1_transform_file).read_text())
    info = dict(files.b1_info)
    info["Registration"] = {**info.get("Registration", {}), "TransformFile": rel,
                            "TransformConvention": "ITK (LPS): maps QALAS points to B1 map points"}
    return dataclasses.replace(files, b1_info=info)


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


def prepare_spaces(settings: Settings, runs: list, layout=None) -> list:
    """Find each run's T1w (on ``layout``, the pybids index of discovery), reusable
    derivatives and template files for ``--output-spaces`` (exit 2 before any work when one
    is missing; nothing is downloaded)."""
    import nibabel as nib

    from ..bids.atlases import check_atlases, parse_atlas
    from ..bids.layout import validate_bids_filters
    from ..bids.output_spaces import parse_output_spaces
    from ..bids.space_inputs import collect_space_inputs
    from ..qalas.errors import QalasInputError

    spaces = parse_output_spaces(list(settings.output_spaces))
    if all(not s.is_template and s.name == "qalas" for s in spaces):
        return runs
    try:
        atlases = tuple(check_atlases([parse_atlas(t) for t in settings.atlases], spaces)) if settings.atlases else ()
    except QalasInputError as exc:
        raise UsageError(f"--atlases: {exc}") from None
    t1w_filters = validate_bids_filters(settings.bids_filters or {}).get("t1w", {})
    out = []
    for run in runs:
        voxel_mm = float(min(nib.load(run.qalas_files[0]).header.get_zooms()[:3]))
        try:
            inputs = collect_space_inputs(run, spaces, bids_dir=settings.bids_dir,
                                          derivatives=dict(settings.derivative_sources or {}),
                                          template_root=settings.work_dir / "templateflow",
                                          voxel_mm=voxel_mm, atlases=atlases, layout=layout,
                                          t1w_filters=t1w_filters)
        except QalasInputError as exc:
            raise UsageError(str(exc)) from None
        LOGGER.info("%s: output spaces %s (T1w: %s%s)", run.label, ", ".join(map(str, spaces)),
                    inputs.t1w or "none", f", reusing {inputs.derivatives_name}" if inputs.derivatives_name else "")
        for note in inputs.notes:
            LOGGER.warning(note)
        out.append(dataclasses.replace(run, spaces=inputs))
    return out
