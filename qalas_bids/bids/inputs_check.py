"""Load and check the QALAS volumes (and B1 map) of one run.

:func:`check_qalas_headers` reads only headers (cheap; run at discovery so that bad inputs
fail before any processing); :func:`load_qalas_run` reads the data, stacks the five
contrasts in readout order and returns them with the reference image whose affine and
header every derivative copies. :func:`check_run_inputs` does every check of the data
(readout order, head mask, B1 coverage) and :func:`write_run_inputs` hands the result to
the workflow as files, so the inputs are read once per invocation.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

import nibabel as nib
import numpy as np

from ..qalas.b1.prepare import DEFAULT_MIN_COVERAGE
from ..qalas.errors import QalasInputError
from ..utils.nifti_io import map_threads, read_array
from .b1_pairing import KINDS
from .b1_read import b1_parameters, relative_b1_native

N_CONTRASTS = 5
#: Largest affine difference (mm) still counted as "the same grid".
AFFINE_ATOL = 1e-3


def load_nifti_header(path: str | Path) -> Any:
    """Load a NIfTI lazily (header only); unreadable or broken files raise QalasInputError."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise QalasInputError(
            f"{path} is a broken symbolic link (a DataLad/git-annex file whose content is not "
            "present?): fetch it (e.g. `datalad get`) or copy the real file"
        )
    try:
        img = nib.load(str(path))
        img.header  # noqa: B018 (forces the header parse)
    except FileNotFoundError as exc:
        raise QalasInputError(f"{path} does not exist") from exc
    except Exception as exc:  # nibabel raises many types (ImageFileError, OSError, EOFError...)
        raise QalasInputError(
            f"{path} could not be read as a NIfTI image ({type(exc).__name__}: {exc}); "
            "re-convert it from DICOM or exclude it with --bids-filter-file"
        ) from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise QalasInputError(f"{path} is not a NIfTI image ({type(img).__name__})")
    return img


def _describe_grid(img: Any) -> str:
    zooms = ", ".join(f"{z:.3g}" for z in img.header.get_zooms()[:3])
    return f"shape {img.shape[:3]}, voxel size ({zooms}) mm"


def check_qalas_headers(files: Sequence[str | Path]) -> list[Any]:
    """Check the QALAS files' headers: readable, 5 contrasts in all, one grid.

    ``files`` is five 3D volumes in readout order or one 4D file with five volumes.
    Returns the (lazily loaded) nibabel images. Raises :class:`QalasInputError`.
    """
    files = [Path(f) for f in files]
    images = [load_nifti_header(f) for f in files]
    if len(files) == 1:
        img = images[0]
        n = img.shape[3] if img.ndim == 4 else 1
        if img.ndim not in (3, 4) or n != N_CONTRASTS:
            raise QalasInputError(
                f"{files[0]} has shape {img.shape}: a single QALAS file must be 4D with "
                f"{N_CONTRASTS} volumes (the five readouts in order); split files must be "
                "named ..._inv-<0..4>_QALAS.nii.gz"
            )
        return images
    if len(files) != N_CONTRASTS:
        names = ", ".join(f.name for f in files)
        raise QalasInputError(
            f"found {len(files)} QALAS volumes ({names}) but 3D-QALAS has {N_CONTRASTS} "
            "contrasts: add the missing inv-<n> volume(s) or exclude this run with "
            "--bids-filter-file"
        )
    ref = images[0]
    for path, img in zip(files, images):
        squeezed = img.shape[:3] if img.ndim == 3 or (img.ndim == 4 and img.shape[3] == 1) else None
        if squeezed is None:
            raise QalasInputError(
                f"{path} has shape {img.shape}: each split QALAS volume must be 3D"
            )
        if squeezed != ref.shape[:3] or not np.allclose(img.affine, ref.affine, atol=AFFINE_ATOL):
            raise QalasInputError(
                f"QALAS volumes are on different grids: {files[0].name} ({_describe_grid(ref)}) "
                f"and {path.name} ({_describe_grid(img)}; affines differ: "
                f"{np.abs(img.affine - ref.affine).max():.3g} mm); the five contrasts must come "
                "from one acquisition - re-convert them or resample to a common grid"
            )
    return images


