"""Resampling between grids in world coordinates (both affines), and field-of-view masks.

nilearn does the interpolation; this module only wraps it for the shapes the app uses.
"""
from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np

from ..errors import QalasInputError


def resample_b1_to_qalas(b1_img: nib.spatialimages.SpatialImage,
                         qalas_img: nib.spatialimages.SpatialImage,
                         fill_value: float = 0.0) -> nib.Nifti1Image:
    """Resample a 3D B1 image onto the (first 3 dimensions of the) QALAS grid.

    Uses both affines (world coordinates) and linear interpolation
    (:func:`nilearn.image.resample_to_img`). Voxels outside the B1 field of view get
    ``fill_value``.
    """
    from nilearn.image import resample_to_img  # imported here: the CLI parser imports this module

    if b1_img.ndim == 4 and b1_img.shape[3] == 1:
        b1_img = nib.Nifti1Image(np.asanyarray(b1_img.dataobj)[..., 0], b1_img.affine)
    if b1_img.ndim != 3:
        raise QalasInputError(f"B1 map must be a 3D image, got shape {b1_img.shape}")
    target = nib.Nifti1Image(np.zeros(qalas_img.shape[:3], dtype=np.uint8), qalas_img.affine)
    source = nib.Nifti1Image(np.asarray(b1_img.dataobj, dtype=np.float32), b1_img.affine)
    with warnings.catch_warnings():  # a constant map looks "binary" to nilearn: harmless
        warnings.filterwarnings("ignore", message=".*binary images.*", category=UserWarning)
        out = resample_to_img(source, target, interpolation="linear", fill_value=fill_value,
                              force_resample=True, copy_header=True)
    return nib.Nifti1Image(np.asarray(out.dataobj, dtype=np.float32), qalas_img.affine)


#: Voxel-coordinate slack of :func:`field_of_view_mask` (rounding of the affine products).
FOV_TOLERANCE = 1e-6


def field_of_view_mask(b1_img: nib.spatialimages.SpatialImage,
                       qalas_img: nib.spatialimages.SpatialImage) -> np.ndarray:
    """Boolean QALAS-grid mask of the voxels covered by the B1 field of view.

    Covered: the voxel centre maps inside the B1 grid, ``0 <= c <= n - 1`` along every B1
    axis, which is where :func:`resample_b1_to_qalas` interpolates (outside it scipy's
    ``constant`` mode returns the fill value). Computed from the two affines alone.
    """
    shape = qalas_img.shape[:3]
    to_b1 = np.linalg.inv(b1_img.affine) @ qalas_img.affine  # QALAS voxel -> B1 voxel
    axes = [np.arange(n, dtype=np.float64) for n in shape]
    covered = np.ones(shape, dtype=bool)
    for row, n in zip(to_b1[:3], b1_img.shape[:3]):
        coord = (row[0] * axes[0][:, None, None] + row[1] * axes[1][None, :, None]
                 + row[2] * axes[2][None, None, :] + row[3])
        covered &= (coord >= -FOV_TOLERANCE) & (coord <= n - 1 + FOV_TOLERANCE)
    return covered
