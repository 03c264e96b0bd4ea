"""Registration with SimpleITK: QALAS -> T1w (rigid, Mattes MI) and -> template (affine + B-spline).

Arrays come with their nibabel (RAS, mm) affines; SimpleITK works in LPS, so affines are
flipped on the way in. A transform returned here follows ITK/ANTs' convention: it maps a
point of the *fixed* (target) image to the *moving* (source) image, which is what resampling
the moving image onto the fixed grid needs; saved as-is, it is the sMRIPrep-style
``from-<moving>_to-<fixed>_mode-image_xfm`` file. Every run is deterministic for a given
``seed`` (metric sampling seeded, fixed thread count).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

#: RAS <-> LPS.
_FLIP = np.diag([-1.0, -1.0, 1.0])


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A 3D array (nibabel axis order) with its RAS affine as a float32 SimpleITK image."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).transpose(2, 1, 0)))
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetDirection(tuple((_FLIP @ (affine[:3, :3] / spacing)).ravel().tolist()))
    img.SetOrigin(tuple((_FLIP @ affine[:3, 3]).tolist()))
    return img


def from_sitk(img: sitk.Image) -> np.ndarray:
    """The voxel array of ``img`` in nibabel axis order."""
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def set_threads(n: int) -> None:
    """Threads of every SimpleITK filter (a fixed count keeps MI sums reproducible)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(n)))


@dataclass(frozen=True)
class RegistrationResult:
    """A transform (fixed -> moving points) with the final metric value."""

    transform: sitk.Transform
    metric: float
    iterations: int


def _method(seed: int, sampling: float, bins: int = 32) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(sampling, seed=int(seed) + 1)  # 0 would mean wall clock
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def _run(reg: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image) -> RegistrationResult:
    transform = reg.Execute(fixed, moving)
    return RegistrationResult(transform, float(reg.GetMetricValue()), int(reg.GetOptimizerIteration()))


def _masked(image: sitk.Image, mask: sitk.Image | None) -> sitk.Image:
    return image if mask is None else sitk.Mask(image, sitk.Cast(mask > 0, sitk.sitkUInt8))


