"""Loading one QALAS run: stack the five contrasts (checked) and resolve the sequence timing."""
from __future__ import annotations

import os
from types import SimpleNamespace

from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, isdefined, traits)

from ..bids.inputs_check import load_qalas_run
from ..qalas.timing import timing_from_metadata
from ..utils.images import save_like


class _LoadQalasInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="five 3D QALAS volumes in readout order, or one 4D file")
    metadata = traits.Dict(mandatory=True, desc="sidecar metadata of the first volume")
    vendor_preset = traits.Str(desc="timing preset overriding the sidecar Manufacturer")


class _LoadQalasOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="4D float32 QALAS image (X, Y, Z, 5)")
    timing = traits.Dict(desc="SequenceTiming.as_dict() (seconds, degrees)")
    timing_sources = traits.Dict(desc="where each timing value came from")
    timing_warnings = traits.List(traits.Str, desc="warnings raised while reading the timing")


class LoadQalas(SimpleInterface):
    """Stack the QALAS contrasts into one 4D image and read the sequence timing."""

    input_spec = _LoadQalasInputSpec
    output_spec = _LoadQalasOutputSpec

    def _run_interface(self, runtime):
        vendor = self.inputs.vendor_preset if isdefined(self.inputs.vendor_preset) else None
        prov = timing_from_metadata(self.inputs.metadata, vendor=vendor or None)
        data, reference = load_qalas_run(SimpleNamespace(qalas_files=tuple(self.inputs.in_files)))
        out = os.path.join(runtime.cwd, "qalas_4d.nii.gz")
        self._results["out_file"] = save_like(data, reference, out)
        self._results["timing"] = prov.timing.as_dict()
        self._results["timing_sources"] = dict(prov.sources)
        self._results["timing_warnings"] = list(prov.warnings)
        return runtime
