"""Output spaces of one run: registration + resampling node and its three sinks (wiring only)."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids.derivatives import bids_uri
from ..bids.sidecars import raw_sources
from ..bids.space_inputs import atlas_specs
from ..interfaces.datasink import DerivativeSink
from ..interfaces.spaces import FileSink, ToOutputSpaces


def template_inputs(space_inputs) -> list[dict]:
    """The ``templates`` input of :class:`ToOutputSpaces` from a run's ``SpaceInputs``."""
    return [{"label": t.space.transform_label, "space": t.space.name, "res": t.files.resolution,
             "cohort": t.space.cohort or "", "t1w": t.files.brain_t1w, "mask": t.files.brain_mask,
             "resolution_text": t.files.resolution_text, "reference": t.files.reference_url,
             "t1w_to_template": t.t1w_to_template or ""}
            for t in space_inputs.templates]


def init_spaces_wf(*, run, settings, name: str = "spaces_wf"):
    """Register the run to its T1w/templates and write every output resampled there.

    Inputs: maps (nine, MAP_KEYS order), brain_mask, head_mask, synth_files, synth_names.
    Outputs: out_files (derivatives written), info (registration summary).
    """
    space_inputs = run.spaces
    workflow = pe.Workflow(name=name)
    reuse = space_inputs.derivatives_name
    workflow.__desc__ = (
        " The maps were registered to "
        + ("the participant's T1w (rigid, Mattes mutual information, SimpleITK)" if space_inputs.t1w else "")
        + (" and " if space_inputs.t1w and space_inputs.templates else "")
        + (", ".join(str(t.space) for t in space_inputs.templates) + (
            f" (through the T1w-to-template transforms of {reuse})" if reuse else
            " (affine then B-spline free-form deformation of a synthetic T1w, brain-extracted, "
            "Mattes mutual information, then diffeomorphic demons on the histogram-matched image; "
            "SimpleITK)") if space_inputs.templates else "")
        + "; maps were resampled with linear and masks with nearest-neighbour interpolation "
          "(templates from TemplateFlow).")
    inputnode = pe.Node(niu.IdentityInterface(
        fields=["maps", "brain_mask", "head_mask", "synth_files", "synth_names"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files", "info"]), name="outputnode")
    out_dir, bids_dir = str(settings.output_dir), str(settings.bids_dir)
    node = pe.Node(ToOutputSpaces(entities=dict(run.entities), seed=settings.seed,
                                  num_threads=settings.omp_nthreads, write_t1w=space_inputs.write_t1w,
                                  templates=[{k: v for k, v in t.items() if v != ""} for t in
                                             template_inputs(space_inputs)],
                                  sources=raw_sources(run.qalas_files, settings.bids_dir)),
                   name="to_output_spaces", mem_gb=2.0, n_procs=settings.omp_nthreads)
    if space_inputs.t1w:
        node.inputs.t1w = space_inputs.t1w
        node.inputs.t1w_reference = _reference_uri(space_inputs.t1w, settings)
    if space_inputs.t1w_brain_mask:
        node.inputs.t1w_mask = space_inputs.t1w_brain_mask
    atlases = atlas_specs(space_inputs)
    if atlases:
        node.inputs.atlases = atlases
    ds_images = pe.Node(DerivativeSink(out_dir=out_dir, bids_dir=bids_dir), name="ds_space_images",
                        run_without_submitting=True)
    ds_masks = pe.Node(DerivativeSink(out_dir=out_dir, bids_dir=bids_dir, dtype="uint8"),
                       name="ds_space_masks", run_without_submitting=True)
    ds_xfms = pe.Node(FileSink(out_dir=out_dir, bids_dir=bids_dir), name="ds_xfms",
                      run_without_submitting=True)
    ds_tables = pe.Node(FileSink(out_dir=out_dir, bids_dir=bids_dir), name="ds_atlas_tables",
                        run_without_submitting=True)
    merge = pe.Node(niu.Merge(4, ravel_inputs=True), name="merge_space_outputs", run_without_submitting=True)
    workflow.connect([
        (inputnode, node, [("maps", "maps"), ("brain_mask", "brain_mask"), ("head_mask", "head_mask"),
                           ("synth_files", "synth_files"), ("synth_names", "synth_names")]),
        (node, ds_images, [("image_files", "in_files"), ("image_paths", "rel_paths"),
                           ("image_metadata", "metadata")]),
        (node, ds_masks, [("mask_files", "in_files"), ("mask_paths", "rel_paths"),
                          ("mask_metadata", "metadata")]),
        (node, ds_xfms, [("xfm_files", "in_files"), ("xfm_paths", "rel_paths"),
                         ("xfm_metadata", "metadata")]),
        (ds_images, merge, [("out_files", "in1")]),
        (ds_masks, merge, [("out_files", "in2")]),
        (node, ds_tables, [("table_files", "in_files"), ("table_paths", "rel_paths"),
                           ("table_metadata", "metadata")]),
        (ds_xfms, merge, [("out_files", "in3")]),
        (ds_tables, merge, [("out_files", "in4")]),
        (merge, outputnode, [("out", "out_files")]),
        (node, outputnode, [("info", "info")]),
    ])
    return workflow


def _reference_uri(path: str, settings) -> str:
    """BIDS URI of the T1w (``bids:raw:...`` or ``bids:<NAME>:...`` for a derivatives folder)."""
    from pathlib import Path

    for name, root in (settings.derivative_sources or {}).items():
        if Path(path).is_relative_to(root):
            return bids_uri(path, root, dataset=name)
    return bids_uri(path, settings.bids_dir)
