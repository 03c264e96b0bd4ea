"""Registration with SimpleITK: QALAS -> T1w (rigid, Mattes MI) and -> template (affine + B-spline,
then diffeomorphic demons).

Arrays come with their nibabel (RAS, mm) affines; SimpleITK works in LPS, so affines are
flipped on the way in. A transform returned here follows ITK/ANTs' convention: it maps a
point of the *fixed* (target) image to the *moving* (source) image, which is what resampling
the moving image onto the fixed grid needs; saved as-is, it is the sMRIPrep-style
``from-<moving>_to-<fixed>_mode-image_xfm`` file. Every run is deterministic for a given
``seed`` (metric sampling seeded, fixed thread count).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

LOGGER = logging.getLogger("qalas_bids")

#: RAS <-> LPS.
_FLIP = np.diag([-1.0, -1.0, 1.0])


def _geometry(affine: np.ndarray) -> tuple[tuple, tuple, tuple]:
    """(spacing, direction, origin) of a RAS affine in SimpleITK's LPS convention."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return (tuple(float(s) for s in spacing),
            tuple((_FLIP @ (affine[:3, :3] / spacing)).ravel().tolist()),
            tuple((_FLIP @ affine[:3, 3]).tolist()))


def to_sitk(data: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A 3D array (nibabel axis order) with its RAS affine as a float32 SimpleITK image."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, np.float32).transpose(2, 1, 0)))
    spacing, direction, origin = _geometry(affine)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    img.SetOrigin(origin)
    return img


def from_sitk(img: sitk.Image) -> np.ndarray:
    """The voxel array of ``img`` in nibabel axis order."""
    return sitk.GetArrayFromImage(img).transpose(2, 1, 0)


def set_threads(n: int) -> None:
    """Threads of every SimpleITK filter (a fixed count keeps MI sums reproducible)."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(n)))


@dataclass(frozen=True)
class RegistrationResult:
    """A transform (fixed -> moving points) with the final metric value; ``note`` says what a
    last step did (e.g. a refinement kept or rejected), empty when there is nothing to say."""

    transform: sitk.Transform
    metric: float
    iterations: int
    note: str = ""


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


def mask_on(mask: sitk.Image | None, grid: sitk.Image) -> sitk.Image | None:
    """``mask > 0`` (uint8) on ``grid``'s voxels by nearest neighbour (None stays None)."""
    if mask is None:
        return None
    return sitk.Resample(sitk.Cast(mask > 0, sitk.sitkUInt8), grid, sitk.Transform(),
                         sitk.sitkNearestNeighbor, 0)


#: Start of every rigid registration: rotations searched on a grid (degrees about x/y/z) at a
#: coarse resolution (mm, Gaussian smoothing mm), all voxels sampled.
ROTATION_SEARCH_DEGREES, ROTATION_SEARCH_STEP_DEGREES = 30.0, 15.0
ROTATION_SEARCH_MM, ROTATION_SEARCH_SMOOTHING_MM = 8.0, 4.0


def coarse_image(image: sitk.Image) -> sitk.Image:
    """``image`` on the grid of the rotation search: recursive Gaussian
    (``ROTATION_SEARCH_SMOOTHING_MM``), then block averages to about ``ROTATION_SEARCH_MM``."""
    factor = max(1, int(round(ROTATION_SEARCH_MM / min(image.GetSpacing()))))
    smooth = sitk.SmoothingRecursiveGaussian(image, ROTATION_SEARCH_SMOOTHING_MM)
    return sitk.BinShrink(smooth, [factor] * 3)


def search_rotations(fixed: sitk.Image, moving: sitk.Image, start: sitk.Euler3DTransform,
                     fixed_mask: sitk.Image | None) -> sitk.Euler3DTransform:
    """``start`` with the best rotation of a grid of ``+-ROTATION_SEARCH_DEGREES`` in
    ``ROTATION_SEARCH_STEP_DEGREES`` steps about each axis (5^3 = 125 Mattes MI evaluations
    at about 8 mm; 0.2 s at 2 mm, 0.6 s at 1 mm), so that the gradient descent starts inside
    the capture range of the right pose: from the centres of mass alone it stopped 4-24 mm
    off on 4 of the 5 random poses (up to 30 degrees, 20 mm) of the digital head that
    ``tests/test_output_spaces.py`` draws (docs/spaces.md)."""
    reg = _method(0, 1.0)
    reg.SetMetricSamplingStrategy(reg.NONE)  # every voxel: the search itself is deterministic
    fixed_coarse = coarse_image(fixed)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(mask_on(fixed_mask, fixed_coarse))
    steps = int(round(ROTATION_SEARCH_DEGREES / ROTATION_SEARCH_STEP_DEGREES))
    reg.SetOptimizerAsExhaustive([steps, steps, steps, 0, 0, 0],
                                 stepLength=float(np.deg2rad(ROTATION_SEARCH_STEP_DEGREES)))
    reg.SetOptimizerScales([1.0] * 6)
    best = sitk.Euler3DTransform(start)
    reg.SetInitialTransform(best, inPlace=True)  # the exhaustive optimiser leaves the best here
    reg.Execute(fixed_coarse, coarse_image(moving))
    return best


def register_rigid(fixed: sitk.Image, moving: sitk.Image, *, seed: int = 0,
                   fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None,
                   sampling: float = 0.1, iterations: int = 300,
                   base_shrink: int | None = None, finest_mm: float = 3.0) -> RegistrationResult:
    """Rigid (Euler 3D) registration by Mattes mutual information, multi-resolution.

    Starts from the images' centres of mass (moments) and the best rotation of a coarse grid
    search (:func:`search_rotations`, up to +-30 degrees about each axis), then shrinks
    ``4, 2, 1`` with smoothing ``2, 1, 0`` x the finest voxel (HBCD's QALAS/B1
    coregistration settings, seeded). Without ``base_shrink``, the fixed image is first
    block-averaged to about ``finest_mm`` and the moving one to about ``finest_mm / 1.5``
    (a 1 mm T1w and 1 mm QALAS: 6.2 -> 0.9 s on 2 threads, RMS error 0.02 -> 0.05 mm);
    ``base_shrink`` instead samples the full-resolution fixed image at that shrink
    (docs/spaces.md: 24 random poses up to 30 degrees and 20 mm, all <= 0.1 mm RMS).
    """
    if base_shrink is None:
        def block_average(image: sitk.Image, mm: float) -> sitk.Image:
            factor = max(1, int(round(mm / min(image.GetSpacing()))))
            return sitk.BinShrink(image, [factor] * 3) if factor > 1 else image

        fixed = block_average(fixed, finest_mm)
        moving = block_average(moving, finest_mm / 1.5)
        fixed_mask, moving_mask = mask_on(fixed_mask, fixed), mask_on(moving_mask, moving)
        base_shrink = 1
    moving_input = _masked(moving, moving_mask)
    initial = sitk.CenteredTransformInitializer(
        _masked(fixed, fixed_mask), moving_input, sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS)
    initial = search_rotations(fixed, moving_input, sitk.Euler3DTransform(initial), fixed_mask)
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


#: Dense refinement after the B-spline (template registration): diffeomorphic demons on the
#: histogram-matched, B-spline-aligned contrast, iterations per level (shrink 4, 2, 1 of a
#: grid of at least DEMONS_FINEST_MM), Gaussian smoothing of the field (mm).
DEMONS_ITERATIONS, DEMONS_SMOOTHING_MM, DEMONS_FINEST_MM = (30, 20, 10), 1.5, 2.0


def mutual_information(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                       fixed_mask: sitk.Image | None = None) -> float:
    """Mattes MI (SimpleITK's sign: lower is better) of ``moving`` through ``transform`` over
    every voxel of ``fixed`` (inside ``fixed_mask``). ``moving`` is resampled onto the fixed
    grid first (ITK's metric refuses a displacement field on another grid)."""
    resampled = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    reg = _method(0, 1.0)
    reg.SetMetricSamplingStrategy(reg.NONE)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(sitk.Cast(fixed_mask > 0, sitk.sitkUInt8))
    reg.SetInitialTransform(sitk.Euler3DTransform(), inPlace=False)
    return float(reg.MetricEvaluate(sitk.Cast(fixed, sitk.sitkFloat32), resampled))


def refine_demons(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                  fixed_mask: sitk.Image | None = None) -> RegistrationResult:
    """``transform`` (fixed -> moving points) refined by a dense diffeomorphic demons field,
    kept only where it raises the mutual information.

    ``moving`` is resampled through ``transform`` onto the fixed grid (coarsened to
    ``DEMONS_FINEST_MM``), its histogram matched to the fixed image (both brain-extracted
    T1w-like contrasts), and diffeomorphic demons (Vercauteren 2009) estimates a smooth
    displacement ``u`` with ``warped(p + u(p)) ~ fixed(p)``; the refined transform maps
    ``p`` to ``transform(p + u(p))``. Demons matches intensities, so a contrast that is not a
    monotonic function of the fixed one misleads it (an inverted contrast: WM Dice 0.84 ->
    0.42): the refinement is kept only if Mattes MI over every voxel improves, else
    ``transform`` is returned with a note. Deterministic (no sampling)."""
    step = max(DEMONS_FINEST_MM, min(fixed.GetSpacing()))
    size = [max(1, int(round(n * s / step))) for n, s in zip(fixed.GetSize(), fixed.GetSpacing())]
    grid = sitk.Resample(fixed, size, sitk.Transform(), sitk.sitkLinear, fixed.GetOrigin(), (step,) * 3,
                         fixed.GetDirection(), 0.0, sitk.sitkFloat32)
    warped = sitk.Resample(moving, grid, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    warped = sitk.HistogramMatching(warped, grid, numberOfHistogramLevels=128, numberOfMatchPoints=15,
                                    thresholdAtMeanIntensity=True)
    field = sitk.Image(grid.GetSize(), sitk.sitkVectorFloat64)
    field.CopyInformation(grid)
    for shrink, iterations in zip((4, 2, 1), DEMONS_ITERATIONS):
        level_fixed = sitk.Shrink(grid, [shrink] * 3) if shrink > 1 else grid
        level_moving = sitk.Shrink(warped, [shrink] * 3) if shrink > 1 else warped
        start = sitk.Resample(field, level_fixed, sitk.Transform(), sitk.sitkLinear, 0.0,
                              sitk.sitkVectorFloat64)
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(iterations)
        demons.SetSmoothDisplacementField(True)
        demons.SetStandardDeviations(DEMONS_SMOOTHING_MM)
        field = demons.Execute(level_fixed, level_moving, start)
    field = sitk.Resample(field, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    refined = chain(sitk.DisplacementFieldTransform(field), transform)
    before = mutual_information(fixed, moving, transform, fixed_mask)
    after = mutual_information(fixed, moving, refined, fixed_mask)
    if after < before:
        return RegistrationResult(refined, after, sum(DEMONS_ITERATIONS),
                                  f"demons kept: mutual information {before:.3f} -> {after:.3f}")
    note = f"demons rejected (mutual information {before:.3f} -> {after:.3f}): the B-spline result is kept"
    LOGGER.warning("template registration: %s. The contrasts may not match (check the registration overlay "
                   "in the report)", note)
    return RegistrationResult(transform, before, 0, note)


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


def resample_sitk(moving: sitk.Image, transform: sitk.Transform, ref_shape: tuple[int, ...],
                  ref_affine: np.ndarray, *, nearest: bool = False) -> sitk.Image:
    """``moving`` (a :func:`to_sitk` image) resampled onto the reference grid through
    ``transform`` (reference -> moving points), as a float32 SimpleITK image: linear, or
    nearest neighbour for masks and labels; 0 outside. No reference image is built (a 1 mm
    template grid is 8.5 M voxels)."""
    spacing, direction, origin = _geometry(ref_affine)
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    size = [int(n) for n in ref_shape[:3]]
    return sitk.Resample(moving, size, transform, interp, origin, spacing, direction, 0.0, sitk.sitkFloat32)


def array_view(img: sitk.Image) -> np.ndarray:
    """The voxels of ``img`` in nibabel axis order *without a copy* (a Fortran-ordered view,
    NIfTI's own layout): valid only while ``img`` is referenced."""
    return sitk.GetArrayViewFromImage(img).transpose(2, 1, 0)


def resample_image(moving: sitk.Image, transform: sitk.Transform, ref_shape: tuple[int, ...],
                   ref_affine: np.ndarray, *, nearest: bool = False) -> np.ndarray:
    """:func:`resample_sitk` as a float32 array in nibabel axis order (a copy)."""
    return from_sitk(resample_sitk(moving, transform, ref_shape, ref_affine, nearest=nearest))


def resample_array(data: np.ndarray, affine: np.ndarray, transform: sitk.Transform,
                   ref_shape: tuple[int, ...], ref_affine: np.ndarray, *,
                   nearest: bool = False) -> np.ndarray:
    """``data`` (on ``affine``) resampled onto the reference grid through ``transform``
    (reference -> data points): linear, or nearest neighbour for masks and labels; 0 outside."""
    out = resample_image(to_sitk(data, affine), transform, ref_shape, ref_affine, nearest=nearest)
    return out.astype(data.dtype if nearest else np.float32)


def linear_matrix(transform: sitk.Transform) -> np.ndarray | None:
    """The 4x4 LPS point mapping of a linear (matrix + offset) transform, else None."""
    tx = transform.Downcast()
    if not hasattr(tx, "GetMatrix") or not hasattr(tx, "GetCenter"):
        return None
    matrix = np.array(tx.GetMatrix()).reshape(3, 3)
    centre, translation = np.array(tx.GetCenter()), np.array(tx.GetTranslation())
    out = np.eye(4)
    out[:3, :3] = matrix
    out[:3, 3] = translation + centre - matrix @ centre
    return out


def resampling_transform(transform: sitk.Transform, ref_shape: tuple[int, ...],
                         ref_affine: np.ndarray) -> sitk.Transform:
    """The cheapest equivalent of ``transform`` for resampling many images onto one grid: a
    chain of linear transforms (rigid step + sMRIPrep affine) composed into one affine; a
    chain holding a B-spline or displacement field sampled once as a field
    (:func:`dense_transform`); anything else as is."""
    if transform.GetName() != "CompositeTransform":
        return transform
    composite = sitk.CompositeTransform(transform)
    parts = [composite.GetNthTransform(i) for i in range(composite.GetNumberOfTransforms())]
    matrices = [linear_matrix(part) for part in parts]
    if any(m is None for m in matrices):
        return dense_transform(transform, ref_shape, ref_affine)
    total = functools.reduce(np.matmul, matrices)  # index 0 is applied last
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(total[:3, :3].ravel().tolist()))
    affine.SetTranslation(tuple(total[:3, 3].tolist()))
    return affine


def dense_transform(transform: sitk.Transform, ref_shape: tuple[int, ...],
                    ref_affine: np.ndarray) -> sitk.Transform:
    """``transform`` sampled once as a displacement field on the reference grid: resampling
    many images through a B-spline composite is then a field lookup per voxel (same result
    up to the field's linear interpolation between voxel centres, i.e. exact at them)."""
    spacing, direction, origin = _geometry(ref_affine)
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64,
                                              [int(n) for n in ref_shape[:3]], origin, spacing, direction)
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
