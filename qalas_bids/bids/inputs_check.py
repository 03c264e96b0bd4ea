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
