"""Head/brain mask of a QALAS run (calls :func:`qalas_bids.qalas.masking.compute_head_mask`)."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface,
                                    TraitedSpec)

from ..utils.images import first_volume, save_like


class _HeadMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="4D QALAS image (X, Y, Z, 5)")


class _HeadMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="uint8 mask (1 inside the head, CSF included)")


class HeadMask(SimpleInterface):
    """Compute the mask of the voxels to fit."""

    input_spec = _HeadMaskInputSpec
    output_spec = _HeadMaskOutputSpec

    def _run_interface(self, runtime):
        from ..qalas.masking import compute_head_mask

        img = nib.load(self.inputs.in_file)
        mask = compute_head_mask(np.asarray(img.dataobj, dtype=np.float32))
        out = os.path.join(runtime.cwd, "mask.nii.gz")
        self._results["out_mask"] = save_like(mask.astype(np.uint8), first_volume(img), out, dtype=np.uint8)
        return runtime
