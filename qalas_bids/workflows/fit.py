"""Per-run QALAS workflow: checked inputs -> fit -> brain/tissues -> synthetic contrasts -> derivatives."""
from __future__ import annotations

import math

import nibabel as nib
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.fit import FitQalas
from ..interfaces.tissues import BrainMask, TissueSummary
from ..qalas.b1.prepare import B1_RANGE
from ..qalas.physics.timing import timing_from_metadata
from ..bids.sidecars import ALGORITHMS, raw_sources
from .outputs import init_datasink_wf

#: Methods text of the B1 preparation (done with the input checks, before the workflow).
B1_DESCRIPTION = (
    " The TurboFLASH B1+ map was converted to relative B1 (measured flip angle divided by "
    "the nominal one), resampled into QALAS space using both images' affines (linear "
    f"interpolation, nilearn), clipped to [{B1_RANGE[0]}, {B1_RANGE[1]}] and masked "
    "outside the head."
)


def fit_resources(run, settings) -> dict:
    """``mem_gb``/``n_procs`` hints of the fit node.

    On CPU the fit uses ``omp_nthreads`` threads. On a GPU it claims every process slot
    (``n_procs = nprocs``), so nipype's MultiProc runs one fit per GPU at a time while the
    light nodes of other runs still run around it.
    """
    shape = nib.load(run.qalas_files[0]).shape[:3]
    n_vox = math.prod(shape)
    mem_gb = round(1.5 + n_vox * 5 * 4 * 40 / 1e9, 2)  # inputs, maps, CRLB Jacobians, torch
    on_gpu = (settings.resolved_device or settings.device).startswith("cuda")
    n_procs = settings.nprocs if on_gpu else settings.omp_nthreads
    return {"mem_gb": mem_gb, "n_procs": max(1, min(n_procs, settings.nprocs))}


def run_workflow_name(run) -> str:
    """``qalas_ses_01_run_1_wf``-style name (subject is the parent workflow's)."""
    parts = [f"{k[:3]}_{run.entities[k]}" for k in ("session", "acquisition", "reconstruction", "run")
             if run.entities.get(k)]
    return "_".join(["qalas", *parts, "wf"])


def init_qalas_wf(*, run, settings, name: str | None = None):
    """Process one QALAS run into derivatives.

    The run's images were read and checked once before the workflow
    (:func:`qalas_bids.execution.prework.prepare_inputs`): ``run.prepared`` holds the 4D QALAS
    image, the head mask and the B1 map on the QALAS grid, which are this workflow's inputs.

    Parameters
    ----------
    run : :class:`qalas_bids.bids.discovery.QalasRun` with ``prepared`` set
    settings : :class:`qalas_bids.config.Settings`

    Outputs
    -------
    t1, t2, pd, ie : fitted maps (work directory)
    mask : head mask (fitted voxels); b1 : B1 in QALAS space (undefined without B1)
    out_files : derivatives written
    """
    if run.prepared is None:
        raise ValueError(f"{run.label}: its inputs were not checked (qalas_bids.execution.prework.prepare_inputs)")
    prepared = run.prepared
    use_b1 = prepared.b1_file is not None
    timing = run.timing or timing_from_metadata(run.metadata, vendor=settings.vendor_preset or None)
    workflow = pe.Workflow(name=name or run_workflow_name(run))
    workflow.__desc__ = (
        f"The five 3D-QALAS contrasts of {run.label} were stacked and a head mask (CSF "
        f"included) was computed; after the fit, the brain was separated from the scalp, skull "
        f"and eyes using the fitted maps. Maps of T1, T2, proton density and inversion efficiency "
        f"were estimated voxel-wise with {ALGORITHMS[settings.fit_mode]}, with Cramer-Rao "
        "lower-bound uncertainty maps and the relative fit residual."
    ) + (B1_DESCRIPTION if use_b1 else "")
    inputnode = pe.Node(niu.IdentityInterface(fields=["qalas_file", "mask_file", "b1_file"]), name="inputnode")
    inputnode.inputs.qalas_file = prepared.qalas_file
    inputnode.inputs.mask_file = prepared.mask_file
    if use_b1:
        inputnode.inputs.b1_file = prepared.b1_file
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["t1", "t2", "pd", "ie", "mask", "b1", "out_files"]), name="outputnode")

    fit = init_fit_node(run, settings, timing)
    brain = pe.Node(BrainMask(), name="brain_mask", mem_gb=1.0)
    # The tissue summary (sidecar) and the synthetic images both need only the brain mask:
    # they run side by side.
    tissues = pe.Node(TissueSummary(), name="tissue_summary", mem_gb=1.0)
    synth = init_synthetic_node(settings, sources=raw_sources(run.qalas_files, settings.bids_dir))
    sinks = init_datasink_wf(run=run, settings=settings, contrasts=bool(synth), b1=use_b1)

    workflow.connect([
        (inputnode, fit, [("qalas_file", "qalas_file"), ("mask_file", "mask_file")]),
        (fit, brain, [("t1", "t1"), ("pd", "pd")]),
        (inputnode, brain, [("mask_file", "head_mask")]),
        (fit, tissues, [("out_maps", "maps"), ("sidecar", "fit_sidecar")]),
        (brain, tissues, [("brain_mask", "brain_mask"), ("info", "brain_info")]),
        (inputnode, tissues, [("mask_file", "head_mask")]),
        (fit, sinks, [("out_maps", "inputnode.maps")]),
        (tissues, sinks, [("sidecar", "inputnode.fit_metadata")]),
        (brain, sinks, [("brain_mask", "inputnode.mask")]),
        (inputnode, sinks, [("mask_file", "inputnode.head_mask")]),
        (fit, outputnode, [("t1", "t1"), ("t2", "t2"), ("pd", "pd"), ("ie", "ie")]),
        (inputnode, outputnode, [("mask_file", "mask")]),
        (sinks, outputnode, [("outputnode.out_files", "out_files")]),
    ])
    if use_b1:
        workflow.connect([
            (inputnode, fit, [("b1_file", "b1_file")]),
            (inputnode, sinks, [("b1_file", "inputnode.b1")]),
            (inputnode, outputnode, [("b1_file", "b1")]),
        ])
    if run.spaces is not None:
        from .spaces import init_spaces_wf

        spaces = init_spaces_wf(run=run, settings=settings)
        workflow.connect([
            (fit, spaces, [("out_maps", "inputnode.maps")]),
            (brain, spaces, [("brain_mask", "inputnode.brain_mask")]),
            (inputnode, spaces, [("mask_file", "inputnode.head_mask")]),
        ])
        if synth:
            workflow.connect([(synth, spaces, [("out_files", "inputnode.synth_files"),
                                               ("out_names", "inputnode.synth_names")])])
    if synth:
        workflow.connect([
            (fit, synth, [("t1", "t1"), ("t2", "t2"), ("pd", "pd"), ("ie", "ie"), ("out_maps", "maps")]),
            (inputnode, synth, [("mask_file", "mask")]),
            (brain, synth, [("brain_mask", "brain_mask")]),
            (synth, sinks, [("out_files", "inputnode.synth_files"),
                            ("out_names", "inputnode.synth_names"),
                            ("out_metadata", "inputnode.synth_metadata")]),
        ])
    return workflow