def load_qalas_run(run: Any) -> tuple[np.ndarray, Any]:
    """Read a :class:`~qalas_bids.bids.discovery.QalasRun` as a float32 ``(X, Y, Z, 5)`` array.

    Returns ``(data4d, reference_img)``: the reference is the first QALAS image (its affine and
    header are copied by every derivative). Raises :class:`QalasInputError` for unreadable
    files, wrong volume count, different grids, NaN/Inf, negative magnitudes or an empty
    volume.
    """
    files = [Path(f) for f in run.qalas_files]
    images = check_qalas_headers(files)

    def read(path: Path) -> np.ndarray:
        try:
            return read_array(path, dtype=np.float32)
        except Exception as exc:  # truncated gzip, wrong vox_offset, ...
            raise QalasInputError(
                f"{path} could not be read ({type(exc).__name__}: {exc}); the file is damaged "
                "or incomplete - re-copy or re-convert it"
            ) from exc

    arrays = map_threads(read, files)  # gzip inflation runs in parallel threads
    if len(files) > 1:
        volumes = [data.reshape(data.shape[:3]) for data in arrays]
    else:
        volumes = [arrays[0][..., i] for i in range(arrays[0].shape[3])]
    data4d = np.ascontiguousarray(np.stack(volumes, axis=-1), dtype=np.float32)
    labels = [f.name for f in files] if len(files) > 1 else [
        f"{files[0].name} volume {i}" for i in range(N_CONTRASTS)]
    for i, label in enumerate(labels):
        vol = data4d[..., i]
        bad = ~np.isfinite(vol)
        if bad.any():
            raise QalasInputError(
                f"{label} contains {int(bad.sum())} NaN/Inf voxel(s): QALAS magnitudes must be "
                "finite - re-convert the images (a corrupt conversion or a masking tool wrote NaNs)"
            )
        if not np.any(vol):
            raise QalasInputError(f"{label} is all zeros: the contrast is empty - re-convert it")
        if vol.min() < 0:
            raise QalasInputError(
                f"{label} has negative values (min {float(vol.min()):.3g}): QALAS needs magnitude "
                "images - use the magnitude reconstruction, not phase/real"
            )
    return data4d, images[0]


def check_volume_order(run: Any, data4d: np.ndarray, relaxed: Collection[str] = ()) -> list[str]:
    """Refuse QALAS volumes that are not in readout order (before any work).

    Uses the signal (:func:`qalas_bids.qalas.fitting.readout_order.check_readout_order`, a quick
    fit of a voxel sample in the given order and in alternative orders, including the one
    the sidecars' ``InversionTime`` implies). Raises :class:`QalasInputError` naming the
    files and the order that fits (``readout-order`` in ``relaxed``: a warning instead);
    returns warnings (an alternative order fits nearly as well as the given one; sidecar
    times that do not increase although the images fit best as given).
    """
    from ..qalas.fitting.readout_order import ORDER_RATIO, ORDER_WARN_RATIO, check_readout_order, sample_voxels
    from ..qalas.gates import relax_hint

    if run.timing is None:
        return []
    times = list(run.metadata.get("InversionTimes") or [])
    numeric = len(times) == N_CONTRASTS and all(isinstance(t, (int, float)) for t in times)
    sidecar_order = tuple(int(i) for i in np.argsort(times, kind="stable")) if numeric else None
    voxels = sample_voxels(data4d)
    if voxels.shape[0] < 100:  # too little signal to judge; other checks handle empty images
        return []
    result = check_readout_order(voxels, run.timing.timing,
                                 extra_orders=[sidecar_order] if sidecar_order else [])
    files = [Path(f).name for f in run.qalas_files]
    warnings_ = [] if result.verdict == "fine" else [
        f"gate readout-order: an alternative volume order {list(result.best_order)} leaves a median "
        f"residual of {100 * result.best_residual:.1f} % against {100 * result.given_residual:.1f} % in "
        f"the given order (ratio {result.ratio:.2f}; refused below {ORDER_RATIO}, warned below "
        f"{ORDER_WARN_RATIO}); fitted in the given order"]
    if result.verdict == "refuse":
        if len(files) > 1:
            fix = "rename the files so that inv-<k> is the k-th readout: " + ", ".join(
                f"{files[src]} -> inv-{k}" for k, src in enumerate(result.best_order) if src != k)
        else:
            fix = (f"reorder the volumes of {files[0]} as {list(result.best_order)} (volume k of the "
                   "new file = that volume of the old one), e.g. with nibabel")
        hint = f"; the sidecars' InversionTime is {times}" if numeric else ""
        message = (
            f"{run.label}: the QALAS volumes are not in readout order. A quick fit of "
            f"{result.n_voxels} voxels leaves a median residual of {100 * result.given_residual:.0f} % "
            f"in the given order but {100 * result.best_residual:.1f} % in the order "
            f"{list(result.best_order)}{hint}. Fix the input: {fix} (or check --vendor-preset "
            "if the timing is another vendor's)")
        if "readout-order" not in relaxed:
            raise QalasInputError(message + "." + relax_hint("readout-order"))
        warnings_ = [f"gate readout-order: refusal relaxed with --relax-gate readout-order. {message}"]
    if numeric and any(b <= a for a, b in zip(times, times[1:])):
        warnings_.append(f"the QALAS sidecars' InversionTime {times} does not increase, but the images fit "
                         "the signal model best in the given order (inv index / volume order): the sidecars "
                         "are probably wrong; fitted in the given order")
    return warnings_


