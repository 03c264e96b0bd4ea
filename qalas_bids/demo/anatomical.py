"""Opt-in demo additions: a T1w of the digital head in another pose and resolution
(MPRAGE-like contrast, rigidly moved), with its true motion in the ground truth."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..qalas.phantom.digital_brain import DigitalBrain

#: Demo T1w: voxel size (mm), MPRAGE-like TI/TR (s), true motion (degrees about x/y/z, mm).
T1W_VOXEL_MM = 1.5
T1W_TI_S, T1W_TR_S, T1W_TE_S = 1.1, 2.5, 0.003
MOTION_DEGREES = (-10.0, 4.0, 12.0)
MOTION_MM = (12.0, -8.0, 6.0)
T1W_GAIN = 1000.0


def rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """4x4 rotation about x, then y, then z (RAS, degrees)."""
    out = np.eye(4)
    for axis, deg in enumerate(degrees):
        a = np.deg2rad(deg)
        c, s = np.cos(a), np.sin(a)
        i, j = [(1, 2), (0, 2), (0, 1)][axis]
        m = np.eye(4)
        m[i, i] = m[j, j] = c
        m[i, j], m[j, i] = -s, s
        out = m @ out
    return out


def motion_matrix(degrees=MOTION_DEGREES, shift_mm=MOTION_MM, centre: np.ndarray | None = None) -> np.ndarray:
    """QALAS world -> T1w world (4x4 RAS): rotation about ``centre`` then translation."""
    centre = np.zeros(3) if centre is None else np.asarray(centre, float)
    to_centre, back = np.eye(4), np.eye(4)
    to_centre[:3, 3], back[:3, 3] = -centre, centre
    move = np.eye(4)
    move[:3, 3] = shift_mm
    return move @ back @ rotation(degrees) @ to_centre


def mprage_like(brain: DigitalBrain) -> np.ndarray:
    """Noiseless MPRAGE-like magnitude of the phantom (bright WM and fat, dark CSF)."""
    t1 = np.where(brain.t1 > 0, brain.t1, np.inf)
    t2 = np.where(brain.t2 > 0, brain.t2, np.inf)
    signal = brain.pd * np.clip(1 - 2 * np.exp(-T1W_TI_S / t1) + np.exp(-T1W_TR_S / t1), 0, None)
    return signal * np.exp(-T1W_TE_S / t2)


def write_moved_t1w(anat_dir: Path, prefix: str, brain: DigitalBrain, qalas_affine: np.ndarray,
                    truth_dir: Path, seed: int, voxel_mm: float = T1W_VOXEL_MM,
                    degrees: tuple[float, float, float] = MOTION_DEGREES,
                    shift_mm: tuple[float, float, float] = MOTION_MM) -> Path:
    """Write ``<prefix>_T1w.nii.gz`` (+ sidecar) moved by :func:`motion_matrix` (``degrees``
    about x/y/z, then ``shift_mm``) about the head centre, on a ``voxel_mm`` grid, and
    ``<prefix>_desc-T1wmotion_simulation.json`` (the true QALAS -> T1w world mapping) under
    ``truth_dir``."""
    import nibabel as nib

    shape_q = np.array(brain.t1.shape)
    centre = (qalas_affine @ np.append((shape_q - 1) / 2, 1))[:3]
    motion = motion_matrix(degrees, shift_mm, centre=centre)
    extent = shape_q * np.linalg.norm(qalas_affine[:3, :3], axis=0)
    shape = tuple(int(np.ceil(e / voxel_mm)) + 4 for e in extent)
    affine = np.diag([voxel_mm] * 3 + [1.0])
    affine[:3, 3] = (motion @ np.append(centre, 1))[:3] - voxel_mm * (np.array(shape) - 1) / 2
    to_qalas = np.linalg.inv(qalas_affine) @ np.linalg.inv(motion) @ affine
    image = ndimage.affine_transform(mprage_like(brain), to_qalas[:3, :3], to_qalas[:3, 3],
                                     output_shape=shape, order=1, mode="constant")
    rng = np.random.default_rng([seed, 7])
    sigma = 0.01 * float(np.percentile(image[image > 0], 90)) if (image > 0).any() else 0.0
    image = np.hypot(image + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape)) * T1W_GAIN
    anat_dir.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.round(image).astype(np.int16), affine)
    img.set_qform(affine, 1)
    img.set_sform(affine, 1)
    path = anat_dir / f"{prefix}_T1w.nii.gz"
    nib.save(img, path)
    (anat_dir / f"{prefix}_T1w.json").write_text(json.dumps({
        "MRAcquisitionType": "3D", "PulseSequenceType": "MPRAGE-like (simulated)",
        "InversionTime": T1W_TI_S, "RepetitionTime": T1W_TR_S, "EchoTime": T1W_TE_S,
        "Simulated": True}, indent=2) + "\n")
    truth_dir.mkdir(parents=True, exist_ok=True)
    (truth_dir / f"{prefix}_desc-T1wmotion_simulation.json").write_text(json.dumps({
        "Description": "true mapping of QALAS world coordinates (RAS mm) to T1w world coordinates",
        "QalasToT1wWorld": motion.tolist(), "RotationDegreesXYZ": list(degrees),
        "TranslationMM": list(shift_mm), "RotationCentreMM": centre.tolist(),
        "T1wVoxelMM": voxel_mm}, indent=2) + "\n")
    return path


def moments_affine(moving_mask: np.ndarray, moving_affine: np.ndarray, fixed_mask: np.ndarray,
                   fixed_affine: np.ndarray) -> np.ndarray:
    """4x4 RAS map of fixed points to moving points matching the masks' centroids and
    per-axis spreads (a known, exactly defined stand-in for a T1w -> template registration)."""
    def stats(mask, affine):
        pts = (affine @ np.vstack([np.argwhere(mask).T, np.ones(int(mask.sum()))]))[:3].T
        return pts.mean(0), pts.std(0)

    c_m, s_m = stats(moving_mask, moving_affine)
    c_f, s_f = stats(fixed_mask, fixed_affine)
    out = np.eye(4)
    out[:3, :3] = np.diag(s_m / s_f)
    out[:3, 3] = c_m - out[:3, :3] @ c_f
    return out


def write_smriprep_like(root: Path, sub: str, ses: str | None, t1w_path: Path, brain: DigitalBrain,
                        qalas_affine: np.ndarray, truth_dir: Path) -> Path:
    """An sMRIPrep-like derivatives folder: ``desc-preproc_T1w`` (the T1w), ``desc-brain_mask``
    and ``from-T1w_to-MNI152NLin2009cAsym_mode-image_xfm.h5`` = a known affine
    (:func:`moments_affine` of the true brain onto the template brain mask, through the true
    motion). The template -> QALAS mapping it implies is written under ``truth_dir``."""
    import shutil

    import nibabel as nib

    from ..bids.templates import SHIPPED_DIR, SHIPPED_TEMPLATE
    from ..qalas.spaces import registration as reg

    motion = np.array(json.loads((truth_dir / f"{t1w_path.name[:-len('_T1w.nii.gz')]}"
                                  "_desc-T1wmotion_simulation.json").read_text())["QalasToT1wWorld"])
    tpl_mask = nib.load(SHIPPED_DIR / f"tpl-{SHIPPED_TEMPLATE}" /
                        f"tpl-{SHIPPED_TEMPLATE}_res-02_desc-brain_mask.nii.gz")
    to_qalas = moments_affine(brain.brain_mask, qalas_affine, np.asarray(tpl_mask.dataobj) > 0, tpl_mask.affine)
    to_t1w = motion @ to_qalas  # template points -> T1w points
    anat = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({
        "Name": "sMRIPrep-like derivatives of the qalas-bids demo (simulated)", "BIDSVersion": "1.10.0",
        "DatasetType": "derivative", "GeneratedBy": [{"Name": "qalas-bids-demo-data"}]}, indent=2) + "\n")
    stem = t1w_path.name[:-len("_T1w.nii.gz")]
    shutil.copyfile(t1w_path, anat / f"{stem}_desc-preproc_T1w.nii.gz")
    t1w = nib.load(t1w_path)
    to_qalas_vox = np.linalg.inv(qalas_affine) @ np.linalg.inv(motion) @ t1w.affine
    mask = ndimage.affine_transform(brain.brain_mask.astype(np.float32), to_qalas_vox[:3, :3],
                                    to_qalas_vox[:3, 3], output_shape=t1w.shape, order=0)
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), t1w.affine), anat / f"{stem}_desc-brain_mask.nii.gz")
    composite = reg.chain(reg.rigid_from_ras_matrix(to_t1w))
    reg.write_transform(composite, str(anat / f"{stem}_from-T1w_to-{SHIPPED_TEMPLATE}_mode-image_xfm.h5"))
    (truth_dir / f"{stem}_desc-templatexfm_simulation.json").write_text(json.dumps({
        "Description": f"true mapping of {SHIPPED_TEMPLATE} points (RAS mm) to QALAS world points "
                       "implied by the sMRIPrep-like transform", "TemplateToQalasWorld": to_qalas.tolist()},
        indent=2) + "\n")
    return root