def init_fit_node(run, settings, timing):
    """The ``fit`` node of one run (:class:`~qalas_bids.interfaces.fit.FitQalas`): fit mode,
    device, timing with its provenance, model options and the warnings of the checks."""
    fit = pe.Node(FitQalas(method=settings.fit_mode, device=settings.resolved_device or settings.device,
                           seed=settings.seed, num_threads=settings.omp_nthreads,
                           progress=not settings.quiet, progress_label=run.label,
                           noise_floor_correction=settings.noise_floor_correction,
                           timing=timing.timing.as_dict(), timing_sources=dict(timing.sources),
                           timing_warnings=list(timing.warnings)),
                  name="fit", **fit_resources(run, settings))
    if run.prepared.b1_file is not None:
        fit.inputs.b1_info = dict(run.prepared.b1_info)
    if settings.ssl_options:
        fit.inputs.ssl_options = settings.ssl_options
    if run.warnings:
        fit.inputs.extra_warnings = list(run.warnings)
    if settings.model_path:
        fit.inputs.model_path = str(settings.model_path)
        fit.inputs.force_model = settings.force_model
        if settings.fit_mode in ("pretrained", "fine-tune"):
            from ..qalas.fitting.cohort import check_model_compatibility

            fit.inputs.model_warnings = check_model_compatibility(
                settings.model_path, timing.timing, run.metadata, force=settings.force_model,
                label=run.label)
    if settings.save_model_dir and settings.fit_mode in ("scan-specific", "fine-tune"):
        from ..qalas.fitting.cohort import acquisition_info, model_filename

        fit.inputs.save_model_path = str(settings.save_model_dir / model_filename(run.entities))
        fit.inputs.model_provenance = {"acquisition": acquisition_info(run.metadata), "label": run.label,
                                       "sources": raw_sources(run.qalas_files, settings.bids_dir)}
    return fit


def init_synthetic_node(settings, sources=None):
    """The synthetic-contrast node (None when no contrast is requested)."""
    if settings.synth_contrasts is not None and not settings.synth_contrasts:
        return None
    from ..interfaces.synthetic import SyntheticContrasts

    node = pe.Node(SyntheticContrasts(), name="synthetic", mem_gb=1.0)
    if sources:
        node.inputs.sources = list(sources)
    if settings.synth_contrasts:
        node.inputs.contrasts = list(settings.synth_contrasts)
    if settings.synth_params:
        node.inputs.params = dict(settings.synth_params)
    return node
