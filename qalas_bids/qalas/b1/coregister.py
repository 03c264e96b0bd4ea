"""Rigid coregistration of a B1+ map to QALAS through the B1 map's own magnitude image.

The head may move between the B1 acquisition and QALAS; header geometry alone then puts
the field in the wrong place. :func:`register_rigid` registers the B1 magnitude (TFL
``acq-anat``, AFI ``tr1``, DAM first angle) to a QALAS contrast with SimpleITK: Euler3D
(6 parameters), Mattes mutual information, regular sampling with a fixed seed, one
thread, three resolution levels, from the header alignment and, when they look better,
from two rotation-searched starts (the best mutual information wins) - the same images
give the same transform. :func:`registered_affine` applies the result to the B1 field's
affine, so the field is then resampled on the QALAS grid with the usual header resampling.

World coordinates: nibabel affines are RAS, ITK is LPS; the result is given in RAS (mm).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..errors import QalasInputError
from ..spaces.registration import (coarse_image, linear_matrix, mask_on, mutual_information, search_rotations,
                                   single_transform)
from ..spaces.registration import to_sitk as array_to_sitk

#: Seed of the metric's sampling (fixed: the registration is deterministic).
SEED = 20240917
#: Fraction of fixed-image voxels sampled by the metric, per level.
SAMPLING_FRACTION = 0.25
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: ``--b1-registration`` choices and the default (chosen by measurement: docs/b1.md).
REGISTRATION_MODES = ("header", "rigid")
DEFAULT_REGISTRATION = "rigid"
#: Smallest QALAS field of view (mm, every axis) a rigid registration is trusted on: on a
#: thin slab the through-plane rotations are not determined (measured on the stress corpus,
#: 7-20 mm slabs: 4-21 mm of false motion), so the map keeps its header placement there.
MIN_EXTENT_MM = 60.0


def too_thin_to_register(shape: tuple[int, ...], zooms: tuple[float, ...]) -> str | None:
    """Why a QALAS grid of ``shape``/``zooms`` (mm) is too thin for a rigid registration, or None."""
    extent = [float(n) * float(z) for n, z in zip(shape[:3], zooms[:3])]
    if min(extent) >= MIN_EXTENT_MM:
        return None
    return (f"the QALAS field of view is {min(extent):.0f} mm thick (at least {MIN_EXTENT_MM:.0f} mm in "
            "every direction are needed to determine a rigid motion): header geometry used, motion not checked")


@dataclass(frozen=True)
class RigidResult:
    """A rigid B1 -> QALAS registration.

    matrix : 4x4 RAS (mm) map from QALAS world points to B1 world points (ITK's
        fixed -> moving convention)
    transform : the same as a SimpleITK ``Euler3DTransform`` (LPS), for writing
    translation_mm : displacement of the head centre (norm, mm)
    rotation_deg : rotation angle (degrees)
    metric : final Mattes mutual information (lower is better)
    seconds : wall time (not in :meth:`summary`: the summary is a cached fit input)
    """

    matrix: np.ndarray
    transform: sitk.Transform
    translation_mm: float
    rotation_deg: float
    metric: float
    seconds: float

    def summary(self) -> dict:
        """JSON-friendly record for the sidecars (mm, degrees, seconds)."""
        return {"Method": "rigid (Euler3D), Mattes mutual information, SimpleITK",
                "MotionMM": round(self.translation_mm, 3), "RotationDegrees": round(self.rotation_deg, 3),
                "MatrixQALASToB1RAS": np.round(self.matrix, 6).tolist(),
                "Metric": round(self.metric, 4), "Seed": SEED}


def to_sitk(img: nib.spatialimages.SpatialImage) -> sitk.Image:
    """A 3D nibabel image as a float32 SimpleITK image with the same world geometry."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise QalasInputError(f"registration needs a 3D image, got shape {data.shape}")
    direction = img.affine[:3, :3] / np.linalg.norm(img.affine[:3, :3], axis=0)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise QalasInputError("the B1 or QALAS image has a sheared affine: rigid registration "
                              "cannot use it (use --b1-registration header)")
    return array_to_sitk(data, img.affine)


