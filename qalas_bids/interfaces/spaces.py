"""Registration to the T1w/template spaces and resampling of every output (one node per run),
and a sink for non-image derivatives (transform files)."""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (BaseInterfaceInputSpec, File, InputMultiObject, SimpleInterface,
                                    TraitedSpec, isdefined, traits)

from ..utils.images import save_like
from ..utils.nifti_io import io_threads, read_array, read_arrays

#: (suffix, desc) of the nine maps in MAP_KEYS order (as the QALAS-space sinks name them).
MAP_NAMES = (("T1map", None), ("T2map", None), ("PDmap", None), ("IEmap", None),
             ("T1map", "crlb"), ("T2map", "crlb"), ("PDmap", "crlb"), ("IEmap", "crlb"),
             ("QALAS", "residual"))
MASK_NAMES = (("mask", "brain"), ("mask", "head"))


def _map_description(suffix: str, desc: str | None) -> dict:
    """Units and Description of a resampled output (from the QALAS-space sidecars' table)."""
    from ..bids.sidecars import MAP_OUTPUTS

    for out_suffix, out_desc, units, description in MAP_OUTPUTS:
        if (out_suffix, out_desc) == (suffix, desc):
            return {"Units": units, "Description": description}
    return {"Units": "arbitrary", "Description": f"synthetic {suffix} contrast"}


class _ToSpacesInputSpec(BaseInterfaceInputSpec):
    maps = InputMultiObject(File(exists=True), mandatory=True, desc="nine maps (MAP_KEYS order)")
    brain_mask = File(exists=True, mandatory=True)
    head_mask = File(exists=True, mandatory=True)
    synth_files = InputMultiObject(File(exists=True), desc="synthetic contrasts")
    synth_names = traits.List(traits.Str, desc="their suffixes")
    t1w = File(exists=True, desc="the session's T1w (fixed image of the rigid step)")
    t1w_mask = File(exists=True, desc="its brain mask (sMRIPrep), restricts the metric")
    write_t1w = traits.Bool(False, usedefault=True, desc="write space-T1w outputs")
    t1w_reference = traits.Str(desc="SpatialReference of space-T1w outputs (BIDS URI)")
    templates = traits.List(traits.Dict, desc="per template: label, space, res, cohort, t1w, mask, "
                                              "resolution_text, reference (SpatialReference), "
                                              "t1w_to_template (or empty)")
    atlases = traits.List(traits.Dict, desc="per atlas: space_key (T1w or <label>_res-<r>), atlas "
                                            "label, dseg, tsv (index/name)")
    entities = traits.Dict(mandatory=True, desc="output entities of the run")
    sources = traits.List(traits.Str, desc="BIDS URIs of the QALAS-space outputs' inputs")
    seed = traits.Int(0, usedefault=True)
    num_threads = traits.Int(1, usedefault=True)


class _ToSpacesOutputSpec(TraitedSpec):
    image_files = traits.List(File(exists=True), desc="resampled maps and contrasts")
    image_paths = traits.List(traits.Str, desc="their derivative paths")
    image_metadata = traits.List(traits.Dict)
    mask_files = traits.List(File(exists=True), desc="resampled masks (nearest neighbour)")
    mask_paths = traits.List(traits.Str)
    mask_metadata = traits.List(traits.Dict)
    xfm_files = traits.List(File(exists=True), desc="transform files (ITK)")
    xfm_paths = traits.List(traits.Str)
    xfm_metadata = traits.List(traits.Dict)
    table_files = traits.List(File(exists=True), desc="atlas ROI tables (TSV)")
    table_paths = traits.List(traits.Str)
    table_metadata = traits.List(traits.Dict)
    info = traits.Dict(desc="per space: method, metric, iterations, seconds")


