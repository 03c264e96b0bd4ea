"""Synthetic contrasts node (calls :func:`qalas_bids.qalas.tissue.synthetic.synthesize_all`)."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, isdefined, traits)

from ..utils.images import image_like
from ..utils.nifti_io import read_array, write_images


class _SyntheticContrastsInputSpec(BaseInterfaceInputSpec):
    t1 = File(exists=True, mandatory=True, desc="T1 map (s)")
    t2 = File(exists=True, mandatory=True, desc="T2 map (s)")
    pd = File(exists=True, mandatory=True, desc="PD map (a.u.)")
    ie = File(exists=True, desc="inversion-efficiency map (optional; enables IE-aware IR)")
    mask = File(exists=True, desc="head mask: extent of the images (default: T1 > 0 and PD > 0)")
    brain_mask = File(exists=True, desc="brain mask: where tissue values for the nulls come from")
    maps = traits.List(File(exists=True), desc="all fitted maps (fit_volume.MAP_KEYS order): the "
                       "CRLB and residual maps exclude unreliable voxels from the tissue values")
    contrasts = InputMultiObject(traits.Str, desc="names among T1w, T2w, PDw, FLAIR, DIR, PSIR, STIR "
                                 "(default: all)")
    params = traits.Dict(desc="per-contrast overrides {name: {RepetitionTime, EchoTime, InversionTime}} (s)")
    null_mode = traits.Enum("subject", "constant", usedefault=True,
                            desc="null T1s from this subject's maps or textbook constants")
    ie_aware = traits.Bool(True, usedefault=True, desc="use the IE map in inversion recovery when given")
    sources = InputMultiObject(traits.Str, desc="BIDS URIs added as 'Sources' to every sidecar")


class _SyntheticContrastsOutputSpec(TraitedSpec):
    out_files = traits.List(File(exists=True), desc="one float32 NIfTI per contrast")
    out_metadata = traits.List(traits.Dict, desc="sidecar metadata, same order as out_files")
    out_names = traits.List(traits.Str, desc="contrast names (BIDS suffixes), same order")


class SyntheticContrasts(SimpleInterface):
    """Write synthetic T1w/T2w/PDw/FLAIR/DIR/PSIR/STIR images from the fitted maps."""

    input_spec = _SyntheticContrastsInputSpec
    output_spec = _SyntheticContrastsOutputSpec

    def _run_interface(self, runtime):
        from ..qalas.tissue.synthetic import synthesize_all

        ref = nib.load(self.inputs.t1)

        def load(path):
            return read_array(path, dtype=np.float64)

        ie = load(self.inputs.ie) if isdefined(self.inputs.ie) else None
        mask = load(self.inputs.mask) > 0 if isdefined(self.inputs.mask) else None
        brain = load(self.inputs.brain_mask) > 0 if isdefined(self.inputs.brain_mask) else None
        extra = {}
        if isdefined(self.inputs.maps):
            from ..qalas.fitting.fit_volume import MAP_KEYS

            paths = dict(zip(MAP_KEYS, self.inputs.maps))
            extra = {"crlb": {k: load(paths[f"crlb_{k}"]) for k in ("t1", "t2", "ie")},
                     "residual": load(paths["residual"])}
        images = synthesize_all(
            load(self.inputs.t1), load(self.inputs.t2), load(self.inputs.pd), ie=ie, mask=mask,
            contrasts=list(self.inputs.contrasts) if isdefined(self.inputs.contrasts) else None,
            params=dict(self.inputs.params) if isdefined(self.inputs.params) else None,
            null_mode=self.inputs.null_mode, ie_aware=self.inputs.ie_aware, brain_mask=brain, **extra,
        )
        names = list(images)
        files = write_images((image_like(images[name][0], ref), os.path.join(runtime.cwd, f"synthetic_{name}.nii.gz"))
                             for name in names)
        sources = {"Sources": list(self.inputs.sources)} if isdefined(self.inputs.sources) else {}
        metadata = [{**images[name][1], **sources} for name in names]
        self._results.update(out_files=files, out_metadata=metadata, out_names=names)
        return runtime
