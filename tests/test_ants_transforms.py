"""sMRIPrep/fMRIPrep transforms are ANTs composites (affine + SyN displacement field): a real
one, written by ANTs (antspyx 0.6.3, ``scripts/make_ants_fixture.py``), is read and applied
by qalas-bids exactly as ANTs applies it, alone and chained after the rigid QALAS -> T1w step,
and survives the round trip through the ``.h5`` files qalas-bids writes."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from qalas_bids.qalas.spaces import registration as reg
from qalas_bids.qalas.spaces.to_spaces import template_via_t1w

DATA = Path(__file__).parent / "data"
XFM = DATA / "ants_syn_from-T1w_to-tpl_xfm.h5"


def _resampled_by_us(transform: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    moving = nib.load(DATA / "ants_syn_moving.nii.gz")
    by_ants = nib.load(DATA / "ants_syn_warped-by-ants.nii.gz")
    ours = reg.resample_array(np.asarray(moving.dataobj, np.float32), moving.affine, transform,
                              by_ants.shape, by_ants.affine)
    return ours, np.asarray(by_ants.dataobj, np.float32)


def test_ants_syn_composite_is_applied_as_ants_applies_it():
    transform = reg.read_transform(str(XFM))
    parts = sitk.CompositeTransform(transform)
    names = [parts.GetNthTransform(i).GetName() for i in range(parts.GetNumberOfTransforms())]
    assert names == ["AffineTransform", "DisplacementFieldTransform"]
    ours, by_ants = _resampled_by_us(transform)
    head = by_ants > 0.05 * by_ants.max()
    assert head.sum() > 1000
    assert np.abs(ours - by_ants)[head].max() <= 1e-4 * by_ants.max()
    # the field matters: the affine part alone misses ANTs' result by far more than that
    affine_only, _ = _resampled_by_us(parts.GetNthTransform(0))
    assert np.abs(affine_only - by_ants)[head].max() > 0.05 * by_ants.max()


def test_ants_composite_chained_after_the_rigid_step_and_written_round_trips(tmp_path):
    ants_xfm = reg.read_transform(str(XFM))
    theta = np.deg2rad(12.0)
    rigid_ras = np.eye(4)
    rigid_ras[:3, :3] = [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    rigid_ras[:3, 3] = [4.0, -11.0, 7.5]
    rigid = reg.rigid_from_ras_matrix(rigid_ras)  # T1w points -> QALAS points
    chained = template_via_t1w(ants_xfm, rigid)
    points = np.random.default_rng(0).uniform(-60, 60, (200, 3))  # template RAS mm
    via_t1w = reg.transform_points(ants_xfm, points)
    expected = via_t1w @ rigid_ras[:3, :3].T + rigid_ras[:3, 3]
    assert np.abs(reg.transform_points(chained, points) - expected).max() < 1e-4
    assert np.abs(via_t1w - points).max() > 5.0  # a real mapping, not the identity
    path = reg.write_transform(chained, str(tmp_path / "from-QALAS_to-tpl_mode-image_xfm.h5"))
    again = reg.read_transform(path)
    assert np.abs(reg.transform_points(again, points) - expected).max() < 1e-4