#: QALAS contrast (readout index) each kind's B1 magnitude is registered to, by
#: measurement (docs/b1.md: RMS error over the head on the 2 mm digital brain): the last,
#: most recovered contrast for the PD-weighted TFL/RFM anat and long-TR DAM magnitudes
#: (0.2-0.3 mm), the second for the T1-weighted AFI tr1 image (0.5 mm; contrast 4: 1.2 mm).
FIXED_CONTRAST = {"tfl": 4, "rfm": 4, "dam": 4, "afi": 1}


def b1_on_qalas_grid(run: Any, reference: Any, head_mask: np.ndarray, flip_angle_override: float | None,
                     min_coverage: float = DEFAULT_MIN_COVERAGE, relaxed: Collection[str] = (),
                     signal: np.ndarray | None = None, *, afi_tr_ratio: float | None = None,
                     registration: str = "header", qalas_data: np.ndarray | None = None,
                     ) -> tuple[np.ndarray, dict, Any]:
    """The run's relative B1 on the QALAS grid (float32, 0 outside the head), its summary
    and the rigid transform (SimpleITK, None with header geometry).

    The map of any kind is converted on its own grid (:mod:`.b1_read`), optionally moved by
    a rigid registration of its magnitude to the QALAS contrast :data:`FIXED_CONTRAST`
    (``registration="rigid"``, needs ``qalas_data``), resampled with both affines, clipped
    and checked by :func:`qalas_bids.qalas.b1.prepare.judged_b1_in_qalas_space` where the map has
    data (the TurboFLASH anat image, when there is one, is its magnitude) and where the
    QALAS images have signal (``signal``); ``relaxed`` gates warn instead of refusing. The
    summary records the kind, the conversion parameters, the registration and the B1 QC;
    its ``Warnings`` reach every sidecar and the report. Raises :class:`QalasInputError`
    naming the run and the file when the map would give wrong maps.
    """
    from ..qalas.b1.coregister import register_rigid, registered_affine, too_thin_to_register
    from ..qalas.b1.prepare import judged_b1_in_qalas_space
    from ..qalas.b1.quality import motion_warnings, structure_stats, structure_warnings
    from ..qalas.spaces.resample import resample_b1_to_qalas

    b1 = run.b1
    for path in b1.files.values():
        load_nifti_header(path)  # broken links and unreadable headers: their own messages
    try:
        params = b1_parameters(b1, flip_angle_override, afi_tr_ratio)
        native = relative_b1_native(b1, params)
    except QalasInputError as exc:
        raise QalasInputError(f"{run.label}: {exc}") from None
    if native["scale"]:
        params["TB1mapScale"] = native["scale"]
    warnings: list[str] = []
    field, invalid = native["b1"], native["invalid"]
    transform = None
    reg_info: dict[str, Any] = {"Method": "header geometry (both affines)"}
    if native["magnitude"] is None:
        reg_info["Note"] = "no magnitude image of the B1 map to register: header geometry used, motion not checked"
    elif qalas_data is not None and (thin := too_thin_to_register(qalas_data.shape, reference.header.get_zooms())):
        reg_info["Note"] = thin
    elif qalas_data is not None:
        # The registration also runs with header placement: it measures the motion for the QC.
        contrast = FIXED_CONTRAST[b1.kind]
        fixed = nib.Nifti1Image(np.asarray(qalas_data[..., contrast], np.float32), reference.affine)
        try:
            result = register_rigid(native["magnitude"], fixed, head_mask)
        except QalasInputError as exc:
            if registration == "rigid":
                raise QalasInputError(f"{run.label}: {exc}") from None
            result = None
            reg_info["Note"] = f"motion not measured: {exc}"
        if result is not None:
            measured = {**result.summary(), "MovingImage": Path(b1.files[KINDS[b1.kind]["magnitude"]]).name,
                        "FixedImage": f"QALAS contrast {contrast} (readout order, from 0)"}
            warnings += motion_warnings(result.translation_mm, result.rotation_deg,
                                        applied=registration == "rigid")
            if registration == "rigid":
                field = nib.Nifti1Image(np.asarray(field.dataobj), registered_affine(field.affine, result))
                invalid = nib.Nifti1Image(np.asarray(invalid.dataobj), registered_affine(invalid.affine, result))
                transform, reg_info = result.transform, measured
            else:
                reg_info["MeasuredMotion"] = measured
    if b1.kind == "tfl":  # the gate's hint names the famp nominal angle
        source = nib.Nifti1Image(np.asarray(field.dataobj) * 10.0 * params["NominalFlipAngle"], field.affine)
        angle, relative = params["NominalFlipAngle"], False
    else:
        source, angle, relative = field, None, True
    magnitude = _gate_magnitude(b1.kind, native, field)
    try:
        img, info, judged = judged_b1_in_qalas_space(source, angle, reference, head_mask=head_mask,
                                                     relative=relative, min_coverage=min_coverage,
                                                     magnitude_img=magnitude, signal=signal, relaxed=relaxed)
    except QalasInputError as exc:
        names = ", ".join(Path(p).name for p in b1.files.values())
        raise QalasInputError(f"{run.label}: B1 map {names}: {exc}") from None
    out = np.asarray(img.dataobj, dtype=np.float32)
    holes = np.asarray(resample_b1_to_qalas(invalid, reference).dataobj)
    zooms = tuple(float(z) for z in reference.header.get_zooms()[:3])
    stats = structure_stats(out, judged, zooms, holes)  # where the B1 gates judge the map
    warnings += structure_warnings(stats)
    info = {**info, "Conversion": params, "Registration": reg_info, "QC": stats,
            "Warnings": list(info.get("Warnings", [])) + warnings}
    return out, info, transform


