"""Per-run QALAS workflow: load -> mask -> B1 -> fit -> synthetic contrasts -> derivatives."""
from __future__ import annotations

import math

import nibabel as nib
from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.fit import FitQalas
from ..interfaces.io import LoadQalas
from ..interfaces.masking import HeadMask
from ..interfaces.tissues import BrainTissues
from ..utils.metadata import ALGORITHMS, raw_sources
from .b1 import init_b1_wf
from .outputs import init_datasink_wf


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

    Parameters
    ----------
    run : :class:`qalas_bids.bids.discovery.QalasRun`
    settings : :class:`qalas_bids.config.Settings`

    Outputs
    -------
    t1, t2, pd, ie : fitted maps (work directory)
    mask : head mask (fitted voxels); b1 : B1 in QALAS space (undefined with --no-b1)
    out_files : derivatives written
    """
    workflow = pe.Workflow(name=name or run_workflow_name(run))
    workflow.__desc__ = (
        f"The five 3D-QALAS contrasts of {run.label} were stacked and a head mask (CSF "
        f"included) was computed; after the fit, the brain was separated from the scalp, skull "
        f"and eyes using the fitted maps. Maps of T1, T2, proton density and inversion efficiency "
        f"were estimated voxel-wise with {ALGORITHMS[settings.fit_mode]}, with Cramer-Rao "
        "lower-bound uncertainty maps and the relative fit residual."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["qalas_files", "metadata"]), name="inputnode")
    inputnode.inputs.qalas_files = list(run.qalas_files)
    inputnode.inputs.metadata = dict(run.metadata)
    outputnode = pe.Node(niu.IdentityInterface(
        fields=["t1", "t2", "pd", "ie", "mask", "b1", "out_files"]), name="outputnode")

    load = pe.Node(LoadQalas(), name="load_qalas", mem_gb=1.0)
    if settings.vendor_preset:
        load.inputs.vendor_preset = settings.vendor_preset
    mask = pe.Node(HeadMask(), name="head_mask", mem_gb=1.0)
    fit = pe.Node(FitQalas(method=settings.fit_mode, device=settings.resolved_device or settings.device,
                           seed=settings.seed, num_threads=settings.omp_nthreads,
                           progress=not settings.quiet, progress_label=run.label,
                           noise_floor_correction=settings.noise_floor_correction),
                  name="fit", **fit_resources(run, settings))
    if settings.ssl_options:
        fit.inputs.ssl_options = settings.ssl_options
    if run.warnings:
        fit.inputs.extra_warnings = list(run.warnings)
    if settings.model_path:
        fit.inputs.model_path = str(settings.model_path)
        fit.inputs.force_model = settings.force_model
        if run.timing is not None and settings.fit_mode in ("pretrained", "fine-tune"):
            from ..qalas.cohort import check_model_compatibility

            fit.inputs.model_warnings = check_model_compatibility(
                settings.model_path, run.timing.timing, run.metadata, force=settings.force_model,
                label=run.label)
    if settings.save_model_dir and settings.fit_mode in ("scan-specific", "fine-tune"):
        from ..qalas.cohort import acquisition_info, model_filename

        fit.inputs.save_model_path = str(settings.save_model_dir / model_filename(run.entities))
        fit.inputs.model_provenance = {"acquisition": acquisition_info(run.metadata), "label": run.label,
                                       "sources": raw_sources(run.qalas_files, settings.bids_dir)}
    tissues = pe.Node(BrainTissues(), name="brain_tissues", mem_gb=1.0)
    synth = init_synthetic_node(settings, sources=raw_sources(run.qalas_files, settings.bids_dir))
    sinks = init_datasink_wf(run=run, settings=settings,
                             contrasts=bool(synth), b1=run.b1 is not None and not settings.no_b1)

    workflow.connect([
        (inputnode, load, [("qalas_files", "in_files"), ("metadata", "metadata")]),
        (load, mask, [("out_file", "in_file")]),
        (load, fit, [("out_file", "qalas_file"), ("timing", "timing"),
                     ("timing_sources", "timing_sources"), ("timing_warnings", "timing_warnings")]),
        (mask, fit, [("out_mask", "mask_file")]),
        (fit, tissues, [("out_maps", "maps"), ("sidecar", "fit_sidecar")]),
        (mask, tissues, [("out_mask", "head_mask")]),
        (fit, sinks, [("out_maps", "inputnode.maps")]),
        (tissues, sinks, [("sidecar", "inputnode.fit_metadata"), ("brain_mask", "inputnode.mask")]),
        (mask, sinks, [("out_mask", "inputnode.head_mask")]),
        (fit, outputnode, [("t1", "t1"), ("t2", "t2"), ("pd", "pd"), ("ie", "ie")]),
        (mask, outputnode, [("out_mask", "mask")]),
        (sinks, outputnode, [("outputnode.out_files", "out_files")]),
    ])
    if run.b1 is not None and not settings.no_b1:
        b1_wf = init_b1_wf(b1_source=run.b1, flip_angle=settings.b1_flip_angle,
                           min_coverage=settings.b1_min_coverage)
        workflow.connect([
            (load, b1_wf, [("out_file", "inputnode.qalas_file")]),
            (mask, b1_wf, [("out_mask", "inputnode.mask_file")]),
            (b1_wf, fit, [("outputnode.b1_file", "b1_file"), ("outputnode.b1_info", "b1_info")]),
            (b1_wf, sinks, [("outputnode.b1_file", "inputnode.b1")]),
            (b1_wf, outputnode, [("outputnode.b1_file", "b1")]),
        ])
    if synth:
        workflow.connect([
            (fit, synth, [("t1", "t1"), ("t2", "t2"), ("pd", "pd"), ("ie", "ie"), ("out_maps", "maps")]),
            (mask, synth, [("out_mask", "mask")]),
            (tissues, synth, [("brain_mask", "brain_mask")]),
            (synth, sinks, [("out_files", "inputnode.synth_files"),
                            ("out_names", "inputnode.synth_names"),
                            ("out_metadata", "inputnode.synth_metadata")]),
        ])
    return workflow


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