class ToOutputSpaces(SimpleInterface):
    """Register QALAS to the T1w (rigid) and templates, resample every output onto each grid."""

    input_spec = _ToSpacesInputSpec
    output_spec = _ToSpacesOutputSpec

    def _run_interface(self, runtime):
        from ..bids.derivatives import derivative_path
        from ..qalas.spaces import registration as reg
        from ..qalas.spaces.to_spaces import (qalas_to_t1w, qalas_to_template, registration_contrast,
                                              template_via_t1w)

        reg.set_threads(self.inputs.num_threads)
        ents = dict(self.inputs.entities)
        ref = nib.load(self.inputs.maps[0])
        maps = read_arrays(self.inputs.maps)
        brain = read_array(self.inputs.brain_mask, np.uint8) > 0
        head = read_array(self.inputs.head_mask, np.uint8) > 0
        synth_files = list(self.inputs.synth_files) if isdefined(self.inputs.synth_files) else []
        synth_names = list(self.inputs.synth_names) if isdefined(self.inputs.synth_names) else []
        synth = read_arrays(synth_files) if synth_files else []
        contrast = registration_contrast(maps[0], maps[2], head)
        sources = list(self.inputs.sources) if isdefined(self.inputs.sources) else []
        out = {k: [] for k in ("image_files", "image_paths", "image_metadata", "mask_files",
                               "mask_paths", "mask_metadata", "xfm_files", "xfm_paths", "xfm_metadata",
                               "table_files", "table_paths", "table_metadata")}
        from ..qalas.tissue.classes import reliable_voxels

        reliable = reliable_voxels(brain, maps[0], maps[1], maps[3], maps[4], maps[8])[0]
        atlases = list(self.inputs.atlases) if isdefined(self.inputs.atlases) else []
        info: dict = {}
        image_names = MAP_NAMES + tuple((n, "synthetic") for n in synth_names)
        # images by (suffix, desc); NaN -> 0 once here, so linear resampling stays finite
        images = {**{name: np.nan_to_num(a) for name, a in zip(image_names, maps + synth)},
                  **dict(zip(MASK_NAMES, (brain, head))), "reliable": reliable}
        qalas_images: dict = {}  # the same keys -> SimpleITK image, made once per run

        def move(name, transform, shape, affine, nearest: bool = False):
            """The QALAS image ``name`` on the target grid (a SimpleITK image)."""
            if name not in qalas_images:
                qalas_images[name] = reg.to_sitk(images[name], ref.affine)
            return reg.resample_sitk(qalas_images[name], transform, shape, affine, nearest=nearest)

        def add_xfm(transform, to: str, ext: str, description: str, registration: dict) -> str:
            rel = derivative_path(ents, "xfm", extension=ext, from_="QALAS", to=to, mode="image")
            path = reg.write_transform(transform, os.path.join(runtime.cwd, os.path.basename(rel)))
            out["xfm_files"].append(path)
            out["xfm_paths"].append(rel)
            out["xfm_metadata"].append({"Description": description, "Sources": sources,
                                        "FromSpace": "QALAS", "ToSpace": to, "Registration": registration,
                                        "Convention": "ITK/ANTs: maps points of the target grid to "
                                                      "the QALAS grid (resampling transform)"})
            return rel

        def resample_all(space: str, ref_img, transform, xfms: list[str], extra: dict, res=None, cohort=None,
                         key: str = ""):
            shape, affine = ref_img.shape[:3], ref_img.affine
            transform = reg.resampling_transform(transform, shape, affine)
            tag = f"{space}_{res or ''}_{cohort or ''}"
            meta = {"SkullStripped": False, "Sources": sources, "Transforms": [f"bids::{x}" for x in xfms],
                    "Interpolation": "linear", **extra}
            tables = [a for a in atlases if a["space_key"] == key]
            moved_maps = {}  # the quantitative maps the tables need (copies)

            def save(moved, name: str, dtype=np.float32) -> str:
                # no copy: ``moved`` (the SimpleITK image) stays referenced until it is written
                return save_like(reg.array_view(moved), ref_img, os.path.join(runtime.cwd, name), dtype=dtype)

            # gzip in threads while the next image resamples (both release the GIL)
            with ThreadPoolExecutor(max_workers=io_threads(2)) as writer:
                images_written, masks_written = [], []
                for suffix, desc in image_names:
                    moved = move((suffix, desc), transform, shape, affine)
                    if tables and desc is None:
                        moved_maps[(suffix, desc)] = reg.from_sitk(moved)
                    images_written.append(writer.submit(save, moved, f"{tag}_{suffix}_{desc}.nii.gz"))
                    out["image_paths"].append(derivative_path(ents, suffix, desc=desc, space=space,
                                                              res=res, cohort=cohort))
                    out["image_metadata"].append({**meta, **_map_description(suffix, desc)})
                for suffix, desc in MASK_NAMES:
                    moved = move((suffix, desc), transform, shape, affine, nearest=True)
                    masks_written.append(writer.submit(save, moved, f"{tag}_{desc}_mask.nii.gz", np.uint8))
                    out["mask_paths"].append(derivative_path(ents, suffix, desc=desc, space=space,
                                                             res=res, cohort=cohort))
                    out["mask_metadata"].append({**meta, "Interpolation": "nearest neighbour",
                                                 **({"Type": "Brain"} if desc == "brain" else {})})
                out["image_files"] += [f.result() for f in images_written]
                out["mask_files"] += [f.result() for f in masks_written]
            for atlas in tables:
                use = reg.from_sitk(move("reliable", transform, shape, affine, nearest=True)) > 0
                write_table(atlas, ref_img, moved_maps, use, space, res, cohort, meta)

        def write_table(atlas, ref_img, moved, use, space, res, cohort, meta):
            from ..qalas.tissue.regions import read_label_table, region_rows, rows_to_tsv

            dseg = nib.load(atlas["dseg"])
            labels = np.asarray(dseg.dataobj).astype(np.int32)
            if labels.shape != ref_img.shape[:3] or not np.allclose(dseg.affine, ref_img.affine, atol=1e-3):
                labels = reg.resample_array(labels, dseg.affine, reg.rigid_from_ras_matrix(np.eye(4)),
                                            ref_img.shape[:3], ref_img.affine, nearest=True)
            names = (read_label_table(open(atlas["tsv"]).read()) if atlas.get("tsv")
                     else {int(i): str(int(i)) for i in np.unique(labels) if i})
            values = {"t1": moved[("T1map", None)], "t2": moved[("T2map", None)],
                      "pd": moved[("PDmap", None)], "ie": moved[("IEmap", None)]}
            rel = derivative_path(ents, "qmri", space=space, res=res, cohort=cohort, atlas=atlas["label"],
                                  stat="summary", extension=".tsv")
            path = os.path.join(runtime.cwd, os.path.basename(rel))
            with open(path, "w") as fh:
                fh.write(rows_to_tsv(region_rows(labels, names, values, use)))
            out["table_files"].append(path)
            out["table_paths"].append(rel)
            out["table_metadata"].append({
                "Description": f"per-region T1 (s), T2 (s), PD and IE of atlas {atlas['label']} in "
                               f"space {space}: voxel count, reliable-voxel count (not at a range bound, "
                               "residual and relative CRLB below their limits), median, mean and IQR over "
                               "the reliable voxels", "Atlas": atlas["label"], "AtlasFile": atlas["dseg"],
                "Transforms": meta["Transforms"], "Sources": sources})

        rigid = None
        if isdefined(self.inputs.t1w):
            t1w_img = nib.squeeze_image(nib.load(self.inputs.t1w))  # (x, y, z, 1) -> 3D
            t1w = np.asarray(t1w_img.dataobj, np.float32)
            t1w_mask = (read_array(self.inputs.t1w_mask, np.uint8) > 0) if isdefined(self.inputs.t1w_mask) else None
            start = time.perf_counter()
            result = qalas_to_t1w(contrast, ref.affine, t1w, t1w_img.affine, seed=self.inputs.seed,
                                  t1w_mask=t1w_mask)
            rigid = result.transform
            info["T1w"] = {"Method": "rigid, Mattes mutual information (SimpleITK)",
                           "Metric": result.metric, "Iterations": result.iterations,
                           "Seconds": round(time.perf_counter() - start, 2)}
            rigid_rel = add_xfm(rigid, "T1w", ".txt", "rigid QALAS -> T1w (Mattes MI, SimpleITK)", info["T1w"])
            if self.inputs.write_t1w:
                reference = self.inputs.t1w_reference if isdefined(self.inputs.t1w_reference) else ""
                resample_all("T1w", t1w_img, rigid, [rigid_rel], {"SpatialReference": reference}, key="T1w")

        def register(target: dict, tpl_img, key: str):
            """QALAS -> template transform (sMRIPrep's through the rigid step, or registered)."""
            start = time.perf_counter()
            if target.get("t1w_to_template"):
                if rigid is None:
                    raise ValueError("a T1w -> template transform needs the session's T1w")
                transform = template_via_t1w(reg.read_transform(target["t1w_to_template"]), rigid)
                method = f"rigid QALAS -> T1w then {os.path.basename(target['t1w_to_template'])}"
                metric, iterations = None, None
            else:
                mask = np.asarray(nib.load(target["mask"]).dataobj)
                result = qalas_to_template(np.where(brain, contrast, 0), ref.affine,
                                           np.asarray(tpl_img.dataobj, np.float32), mask, tpl_img.affine,
                                           seed=self.inputs.seed)
                transform, metric, iterations = result.transform, result.metric, result.iterations
                method = ("affine + B-spline (40 mm mesh), Mattes mutual information, then "
                          f"diffeomorphic demons (SimpleITK); {result.note}")
            info[key] = {
                "Method": method, "Metric": metric, "Iterations": iterations,
                "Seconds": round(time.perf_counter() - start, 2)}
            rel = add_xfm(transform, target["label"], ".h5", f"QALAS -> {target['label']}: {method}", info[key])
            return transform, rel, key

        registered: dict[str, tuple] = {}  # template label -> (transform, file, key): one per template
        for target in self.inputs.templates if isdefined(self.inputs.templates) else []:
            tpl_img = nib.load(target["t1w"])
            key = target["label"] + (f"_res-{target['res']}" if target.get("res") else "")
            if target["label"] in registered:  # another resolution: the transform is in world mm
                first = registered[target["label"]][2]
                info[key] = {"Method": f"the {first} transform (same template)", "Seconds": 0.0}
            else:
                registered[target["label"]] = register(target, tpl_img, key)
            transform, rel, _ = registered[target["label"]]
            resample_all(target["space"], tpl_img, transform, [rel],
                         {"Resolution": target["resolution_text"],
                          **({"SpatialReference": target["reference"]} if target.get("reference") else {})},
                         res=target.get("res"),
                         cohort=target.get("cohort"), key=key)
        out["info"] = info
        self._results.update(out)
        return runtime


