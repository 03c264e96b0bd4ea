"""Small NIfTI helpers shared by the interfaces (plain nibabel)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def save_like(data: np.ndarray, reference: nib.spatialimages.SpatialImage, path: str | Path,
              dtype=np.float32) -> str:
    """Save ``data`` with the affine (and qform/sform codes) of ``reference``; returns the path."""
    header = reference.header.copy()
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine, header)
    img.set_data_dtype(dtype)
    img.header.set_xyzt_units("mm", "sec")
    if img.ndim == 3:
        img.header["dim"][4:] = 1
    img.set_qform(reference.affine, code=int(reference.header["qform_code"]) or 1)
    img.set_sform(reference.affine, code=int(reference.header["sform_code"]) or 1)
    img.to_filename(str(path))
    return str(Path(path).absolute())


def first_volume(img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """3D image of the first volume of a 4D image (the image itself when 3D)."""
    if img.ndim == 3:
        return img
    return nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
