"""Accuracy of template-space outputs on the digital head: the WM Dice of issue 23.

WM Dice = Dice of ``T1 < 1.0 s`` inside the brain (in the template grid) against the shipped
MNI152NLin2009cAsym WM probability ``> 0.5`` (a stand-in for TemplateFlow's; see
``scripts/make_shipped_template.py``). Two numbers per run: the *true* T1 map resampled
through the run's written QALAS -> template transform (the registration's own accuracy) and
the *fitted* map the run wrote (registration plus the map's noise), and an *oracle*: the
true map plus Gaussian noise of the run's own CRLB SD map on the QALAS grid (an unbiased
estimator at the Cramér-Rao bound), moved the same way: what the map's noise alone costs.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..bids.templates import SHIPPED_DIR, SHIPPED_TEMPLATE
from ..qalas.spaces import registration as reg

#: T1 (s) below which a voxel counts as white matter.
WM_T1_S = 1.0
#: Ground-truth labels of the brain (the demo's tissue dseg: CSF, GM, WM).
BRAIN_LABELS = (1, 2, 3)


def shipped_wm(res: int = 2) -> np.ndarray:
    """The shipped WM probability > 0.5 (bool) on the template's res-``res`` grid."""
    folder = SHIPPED_DIR / f"tpl-{SHIPPED_TEMPLATE}"
    img = nib.load(folder / f"tpl-{SHIPPED_TEMPLATE}_res-0{res}_label-WM_probseg.nii.gz")
    return np.asarray(img.dataobj) > 0.5


def wm_dice(t1_s: np.ndarray, brain: np.ndarray, wm: np.ndarray) -> float:
    """Dice of ``0 < T1 < WM_T1_S`` inside ``brain`` against ``wm`` (same grid)."""
    white = (t1_s > 0) & (t1_s < WM_T1_S) & brain
    return float(2 * (white & wm).sum() / (white.sum() + wm.sum()))


def oracle_map(truth: np.ndarray, crlb: np.ndarray, seed: int = 0) -> np.ndarray:
    """An unbiased estimate at the Cramér-Rao bound: ``truth`` plus Gaussian noise of SD
    ``crlb`` (same grid) where ``truth > 0``, 0 elsewhere; float32."""
    noise = np.random.default_rng(seed).standard_normal(np.shape(truth)).astype(np.float32)
    return np.where(truth > 0, truth + noise * crlb, 0).astype(np.float32)


def template_wm_dice(run_prefix: str | Path, truth_prefix: str | Path, seed: int = 0) -> dict[str, float]:
    """``{"true", "fitted", "oracle"}`` WM Dice in MNI152NLin2009cAsym res-2 of one run
    (``seed``: the oracle's noise).

    ``run_prefix``: the run's output path up to ``run-1_`` (``.../anat/sub-01_ses-01_run-1_``);
    ``truth_prefix``: the same in ``derivatives/groundtruth``."""
    run_prefix, truth_prefix = str(run_prefix), str(truth_prefix)
    space = f"{run_prefix}space-{SHIPPED_TEMPLATE}_res-2_"
    fitted = nib.load(f"{space}T1map.nii.gz")
    transform = reg.read_transform(f"{run_prefix}from-QALAS_to-{SHIPPED_TEMPLATE}_mode-image_xfm.h5")
    truth = nib.load(f"{truth_prefix}T1map.nii.gz")
    labels = np.asarray(nib.load(f"{truth_prefix}desc-tissue_dseg.nii.gz").dataobj)
    truth_t1 = np.asarray(truth.dataobj, np.float32)
    true_t1 = reg.resample_array(truth_t1, truth.affine, transform, fitted.shape, fitted.affine)
    crlb = np.asarray(nib.load(f"{run_prefix}desc-crlb_T1map.nii.gz").dataobj, np.float32)
    oracle_t1 = reg.resample_array(oracle_map(truth_t1, crlb, seed), truth.affine, transform, fitted.shape,
                                   fitted.affine)
    true_brain = reg.resample_array(np.isin(labels, BRAIN_LABELS).astype(np.uint8), truth.affine,
                                    transform, fitted.shape, fitted.affine, nearest=True) > 0
    fitted_brain = np.asarray(nib.load(f"{space}desc-brain_mask.nii.gz").dataobj) > 0
    wm = shipped_wm(2)
    return {"true": wm_dice(true_t1, true_brain, wm),
            "fitted": wm_dice(np.asarray(fitted.dataobj), fitted_brain, wm),
            "oracle": wm_dice(oracle_t1, true_brain, wm)}
