"""QALAS maps into the T1w and template spaces: the registration contrast, the two
registrations and the chains of transforms (arrays and SimpleITK transforms; no files).

- QALAS -> T1w: rigid, Mattes MI, from the MPRAGE-like contrast of the fitted maps (head
  included, like the T1w) to the session's T1w.
- QALAS -> template: either sMRIPrep's T1w -> template transform chained after the rigid
  step, or affine + B-spline (Mattes MI) from the brain-extracted contrast to the template's
  brain T1w (:func:`register_affine_bspline`), refined by diffeomorphic demons
  (:func:`refine_demons`).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from .registration import (RegistrationResult, chain, refine_demons, register_affine_bspline,
                           register_rigid, single_transform, to_sitk)

#: Inversion and repetition times (s) of the MPRAGE-like registration contrast.
CONTRAST_TI_S, CONTRAST_TR_S = 0.9, 2.3


def registration_contrast(t1_s: np.ndarray, pd: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MPRAGE-like image of the fitted maps, ``PD |1 - 2 e^{-TI/T1} + e^{-TR/T1}|`` in ``mask``
    (bright WM, darker GM, dark CSF, as a T1w), float32, 0 outside."""
    t1 = np.where((t1_s > 0) & mask, t1_s, np.inf)
    signal = pd * np.abs(1 - 2 * np.exp(-CONTRAST_TI_S / t1) + np.exp(-CONTRAST_TR_S / t1))
    return np.where(mask & np.isfinite(signal), signal, 0).astype(np.float32)


def qalas_to_t1w(contrast: np.ndarray, qalas_affine: np.ndarray, t1w: np.ndarray,
                 t1w_affine: np.ndarray, *, seed: int = 0,
                 t1w_mask: np.ndarray | None = None) -> RegistrationResult:
    """Rigid transform mapping T1w points to QALAS points (sMRIPrep's
    ``from-QALAS_to-T1w_mode-image`` convention)."""
    fixed = to_sitk(t1w, t1w_affine)
    mask = None if t1w_mask is None else to_sitk(t1w_mask.astype(np.float32), t1w_affine)
    result = register_rigid(fixed, to_sitk(contrast, qalas_affine), seed=seed, fixed_mask=mask)
    return RegistrationResult(single_transform(result.transform), result.metric, result.iterations)


def qalas_to_template(brain_contrast: np.ndarray, qalas_affine: np.ndarray, template: np.ndarray,
                      template_mask: np.ndarray, template_affine: np.ndarray, *,
                      seed: int = 0) -> RegistrationResult:
    """Affine + B-spline + demons transform mapping template points to QALAS points; both
    images brain-extracted (the template by its brain mask). The metric is the final Mattes
    MI over every template brain voxel; ``note`` says whether the demons step was kept."""
    fixed = to_sitk(np.where(template_mask > 0, template, 0).astype(np.float32), template_affine)
    mask = to_sitk((template_mask > 0).astype(np.float32), template_affine)
    moving = to_sitk(brain_contrast, qalas_affine)
    result = register_affine_bspline(fixed, moving, seed=seed, fixed_mask=mask)
    refined = refine_demons(fixed, moving, result.transform, fixed_mask=mask)
    return RegistrationResult(refined.transform, refined.metric, result.iterations + refined.iterations,
                              refined.note)


def template_via_t1w(t1w_to_template: sitk.Transform, qalas_to_t1w_rigid: sitk.Transform) -> sitk.Transform:
    """sMRIPrep's T1w -> template transform (template points -> T1w points) followed by the
    rigid step (T1w points -> QALAS points): template points -> QALAS points."""
    return chain(t1w_to_template, qalas_to_t1w_rigid)