class _FileSinkInputSpec(BaseInterfaceInputSpec):
    # not mandatory: a run can have nothing to copy (no atlas table with --output-spaces T1w
    # alone), and nipype treats an empty list as no value
    in_files = InputMultiObject(File(exists=True))
    rel_paths = traits.List(traits.Str)
    metadata = traits.List(traits.Dict)
    out_dir = traits.Str(mandatory=True)
    bids_dir = traits.Str()


class _FileSinkOutputSpec(TraitedSpec):
    out_files = traits.List(traits.Str)


class FileSink(SimpleInterface):
    """Copy non-image derivatives (transforms) into the output dataset, atomically."""

    input_spec = _FileSinkInputSpec
    output_spec = _FileSinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from ..bids.derivatives import copy_derivative

        metadata = list(self.inputs.metadata) if isdefined(self.inputs.metadata) else []
        bids_dir = self.inputs.bids_dir if isdefined(self.inputs.bids_dir) else None
        in_files = self.inputs.in_files if isdefined(self.inputs.in_files) else []
        rel_paths = self.inputs.rel_paths if isdefined(self.inputs.rel_paths) else []
        self._results["out_files"] = [
            str(copy_derivative(self.inputs.out_dir, rel, src, metadata[i] if i < len(metadata) else None,
                                bids_dir=bids_dir))
            for i, (src, rel) in enumerate(zip(in_files, rel_paths))]
        return runtime
