"""Brain mask (after the fit) and the tissue/parameter-bound summary of the fitted maps."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec,
                                    traits)

from ..utils.images import save_like
from ..utils.nifti_io import read_array, read_arrays


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    t1 = File(exists=True, mandatory=True, desc="fitted T1 map (s)")
    pd = File(exists=True, mandatory=True, desc="fitted PD map")
    head_mask = File(exists=True, mandatory=True, desc="head mask (the fitted voxels)")


class _BrainMaskOutputSpec(TraitedSpec):
    brain_mask = File(exists=True, desc="brain mask (CSF included, no scalp, skull or eyes)")
    info = traits.Dict(desc="BrainMask sidecar entry (method, volumes)")


class BrainMask(SimpleInterface):
    """Separate the brain from the scalp, skull and eyes using the fitted T1 and PD."""

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from ..qalas.tissue.brain_mask import brain_mask_from_maps

        ref = nib.load(self.inputs.t1)
        t1, pd = read_arrays([self.inputs.t1, self.inputs.pd], dtype=np.float64)
        head = read_array(self.inputs.head_mask, dtype=np.uint8) > 0
        brain, info = brain_mask_from_maps(t1, pd, head, ref.header.get_zooms()[:3])
        out = save_like(brain, ref, os.path.join(runtime.cwd, "brain_mask.nii.gz"), dtype=np.uint8)
        self._results.update(brain_mask=out, info=info)
        return runtime


class _TissueSummaryInputSpec(BaseInterfaceInputSpec):
    maps = traits.List(File(exists=True), mandatory=True,
                       desc="fitted maps in qalas_bids.qalas.fitting.fit_volume.MAP_KEYS order")
    brain_mask = File(exists=True, mandatory=True, desc="brain mask")
    brain_info = traits.Dict(mandatory=True, desc="BrainMask sidecar entry")
    head_mask = File(exists=True, mandatory=True, desc="head mask (the fitted voxels)")
    fit_sidecar = traits.Dict(mandatory=True, desc="sidecar keys of the fit (extended here)")


class _TissueSummaryOutputSpec(TraitedSpec):
    sidecar = traits.Dict(desc="fit sidecar plus BrainMask, ParameterBounds, TissueReliability")


class TissueSummary(SimpleInterface):
    """Voxels at parameter bounds per tissue class and the reliable-voxel counts (sidecar)."""

    input_spec = _TissueSummaryInputSpec
    output_spec = _TissueSummaryOutputSpec

    def _run_interface(self, runtime):
        from ..qalas.fitting.fit_volume import MAP_KEYS
        from ..qalas.tissue.summary import summarise_tissues

        needed = ("t1", "t2", "ie", "crlb_t1", "residual")
        paths = dict(zip(MAP_KEYS, self.inputs.maps))
        maps = dict(zip(needed, read_arrays([paths[key] for key in needed], dtype=np.float64)))
        brain = read_array(self.inputs.brain_mask, dtype=np.uint8) > 0
        head = read_array(self.inputs.head_mask, dtype=np.uint8) > 0
        summary, warnings = summarise_tissues(maps, brain, head)
        sidecar = dict(self.inputs.fit_sidecar)
        sidecar.update(BrainMask=dict(self.inputs.brain_info), **summary)
        if warnings:
            sidecar["Warnings"] = list(sidecar.get("Warnings", [])) + warnings
        self._results["sidecar"] = sidecar
        return runtime