def motion_of(matrix: np.ndarray, centre_ras: np.ndarray) -> tuple[float, float]:
    """(displacement of ``centre_ras`` in mm, rotation angle in degrees) of a 4x4 rigid map."""
    moved = matrix[:3, :3] @ centre_ras + matrix[:3, 3]
    cos_angle = np.clip((np.trace(matrix[:3, :3]) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.linalg.norm(moved - centre_ras)), float(math.degrees(math.acos(cos_angle)))


def register_rigid(moving: nib.spatialimages.SpatialImage, fixed: nib.spatialimages.SpatialImage,
                   fixed_mask: np.ndarray | None = None, *, iterations: int = 100) -> RigidResult:
    """Register the B1 magnitude ``moving`` to the QALAS contrast ``fixed`` (rigid, MI).

    ``fixed_mask`` (bool, the fixed grid; e.g. the head mask) limits the metric to the
    head. Optimised from the header alignment (identity, rotation centre at the fixed
    image's mask centre), then from the rotation-searched starts that may do better
    (:func:`_best_of_searched_starts`; with small motions only the header start is
    optimised, and a B1 image too thin for the search keeps the header start's result).
    Returns a :class:`RigidResult`; a failed optimisation raises :class:`QalasInputError`
    (use ``--b1-registration header``).
    """
    start = time.perf_counter()
    fixed_s, moving_s = to_sitk(fixed), to_sitk(moving)
    region = fixed_mask.astype(bool) if fixed_mask is not None else np.ones(fixed.shape[:3], bool)
    if not region.any():
        raise QalasInputError("rigid B1 registration needs a non-empty head mask")
    centre_ras = nib.affines.apply_affine(fixed.affine, np.argwhere(region).mean(0))
    header = sitk.Euler3DTransform()
    header.SetCenter([float(c) for c in (_LPS[:3, :3] @ centre_ras)])
    mask_img = None
    if fixed_mask is not None:
        mask_img = sitk.Cast(to_sitk(nib.Nifti1Image(region.astype(np.float32), fixed.affine)) > 0.5, sitk.sitkUInt8)
    final, metric = _optimise(fixed_s, moving_s, header, mask_img, iterations)
    try:
        final, metric = _best_of_searched_starts(fixed_s, moving_s, header, mask_img, final, metric,
                                                 centre_ras, iterations)
    except (RuntimeError, QalasInputError):
        pass  # a B1 image too thin for the 8 mm search grid (a few slices): the header start stands
    euler = sitk.Euler3DTransform(single_transform(final))
    # Rounded (1e-7 rad, 1e-6 mm): the optimiser's last bits vary between runs, and the B1
    # written for the workflow must be byte-identical for its cached fits to stay valid.
    euler.SetParameters([round(p, 7) for p in euler.GetParameters()[:3]]
                        + [round(p, 6) for p in euler.GetParameters()[3:]])
    matrix = _LPS @ linear_matrix(euler) @ _LPS  # the LPS point mapping in RAS
    shift, angle = motion_of(matrix, centre_ras)
    return RigidResult(matrix, euler, shift, angle, float(metric), time.perf_counter() - start)


def _best_of_searched_starts(fixed: sitk.Image, moving: sitk.Image, header: sitk.Euler3DTransform,
                             mask: sitk.Image | None, final: sitk.Transform, metric: float,
                             centre_ras: np.ndarray, iterations: int) -> tuple[sitk.Transform, float]:
    """``(transform, metric)``: the header start's optimum ``final``, or the optimum from a
    rotation-searched start (:func:`_searched_starts`) that is not in its basin
    (:func:`_same_pose`), fits the coarse images better, and ends with a better mutual
    information over every voxel of ``mask``."""
    fixed_c, moving_c = coarse_image(fixed), coarse_image(moving)
    mask_c = mask_on(mask, fixed_c)
    reached, full = mutual_information(fixed_c, moving_c, final, mask_c), None
    for initial in _searched_starts(fixed, moving, header, mask):
        if (_same_pose(initial, final, centre_ras)
                or mutual_information(fixed_c, moving_c, initial, mask_c) >= reached):
            continue  # in the found optimum's basin, or that optimum already fits better
        candidate, candidate_metric = _optimise(fixed, moving, initial, mask, iterations)
        full = mutual_information(fixed, moving, final, mask) if full is None else full
        value = mutual_information(fixed, moving, candidate, mask)  # every voxel: comparable
        if value < full:
            final, metric, full = candidate, candidate_metric, value
            reached = mutual_information(fixed_c, moving_c, final, mask_c)
    return final, metric


#: A start within this motion (mm at the head centre, degrees) of an optimum already found
#: lies in its basin and is not optimised again (on the unmoved demo the centres-of-mass start
#: was 0.4 mm from the header start and only re-found its optimum).
SAME_POSE_MM, SAME_POSE_DEG = 2.0, 2.0


def _same_pose(a: sitk.Transform, b: sitk.Transform, centre_ras: np.ndarray) -> bool:
    """Whether two rigid poses differ by less than :data:`SAME_POSE_MM` / :data:`SAME_POSE_DEG`."""
    first, second = (linear_matrix(single_transform(t)) for t in (a, b))  # LPS point mappings
    shift, angle = motion_of(np.linalg.inv(first) @ second, _LPS[:3, :3] @ centre_ras)
    return shift < SAME_POSE_MM and angle < SAME_POSE_DEG


def _searched_starts(fixed: sitk.Image, moving: sitk.Image, header: sitk.Euler3DTransform,
                     mask: sitk.Image | None) -> list[sitk.Euler3DTransform]:
    """Other starting poses than the header alignment: the best rotation of the coarse grid
    search (:func:`~..spaces.registration.search_rotations`, +-30 degrees) from the header
    alignment and from the images' centres of mass. From the header alone, 5 of 10 random
    motions of the digital head (15-30 degrees, 10-28 mm) failed: 3 AFI maps ended 23-29 mm
    off, 2 TFL maps so far off that the B1 support gate refused them (docs/b1.md)."""
    moments = sitk.Euler3DTransform(sitk.CenteredTransformInitializer(
        sitk.Mask(fixed, mask) if mask is not None else fixed, moving, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS))
    return [search_rotations(fixed, moving, header, mask), search_rotations(fixed, moving, moments, mask)]


def _optimise(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Euler3DTransform, mask: sitk.Image | None,
              iterations: int) -> tuple[sitk.Transform, float]:
    """Multi-resolution gradient descent of Mattes MI from ``initial`` (regular, seeded
    sampling; one thread: the same images give the same transform): the transform and its
    final (sampled) metric."""
    reg = sitk.ImageRegistrationMethod()
    reg.SetNumberOfThreads(1)  # deterministic: the metric's sums do not depend on threading
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    reg.SetMetricSamplingPercentage(SAMPLING_FRACTION, SEED)
    if mask is not None:
        reg.SetMetricFixedMask(mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3,
                                                 numberOfIterations=iterations,
                                                 gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([4.0, 2.0, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    try:
        return reg.Execute(fixed, moving), float(reg.GetMetricValue())
    except RuntimeError as exc:
        raise QalasInputError(f"rigid B1 registration failed ({exc}); use --b1-registration header") from None


def registered_affine(b1_affine: np.ndarray, result: RigidResult) -> np.ndarray:
    """Affine placing the B1 image in QALAS world coordinates: ``inv(matrix) @ affine``."""
    return np.linalg.inv(result.matrix) @ np.asarray(b1_affine, dtype=float)
