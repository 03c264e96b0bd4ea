"""Load and check the QALAS volumes of one run.

:func:`check_qalas_headers` reads only headers (cheap; run at discovery so that bad inputs
fail before any processing); :func:`load_qalas_run` reads the data, stacks the five
contrasts in readout order and returns them with the reference image whose affine and
header every derivative copies.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from ..qalas.b1map import DEFAULT_MIN_COVERAGE
from ..qalas.errors import QalasInputError

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
    volumes = []
    for path, img in zip(files, images):
        try:
            data = np.asanyarray(img.dataobj, dtype=np.float32)
        except Exception as exc:  # truncated gzip, wrong vox_offset, ...
            raise QalasInputError(
                f"{path} could not be read ({type(exc).__name__}: {exc}); the file is damaged "
                "or incomplete - re-copy or re-convert it"
            ) from exc
        if len(files) > 1:
            data = data.reshape(data.shape[:3])
            volumes.append(data)
        else:
            volumes = [data[..., i] for i in range(data.shape[3])]
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


def check_volume_order(run: Any, data4d: np.ndarray) -> list[str]:
    """Refuse QALAS volumes that are not in readout order (before any work).

    Uses the signal (:func:`qalas_bids.qalas.plausibility.check_readout_order`, a quick
    fit of a voxel sample in the given order and in alternative orders, including the one
    the sidecars' ``InversionTime`` implies). Raises :class:`QalasInputError` naming the
    files and the order that fits; returns warnings (sidecar times that do not increase
    although the images fit best as given).
    """
    from ..qalas.plausibility import check_readout_order, sample_voxels

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
    if not result.plausible:
        if len(files) > 1:
            fix = "rename the files so that inv-<k> is the k-th readout: " + ", ".join(
                f"{files[src]} -> inv-{k}" for k, src in enumerate(result.best_order) if src != k)
        else:
            fix = (f"reorder the volumes of {files[0]} as {list(result.best_order)} (volume k of the "
                   "new file = that volume of the old one), e.g. with nibabel")
        hint = f"; the sidecars' InversionTime is {times}" if numeric else ""
        raise QalasInputError(
            f"{run.label}: the QALAS volumes are not in readout order. A quick fit of "
            f"{result.n_voxels} voxels leaves a median residual of {100 * result.given_residual:.0f} % "
            f"in the given order but {100 * result.best_residual:.1f} % in the order "
            f"{list(result.best_order)}{hint}. Fix the input: {fix} (or check --vendor-preset "
            "if the timing is another vendor's)")
    if numeric and any(b <= a for a, b in zip(times, times[1:])):
        return [f"the QALAS sidecars' InversionTime {times} does not increase, but the images fit "
                "the signal model best in the given order (inv index / volume order): the sidecars "
                "are probably wrong; fitted in the given order"]
    return []


def b1_node_inputs(b1_source, flip_angle_override: float | None,
                   min_coverage: float = DEFAULT_MIN_COVERAGE) -> dict:
    """Static inputs of :class:`B1ToQalas` for a :class:`~qalas_bids.bids.B1Source`.

    TurboFLASH: the famp image and its nominal flip angle (override > famp sidecar
    ``FlipAngle``). Ready ``TB1map``: relative map (``Units`` percent -> scale 0.01).
    """
    meta = dict(b1_source.metadata or {})
    if b1_source.kind == "tfl":
        angle = flip_angle_override if flip_angle_override is not None else meta.get("FlipAngle")
        return {"in_file": b1_source.files["famp"], "relative": False, "flip_angle": float(angle),
                "min_coverage": min_coverage}
    units = str(meta.get("Units", "")).lower()
    scale = 0.01 if units in ("percent", "%") else 1.0
    return {"in_file": b1_source.files["map"], "relative": True, "scale": scale, "min_coverage": min_coverage}


def check_b1_map(run: Any, data4d: np.ndarray, reference: Any, flip_angle_override: float | None,
                 min_coverage: float = DEFAULT_MIN_COVERAGE) -> dict:
    """Read the run's B1 map and refuse it now when it would give wrong maps later.

    Does what the workflow's B1 node will do (relative B1, QALAS grid, head mask from the
    QALAS data) and applies :func:`qalas_bids.qalas.b1map.check_b1_plausibility`. Raises
    :class:`QalasInputError` naming the run and the file; returns the B1 summary.
    """
    from ..qalas.b1map import b1_in_qalas_space, load_b1_image
    from ..qalas.masking import compute_head_mask

    inputs = b1_node_inputs(run.b1, flip_angle_override, min_coverage)
    path = Path(inputs["in_file"])
    load_nifti_header(path)  # broken links and unreadable headers: its own messages
    try:
        source = load_b1_image(path, inputs.get("scale", 1.0))
    except QalasInputError as exc:
        raise QalasInputError(f"{run.label}: {exc}") from None
    try:
        _, info = b1_in_qalas_space(source, inputs.get("flip_angle"), reference,
                                    head_mask=compute_head_mask(data4d), relative=inputs["relative"],
                                    min_coverage=min_coverage)
    except QalasInputError as exc:
        raise QalasInputError(f"{run.label}: B1 map {path.name}: {exc}") from None
    return info
