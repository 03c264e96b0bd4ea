"""Brain mask, tissue classes and parameter-bound summary node (after the fit)."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface, TraitedSpec,
                                    traits)

from ..utils.images import save_like
from ..utils.nifti_io import map_threads, read_array


class _BrainTissuesInputSpec(BaseInterfaceInputSpec):
    maps = traits.List(File(exists=True), mandatory=True,
                       desc="fitted maps in qalas_bids.qalas.fit_volume.MAP_KEYS order")
    head_mask = File(exists=True, mandatory=True, desc="head mask (the fitted voxels)")
    fit_sidecar = traits.Dict(mandatory=True, desc="sidecar keys of the fit (extended here)")


class _BrainTissuesOutputSpec(TraitedSpec):
    brain_mask = File(exists=True, desc="brain mask (CSF included, no scalp, skull or eyes)")
    sidecar = traits.Dict(desc="fit sidecar plus BrainMask, ParameterBounds, TissueReliability")


class BrainTissues(SimpleInterface):
    """Separate the brain from the head and summarise voxels at parameter bounds."""

    input_spec = _BrainTissuesInputSpec
    output_spec = _BrainTissuesOutputSpec

    def _run_interface(self, runtime):
        from ..qalas.brain_mask import brain_mask_from_maps
        from ..qalas.fit_volume import MAP_KEYS
        from ..qalas.tissue_summary import summarise_tissues

        ref = nib.load(self.inputs.maps[0])
        arrays = map_threads(lambda path: read_array(path, dtype=np.float64), self.inputs.maps)
        maps = dict(zip(MAP_KEYS, arrays))
        head = read_array(self.inputs.head_mask, dtype=np.uint8) > 0
        brain, brain_info = brain_mask_from_maps(maps["t1"], maps["pd"], head, ref.header.get_zooms()[:3])
        summary, warnings = summarise_tissues(maps, brain, head)
        sidecar = dict(self.inputs.fit_sidecar)
        sidecar.update(BrainMask=brain_info, **summary)
        if warnings:
            sidecar["Warnings"] = list(sidecar.get("Warnings", [])) + warnings
        out = save_like(brain, ref, os.path.join(runtime.cwd, "brain_mask.nii.gz"), dtype=np.uint8)
        self._results.update(brain_mask=out, sidecar=sidecar)
        return runtime
