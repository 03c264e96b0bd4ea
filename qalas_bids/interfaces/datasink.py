"""Write derivatives atomically into the output dataset (BIDS names built upstream).

Each file is written by :func:`qalas_bids.bids.derivatives.write_derivative` (atomic
rename, float32, affine/header of the source image, JSON sidecar), several at once in
threads (gzip compression is most of the time and runs outside the GIL). Earlier outputs are only
ever replaced by complete new files, never deleted.
"""
from __future__ import annotations

import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject,
                                    SimpleInterface, TraitedSpec, isdefined, traits)

from ..utils.nifti_io import map_threads, read_image


class _DerivativeSinkInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="images to write")
    rel_paths = traits.List(traits.Str, xor=["suffixes"],
                            desc="relative BIDS path of each image (from derivative_path)")
    suffixes = traits.List(traits.Str, xor=["rel_paths"],
                           desc="or: BIDS suffix of each image, named from entities/desc")
    entities = traits.Dict(desc="subject/session/acquisition/run of the outputs (with suffixes)")
    desc = traits.Str(desc="desc entity of the outputs (with suffixes)")
    datatype = traits.Str("anat", usedefault=True, desc="datatype folder (with suffixes)")
    out_dir = traits.Str(mandatory=True, desc="root of the derivatives dataset")
    metadata = traits.List(traits.Dict, desc="per-file sidecar metadata (same order as in_files)")
    common_metadata = traits.Dict(desc="sidecar metadata added to every file")
    dtype = traits.Enum("float32", "uint8", usedefault=True, desc="stored data type")
    bids_dir = traits.Str(desc="raw dataset (writing inside it is refused)")
    extra_metadata = InputMultiObject(traits.Dict,
                                      desc="more metadata: one dict for all or one per file")


class _DerivativeSinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str, desc="absolute paths written")


class DerivativeSink(SimpleInterface):
    """Write each input image to ``out_dir / rel_path`` with its JSON sidecar."""

    input_spec = _DerivativeSinkInputSpec
    output_spec = _DerivativeSinkOutputSpec
    always_run = True  # cheap; re-creates outputs a user deleted even when nodes are cached

    def _run_interface(self, runtime):
        from ..bids.derivatives import derivative_path, write_derivative

        files = list(self.inputs.in_files)
        if isdefined(self.inputs.rel_paths):
            paths = list(self.inputs.rel_paths)
        else:
            desc = self.inputs.desc if isdefined(self.inputs.desc) else None
            paths = [derivative_path(dict(self.inputs.entities), suffix, desc=desc,
                                     datatype=self.inputs.datatype)
                     for suffix in self.inputs.suffixes]
        if len(files) != len(paths):
            raise ValueError(f"{len(files)} files but {len(paths)} output names")
        per_file = list(self.inputs.metadata) if isdefined(self.inputs.metadata) else [{}] * len(files)
        common = dict(self.inputs.common_metadata) if isdefined(self.inputs.common_metadata) else {}
        extra = list(self.inputs.extra_metadata) if isdefined(self.inputs.extra_metadata) else []
        if len(extra) == 1:
            extra = extra * len(files)
        bids_dir = self.inputs.bids_dir if isdefined(self.inputs.bids_dir) else None

        def write(i: int) -> str:
            meta = {**common, **(per_file[i] if i < len(per_file) else {})}
            if i < len(extra):
                meta.update(extra[i])
            img = read_image(files[i])
            return str(write_derivative(self.inputs.out_dir, paths[i], np.asanyarray(img.dataobj), img,
                                        meta, dtype=np.dtype(self.inputs.dtype), bids_dir=bids_dir))

        written = map_threads(write, range(len(files)))  # gzip runs in parallel threads
        self._results["out_files"] = written
        return runtime