def _gate_magnitude(kind: str, native: dict, field: Any) -> Any:
    """The TurboFLASH anat (magnitude) image placed like ``field`` (registered or not), or
    None (other kinds, absent, or on another grid than the famp image: then only the map's
    own zeros mark where it has no data)."""
    magnitude, original = native.get("magnitude"), native["b1"]
    if kind != "tfl" or magnitude is None:
        return None
    same_grid = (magnitude.shape[:3] == original.shape[:3]
                 and np.allclose(magnitude.affine, original.affine, atol=AFFINE_ATOL))
    return nib.Nifti1Image(np.asarray(magnitude.dataobj), field.affine) if same_grid else None


@dataclass
class RunInputs:
    """One run's checked inputs on the QALAS grid (what the fit needs).

    data : ``(X, Y, Z, 5)`` float32 magnitudes in readout order
    reference : the first QALAS image (affine and header copied by every output)
    mask : head mask (bool; CSF included), :func:`qalas_bids.qalas.tissue.masking.compute_head_mask`
    b1 : relative B1 (float32, 0 outside the head), None without a B1 map or with ``--no-b1``
    b1_info : coverage/clipping/conversion/registration/QC summary of the B1 map (empty without one)
    warnings : warnings of the checks (recorded in the sidecars; the fit adds the no-B1
        bias statement, :data:`qalas_bids.qalas.fitting.voxel_inputs.NO_B1_WARNING`)
    b1_transform : the rigid B1 -> QALAS transform (SimpleITK) or None
    """

    data: np.ndarray
    reference: Any
    mask: np.ndarray
    b1: np.ndarray | None = None
    b1_info: dict = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    b1_transform: Any = None


