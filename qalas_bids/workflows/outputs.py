"""Derivatives datasinks: every output named from BIDS entities, written atomically."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids.derivatives import derivative_path
from ..interfaces.datasink import DerivativeSink
from ..bids.sidecars import MAP_OUTPUTS, map_metadata, raw_sources


def init_datasink_wf(*, run, settings, contrasts: bool = True, b1: bool = True,
                     name: str = "datasink_wf"):
    """Write the fitted maps, mask, B1 and synthetic contrasts of one run.

    Inputs
    ------
    maps : nine files in :data:`qalas_bids.interfaces.fit.MAP_KEYS` order
    fit_metadata : dynamic sidecar keys from the fit (SequenceTiming, FitInfo, Warnings...)
    mask : brain mask; head_mask : head mask (fitted voxels); b1 : B1 in QALAS space
    synth_files, synth_names, synth_metadata : synthetic contrasts (suffix = name)

    Outputs
    -------
    out_files : every derivative written
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=[
        "maps", "fit_metadata", "mask", "head_mask", "b1", "synth_files", "synth_names", "synth_metadata"]),
        name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    ents = dict(run.entities)
    out_dir, bids_dir = str(settings.output_dir), str(settings.bids_dir)
    qalas_sources = raw_sources(run.qalas_files, settings.bids_dir)
    b1_sources = raw_sources(run.b1.files.values(), settings.bids_dir) if b1 and run.b1 else []
    b1_summary = None
    if b1 and run.b1:
        b1_summary = {**run.b1.as_dict(),
                      "Files": dict(zip(run.b1.files, raw_sources(run.b1.files.values(), bids_dir)))}

    ds_maps = pe.Node(DerivativeSink(
        out_dir=out_dir, bids_dir=bids_dir,
        rel_paths=[derivative_path(ents, suffix, desc=desc) for suffix, desc, _, _ in MAP_OUTPUTS],
        metadata=map_metadata(settings.fit_mode, qalas_sources + b1_sources, b1_summary),
    ), name="ds_maps", run_without_submitting=True)
    ds_mask = pe.Node(DerivativeSink(
        out_dir=out_dir, bids_dir=bids_dir, dtype="uint8",
        rel_paths=[derivative_path(ents, "mask", desc="brain"), derivative_path(ents, "mask", desc="head")],
        metadata=[{"Type": "Brain", "Description": "brain mask (CSF included; scalp, skull, sinuses and "
                   "eyes excluded), computed from the fitted T1 and PD maps", "Sources": qalas_sources,
                   "SkullStripped": False, "SoftwareVersion": settings.version},
                  {"Description": "head mask: the fitted voxels (computed from the QALAS contrasts)",
                   "Sources": qalas_sources, "SkullStripped": False, "SoftwareVersion": settings.version}],
    ), name="ds_mask", run_without_submitting=True)
    masks = pe.Node(niu.Merge(2), name="merge_masks", run_without_submitting=True)
    merge = pe.Node(niu.Merge(4, ravel_inputs=True), name="merge_outputs",
                    run_without_submitting=True)

    workflow.connect([
        (inputnode, ds_maps, [("maps", "in_files"), ("fit_metadata", "extra_metadata")]),
        (inputnode, masks, [("mask", "in1"), ("head_mask", "in2")]),
        (masks, ds_mask, [("out", "in_files")]),
        (ds_maps, merge, [("out_files", "in1")]),
        (ds_mask, merge, [("out_files", "in2")]),
        (merge, outputnode, [("out", "out_files")]),
    ])
    if b1:
        ds_b1 = pe.Node(DerivativeSink(
            out_dir=out_dir, bids_dir=bids_dir,
            rel_paths=[derivative_path(ents, "TB1map", space="QALAS", datatype="fmap")],
            metadata=[{"Units": "1", "Description": "relative B1+ (actual/nominal flip angle) "
                       "resampled into QALAS space, clipped to [0.65, 1.35], 0 outside the head",
                       "Sources": b1_sources, "B1Source": b1_summary, "SkullStripped": False,
                       "SoftwareVersion": settings.version,
                       **({"B1Summary": dict(run.prepared.b1_info),
                           "Warnings": list(run.prepared.b1_info.get("Warnings", []))}
                          if getattr(run, "prepared", None) is not None and run.prepared.b1_info else {})}],
        ), name="ds_b1", run_without_submitting=True)
        workflow.connect([
            (inputnode, ds_b1, [("b1", "in_files")]),
            (ds_b1, merge, [("out_files", "in3")]),
        ])
    if contrasts:
        ds_synth = pe.Node(DerivativeSink(
            out_dir=out_dir, bids_dir=bids_dir, entities=ents, desc="synthetic",
            common_metadata={"SkullStripped": False, "SoftwareVersion": settings.version,
                             "Sources": qalas_sources},
        ), name="ds_synthetic", run_without_submitting=True)
        workflow.connect([
            (inputnode, ds_synth, [("synth_files", "in_files"), ("synth_names", "suffixes"),
                                   ("synth_metadata", "metadata")]),
            (ds_synth, merge, [("out_files", "in4")]),
        ])
    return workflow
