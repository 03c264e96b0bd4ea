"""Small NIfTI helpers shared by the interfaces (nibabel images, fast gzip I/O)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import __version__
from .nifti_io import write_image


def image_like(data: np.ndarray, reference: Any, dtype: Any = np.float32) -> nib.Nifti1Image:
    """NIfTI-1 image of ``data`` with the reference's affine, voxel size and qform/sform codes.

    The header is the reference's with the shape and type of ``data``, no scaling or intent
    and ``descrip`` naming qalas-bids (a 4D reference gives a 3D image for 3D data).
    """
    data = np.asanyarray(data)
    header = nib.Nifti1Header.from_header(reference.header)
    header.set_data_shape(data.shape)  # also trims the zooms of a 4D reference
    header.set_data_dtype(dtype)
    header.set_slope_inter(None, None)
    header.set_intent("none")
    header["cal_min"] = header["cal_max"] = 0
    header["descrip"] = f"qalas-bids {__version__}".encode()[:80]
    img = nib.Nifti1Image(data.astype(dtype, copy=False), reference.affine, header=header)
    qform, qcode = reference.get_qform(coded=True)
    sform, scode = reference.get_sform(coded=True)
    img.set_qform(qform if qcode else reference.affine, code=int(qcode or 1))
    img.set_sform(sform if scode else reference.affine, code=int(scode or 1))
    return img


def save_like(data: np.ndarray, reference: Any, path: str | Path, dtype: Any = np.float32) -> str:
    """Save ``data`` on the grid of ``reference`` (:func:`image_like`); returns the absolute path."""
    return write_image(image_like(data, reference, dtype), path)


def first_volume(img: nib.spatialimages.SpatialImage) -> nib.Nifti1Image:
    """3D image of the first volume of a 4D image (the image itself when 3D)."""
    if img.ndim == 3:
        return img
    return nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