def check_run_inputs(run: Any, *, use_b1: bool = True, flip_angle_override: float | None = None,
                     min_coverage: float = DEFAULT_MIN_COVERAGE, relaxed: Collection[str] = (),
                     afi_tr_ratio: float | None = None, b1_registration: str = "header") -> RunInputs:
    """Read one run once and check everything its data can get wrong, before any work.

    Unreadable files, NaN/Inf, negative or empty contrasts, volumes out of readout order
    (exit 2 with the fix), an empty head, and a B1 map that is implausible or covers too
    little of the head all raise :class:`QalasInputError` (gates named in ``relaxed`` warn
    instead, ``--relax-gate``; ``docs/gates.md``). The arrays it returns are the
    fit's inputs (:func:`write_run_inputs`), so nothing is read or computed twice.
    """
    data4d, reference = load_qalas_run(run)  # NaN/Inf, negative, empty contrasts
    # The readout-order check (a quick torch fit, outside the GIL) runs alongside the head
    # mask and the B1 resampling (scipy); its error, if any, is raised first.
    with ThreadPoolExecutor(max_workers=1) as pool:
        order = pool.submit(check_volume_order, run, data4d, relaxed)  # out of readout order: error
        try:
            mask = _head_mask(run, data4d)
            b1, b1_info, transform = None, {}, None
            if use_b1 and run.b1 is not None:
                from ..qalas.tissue.masking import signal_mask

                b1, b1_info, transform = b1_on_qalas_grid(
                    run, reference, mask, flip_angle_override, min_coverage, relaxed,
                    signal=signal_mask(data4d), afi_tr_ratio=afi_tr_ratio,
                    registration=b1_registration, qalas_data=data4d)
        except QalasInputError:
            order.result()  # volumes out of order explain a failed mask or B1 check: that error first
            raise
        warnings = tuple(order.result())
    return RunInputs(data4d, reference, mask, b1, b1_info, warnings, transform)


def _head_mask(run: Any, data4d: np.ndarray) -> np.ndarray:
    from ..qalas.tissue.masking import compute_head_mask

    try:
        return compute_head_mask(data4d)
    except QalasInputError as exc:
        raise QalasInputError(f"{run.label}: {exc}") from None


@dataclass(frozen=True)
class PreparedInputs:
    """Files of :func:`write_run_inputs` (absolute paths) and the B1 summary."""

    qalas_file: str
    mask_file: str
    b1_file: str | None = None
    b1_info: dict = field(default_factory=dict)
    b1_transform_file: str | None = None


def write_run_inputs(inputs: RunInputs, folder: str | Path) -> PreparedInputs:
    """Write the checked inputs as ``qalas_4d``, ``head_mask`` and ``b1_qalas`` ``.nii.gz``.

    The bytes depend only on the data (gzip without a time stamp), so a rerun on the same
    inputs leaves the workflow's cached results valid.
    """
    from ..utils.images import image_like
    from ..utils.nifti_io import write_images

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(image_like(inputs.data, inputs.reference), folder / "qalas_4d.nii.gz"),
             (image_like(inputs.mask.astype(np.uint8), inputs.reference, np.uint8), folder / "head_mask.nii.gz")]
    if inputs.b1 is not None:
        pairs.append((image_like(inputs.b1, inputs.reference), folder / "b1_qalas.nii.gz"))
    paths = write_images(pairs)
    xfm = None
    if inputs.b1_transform is not None:
        import SimpleITK as sitk

        xfm = str((folder / "b1_to_qalas_xfm.txt").absolute())
        sitk.WriteTransform(inputs.b1_transform, xfm)
    return PreparedInputs(paths[0], paths[1], paths[2] if inputs.b1 is not None else None, dict(inputs.b1_info),
                          xfm)
