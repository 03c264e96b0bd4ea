"""Voxel-wise QALAS fit of one run (calls :func:`qalas_bids.qalas.fitting.fit_volume.fit_volume`)."""
from __future__ import annotations

import json
import os

import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, SimpleInterface,
                                    TraitedSpec, isdefined, traits)

from ..qalas.fitting.fit_volume import MAP_KEYS
from ..qalas.fitting.fit_volume import METHODS as FIT_MODES
from ..qalas.physics.timing import SequenceTiming
from ..utils.images import first_volume, image_like
from ..bids.sidecars import fit_sidecar_metadata
from ..utils.nifti_io import read_array, read_image, write_images



class _FitQalasInputSpec(BaseInterfaceInputSpec):
    qalas_file = File(exists=True, mandatory=True, desc="4D QALAS image (X, Y, Z, 5)")
    mask_file = File(exists=True, mandatory=True, desc="mask of the voxels to fit")
    b1_file = File(exists=True, desc="relative B1 on the QALAS grid (omitted: B1 = 1)")
    timing = traits.Dict(mandatory=True, desc="SequenceTiming.as_dict()")
    method = traits.Enum(*FIT_MODES, usedefault=True, desc="fit mode")
    device = traits.Str("auto", usedefault=True, desc="auto, cpu, cuda or cuda:N")
    seed = traits.Int(0, usedefault=True, desc="random seed")
    model_path = File(exists=True, desc="network weights for pretrained / fine-tune")
    ssl_options = traits.Dict(desc="expert SSL options (epochs, batch_size, ...)")
    num_threads = traits.Int(1, usedefault=True, desc="torch CPU threads")
    noise_floor_correction = traits.Bool(True, usedefault=True,
                                         desc="remove the Rician noise floor before fitting")
    timing_sources = traits.Dict(desc="where each timing value came from (for the sidecar)")
    timing_warnings = traits.List(traits.Str, desc="timing warnings (for the sidecar)")
    extra_warnings = traits.List(traits.Str, desc="warnings of the checks before the workflow (for the sidecar)")
    b1_info = traits.Dict(desc="B1 preparation summary (for the sidecar)")
    force_model = traits.Bool(False, usedefault=True,
                              desc="use model_path even if trained for another timing (--force-model)")
    model_warnings = traits.List(traits.Str, desc="model compatibility warnings (for the sidecar)")
    save_model_path = traits.Str(desc="write the trained network here (scan-specific / fine-tune)")
    model_provenance = traits.Dict(desc="acquisition (sidecar keys) and sources (BIDS URIs) of the run, "
                                        "stored in the saved model")
    progress = traits.Bool(True, usedefault=True,
                           desc="print progress lines (phase, step, loss, elapsed, ETA) to stderr")
    progress_label = traits.Str("", usedefault=True, desc="prefix of the progress lines (the run)")


class _FitQalasOutputSpec(TraitedSpec):
    out_maps = traits.List(File(exists=True), desc=f"maps in the order {MAP_KEYS}")
    t1 = File(exists=True, desc="T1 (s)")
    t2 = File(exists=True, desc="T2 (s)")
    pd = File(exists=True, desc="PD (a.u.)")
    ie = File(exists=True, desc="inversion efficiency")
    info = traits.Dict(desc="VolumeFit.info (JSON-serialisable provenance)")
    info_file = File(exists=True, desc="info as JSON")
    sidecar = traits.Dict(desc="sidecar keys derived from info (SequenceTiming, FitInfo, Warnings)")


class FitQalas(SimpleInterface):
    """Fit T1/T2/PD/IE (+ CRLB and residual maps) inside the mask."""

    input_spec = _FitQalasInputSpec
    output_spec = _FitQalasOutputSpec

    def _ssl_options(self) -> dict | None:
        options = dict(self.inputs.ssl_options) if isdefined(self.inputs.ssl_options) else {}
        if self.inputs.method == "dictionary":
            return options or None
        if self.inputs.force_model:
            options["force_model"] = True
        if isdefined(self.inputs.save_model_path) and self.inputs.method != "pretrained":
            options["save_model_path"] = self.inputs.save_model_path
        return options or None

    def _run_interface(self, runtime):
        import torch

        from ..qalas.fitting.fit_volume import fit_volume
        from ..qalas.fitting.progress import ProgressReporter, interval_from_env

        torch.set_num_threads(max(1, self.inputs.num_threads))
        img = read_image(self.inputs.qalas_file)
        reference = first_volume(img)
        qalas = np.asarray(img.dataobj, dtype=np.float32)
        mask = read_array(self.inputs.mask_file, dtype=np.uint8) > 0
        b1 = None
        if isdefined(self.inputs.b1_file):
            b1 = read_array(self.inputs.b1_file)
        with ProgressReporter(f"{self.inputs.progress_label} {self.inputs.method} fit".strip(),
                              interval=interval_from_env(), enabled=self.inputs.progress):
            result = fit_volume(
                qalas, b1, mask, SequenceTiming(**self.inputs.timing),
                method=self.inputs.method,
                device=self.inputs.device,
                seed=self.inputs.seed,
                model_path=self.inputs.model_path if isdefined(self.inputs.model_path) else None,
                ssl_options=self._ssl_options(),
                progress=False,
                noise_floor_correction=self.inputs.noise_floor_correction,
            )
        saved = (self._ssl_options() or {}).get("save_model_path")
        if saved:
            from ..qalas.fitting.cohort import annotate_model
            from ..qalas.fitting.pretrained import file_sha256

            prov = dict(self.inputs.model_provenance) if isdefined(self.inputs.model_provenance) else {}
            annotate_model(saved, acquisition=prov.get("acquisition"), sources=prov.get("sources", ()),
                           training={"run": prov.get("label")})
            result.info["saved_model"] = {"path": saved, "sha256": file_sha256(saved)}
        result.info["force_model"] = bool(self.inputs.force_model)
        if isdefined(self.inputs.model_warnings):
            result.info["warnings"] = list(self.inputs.model_warnings) + list(result.info.get("warnings", []))
        out_maps = write_images((image_like(result.maps[key], reference), os.path.join(runtime.cwd, f"{key}.nii.gz"))
                                for key in MAP_KEYS)
        self._results.update({key: path for key, path in zip(MAP_KEYS, out_maps) if key in ("t1", "t2", "pd", "ie")})
        info = json.loads(json.dumps(result.info, default=str))
        info_file = os.path.join(runtime.cwd, "fit_info.json")
        with open(info_file, "w") as fobj:
            json.dump(info, fobj, indent=2)
        optional = {name: getattr(self.inputs, name) for name in
                    ("timing_sources", "timing_warnings", "b1_info", "extra_warnings")
                    if isdefined(getattr(self.inputs, name))}
        sidecar = fit_sidecar_metadata(info, **optional)
        self._results.update(out_maps=out_maps, info=info, info_file=info_file, sidecar=sidecar)
        return runtime
