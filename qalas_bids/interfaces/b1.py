"""B1+ map onto the QALAS grid (calls :func:`qalas_bids.qalas.b1map.b1_in_qalas_space`)."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface,
                                    TraitedSpec, isdefined, traits)

from ..qalas.b1map import DEFAULT_MIN_COVERAGE, b1_in_qalas_space, load_b1_image
from ..utils.images import first_volume, save_like


class _B1ToQalasInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="TurboFLASH famp image or relative B1 map")
    relative = traits.Bool(False, usedefault=True, desc="in_file is already relative B1")
    scale = traits.Float(1.0, usedefault=True, desc="factor applied to a relative map (0.01 for percent)")
    flip_angle = traits.Float(desc="nominal B1-map flip angle (degrees); needed when not relative")
    qalas_file = File(exists=True, mandatory=True, desc="4D QALAS image defining the target grid")
    mask_file = File(exists=True, desc="head mask on the QALAS grid (B1 set to 0 outside)")
    min_coverage = traits.Float(DEFAULT_MIN_COVERAGE, usedefault=True,
                                desc="smallest head fraction the B1 field of view must cover")


class _B1ToQalasOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="relative B1 on the QALAS grid, clipped to [0.65, 1.35]")
    info = traits.Dict(desc="coverage and clipping summary")


class B1ToQalas(SimpleInterface):
    """Relative B1 from famp, resampled with both affines, clipped and masked."""

    input_spec = _B1ToQalasInputSpec
    output_spec = _B1ToQalasOutputSpec

    def _run_interface(self, runtime):
        qalas = first_volume(nib.load(self.inputs.qalas_file))
        mask = None
        if isdefined(self.inputs.mask_file):
            mask = np.asarray(nib.load(self.inputs.mask_file).dataobj) > 0
        angle = self.inputs.flip_angle if isdefined(self.inputs.flip_angle) else None
        source = load_b1_image(self.inputs.in_file, self.inputs.scale if self.inputs.relative else 1.0)
        img, info = b1_in_qalas_space(source, angle, qalas, head_mask=mask, relative=self.inputs.relative,
                                      min_coverage=self.inputs.min_coverage)
        out = os.path.join(runtime.cwd, "b1_qalas.nii.gz")
        self._results["out_file"] = save_like(np.asarray(img.dataobj), qalas, out)
        self._results["info"] = info
        return runtime