def register_rigid(fixed: sitk.Image, moving: sitk.Image, *, seed: int = 0,
                   fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None,
                   sampling: float = 0.1, iterations: int = 300,
                   base_shrink: int | None = None, finest_mm: float = 3.0) -> RegistrationResult:
    """Rigid (Euler 3D) registration by Mattes mutual information, multi-resolution.

    Starts from the images' centres of mass (moments), then shrinks ``4, 2, 1`` with
    smoothing ``2, 1, 0`` mm (HBCD's QALAS/B1 coregistration settings, seeded); the finest
    level samples the fixed image at about ``finest_mm`` (``base_shrink`` overrides), which
    keeps a 1 mm T1w fast and stays well below a voxel in error (1 mm digital head moved
    16 deg / 16 mm, 2 threads: finest 3 mm 7.4 s, 0.017 mm RMS; finest 2 mm 48.7 s, 0.020 mm;
    docs/spaces.md).
    """
    if base_shrink is None:
        base_shrink = max(1, int(round(finest_mm / min(fixed.GetSpacing()))))
    moving_input = _masked(moving, moving_mask)
    initial = sitk.CenteredTransformInitializer(
        _masked(fixed, fixed_mask), moving_input, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    reg = _method(seed, sampling)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(sitk.Cast(fixed_mask > 0, sitk.sitkUInt8))
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4 * base_shrink, 2 * base_shrink, base_shrink])
    reg.SetSmoothingSigmasPerLevel([2.0 * base_shrink, 1.0 * base_shrink, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(initial, inPlace=False)
    return _run(reg, fixed, moving_input)


def register_affine_bspline(fixed: sitk.Image, moving: sitk.Image, *, seed: int = 0,
                            fixed_mask: sitk.Image | None = None, mesh_mm: float = 40.0,
                            sampling: float = 0.1, affine_iterations: int = 200,
                            bspline_iterations: int = 60, finest_mm: float = 2.0) -> RegistrationResult:
    """Affine then B-spline (free-form) registration of two brain-extracted images by Mattes MI.

    Returns one composite transform (affine applied to the fixed points first, then the
    B-spline displacement). ``mesh_mm`` is the control-point spacing of the B-spline grid;
    the finest level works at about ``finest_mm`` (a 1 mm template is registered at 2 mm,
    which bounds the time; the transform applies at any resolution).
    """
    base = max(1, int(round(finest_mm / min(fixed.GetSpacing()))))
    rigid = register_rigid(fixed, moving, seed=seed, fixed_mask=fixed_mask, sampling=sampling,
                           iterations=affine_iterations, base_shrink=base)
    affine_init = sitk.AffineTransform(3)
    euler = sitk.Euler3DTransform(rigid.transform.GetNthTransform(0)) if isinstance(
        rigid.transform, sitk.CompositeTransform) else sitk.Euler3DTransform(rigid.transform)
    affine_init.SetMatrix(euler.GetMatrix())
    affine_init.SetTranslation(euler.GetTranslation())
    affine_init.SetCenter(euler.GetCenter())
    reg = _method(seed, sampling)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(sitk.Cast(fixed_mask > 0, sitk.sitkUInt8))
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4,
                                                 numberOfIterations=affine_iterations,
                                                 relaxationFactor=0.6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4 * base, 2 * base])
    reg.SetSmoothingSigmasPerLevel([2.0 * base, 1.0 * base])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(affine_init, inPlace=False)
    affine = _run(reg, fixed, moving)
    affine_tx = sitk.AffineTransform(single_transform(affine.transform))

    size_mm = np.array(fixed.GetSize()) * np.array(fixed.GetSpacing())
    mesh = [max(1, int(round(s / mesh_mm))) for s in size_mm]
    bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
    reg = _method(seed, sampling)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(sitk.Cast(fixed_mask > 0, sitk.sitkUInt8))
    reg.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=bspline_iterations,
                             maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=1000,
                             costFunctionConvergenceFactor=1e7)
    reg.SetShrinkFactorsPerLevel([4 * base, 2 * base, base])
    reg.SetSmoothingSigmasPerLevel([2.0 * base, 1.0 * base, 0.0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetMovingInitialTransform(affine_tx)
    reg.SetInitialTransform(bspline, inPlace=True)
    result = _run(reg, fixed, moving)
    composite = sitk.CompositeTransform(3)
    composite.AddTransform(affine_tx)
    composite.AddTransform(single_transform(result.transform))
    return RegistrationResult(composite, result.metric, affine.iterations + result.iterations)


def single_transform(transform: sitk.Transform) -> sitk.Transform:
    """The single transform inside a one-element composite (what ``Execute`` returns)."""
    if isinstance(transform, sitk.CompositeTransform) and transform.GetNumberOfTransforms() == 1:
        return transform.GetNthTransform(0)
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        if composite.GetNumberOfTransforms() == 1:
            return composite.GetNthTransform(0)
    return transform


def chain(*transforms: sitk.Transform) -> sitk.CompositeTransform:
    """One transform applying ``transforms`` to fixed points in the order given
    (e.g. ``chain(template_to_t1w, t1w_to_qalas)`` maps template points to QALAS points)."""
    composite = sitk.CompositeTransform(3)
    for transform in reversed(transforms):  # ITK applies the last added first
        composite.AddTransform(transform)
    composite.FlattenTransform()  # nested composites (sMRIPrep's .h5) cannot be written as is
    return composite


def resample_array(data: np.ndarray, affine: np.ndarray, transform: sitk.Transform,
                   ref_shape: tuple[int, ...], ref_affine: np.ndarray, *,
                   nearest: bool = False) -> np.ndarray:
    """``data`` (on ``affine``) resampled onto the reference grid through ``transform``
    (reference -> data points): linear, or nearest neighbour for masks and labels; 0 outside."""
    reference = to_sitk(np.zeros(ref_shape[:3], np.float32), ref_affine)
    moving = to_sitk(data, affine)
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    out = from_sitk(sitk.Resample(moving, reference, transform, interp, 0.0, sitk.sitkFloat32))
    return out.astype(data.dtype if nearest else np.float32)


def dense_transform(transform: sitk.Transform, ref_shape: tuple[int, ...],
                    ref_affine: np.ndarray) -> sitk.Transform:
    """``transform`` sampled once as a displacement field on the reference grid: resampling
    many images through a B-spline composite is then a field lookup per voxel (same result
    up to the field's linear interpolation between voxel centres, i.e. exact at them)."""
    reference = to_sitk(np.zeros(ref_shape[:3], np.float32), ref_affine)
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, reference.GetSize(),
                                              reference.GetOrigin(), reference.GetSpacing(),
                                              reference.GetDirection())
    return sitk.DisplacementFieldTransform(field)


def transform_points(transform: sitk.Transform, points_ras: np.ndarray) -> np.ndarray:
    """Map (n, 3) RAS points through ``transform`` (fixed -> moving), in RAS mm."""
    lps = points_ras @ _FLIP
    out = np.array([transform.TransformPoint(tuple(p)) for p in lps.tolist()])
    return out @ _FLIP


def rms_error_mm(estimated: sitk.Transform, true_points_map, points_ras: np.ndarray) -> float:
    """RMS distance (mm) between ``estimated`` and a reference mapping of ``points_ras``."""
    diff = transform_points(estimated, points_ras) - true_points_map(points_ras)
    return float(np.sqrt(np.mean(np.sum(diff ** 2, axis=1))))


def rigid_from_ras_matrix(matrix: np.ndarray) -> sitk.AffineTransform:
    """An ITK transform for a 4x4 RAS point mapping ``x -> M x`` (fixed -> moving)."""
    lps = np.eye(4)
    lps[:3, :3] = _FLIP @ matrix[:3, :3] @ _FLIP
    lps[:3, 3] = _FLIP @ matrix[:3, 3]
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(tuple(lps[:3, :3].ravel().tolist()))
    tx.SetTranslation(tuple(lps[:3, 3].tolist()))
    return tx


def write_transform(transform: sitk.Transform, path: str) -> str:
    """Write an ITK transform file (``.txt`` for linear, ``.h5`` for composites)."""
    sitk.WriteTransform(transform, str(path))
    return str(path)


def read_transform(path: str) -> sitk.Transform:
    """Read an ITK transform file (``.txt``/``.mat``/``.h5``, sMRIPrep's composites included)."""
    return sitk.ReadTransform(str(path))
