"""B1 map kinds against their forward signal equations, rigid coregistration, sidecar errors."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from qalas_bids.bids.b1_pairing import B1Source
from qalas_bids.bids.b1_read import b1_parameters
from qalas_bids.qalas.b1 import kinds
from qalas_bids.qalas.b1.coregister import register_rigid, registered_affine
from qalas_bids.qalas.b1.no_b1 import NO_B1_BIAS_PER_10_PERCENT
from qalas_bids.qalas.b1.quality import motion_warnings, structure_stats, structure_warnings
from qalas_bids.qalas.errors import QalasInputError

RNG = np.random.default_rng(22)
N = 2000


def _afi_forward(b1, t1, angle=60.0, tr1=0.02, tr2=0.1):
    """Steady-state AFI signals, Yarnykh 2007 Eq. 2 (perfect spoiling)."""
    alpha = np.radians(angle) * b1
    e1, e2, c = np.exp(-tr1 / t1), np.exp(-tr2 / t1), np.cos(alpha)
    den = 1 - e1 * e2 * c * c
    return (np.sin(alpha) * (1 - e2 + (1 - e1) * e2 * c) / den,
            np.sin(alpha) * (1 - e1 + (1 - e2) * e1 * c) / den)


def test_afi_matches_forward_equation():
    b1, t1 = RNG.uniform(0.6, 1.4, N), RNG.uniform(0.6, 4.0, N)
    s1, s2 = _afi_forward(b1, t1)
    got = kinds.relative_b1_from_afi(s1, s2, 5.0, 60.0)
    # Yarnykh's formula is first order in TR/T1: |error| < 0.8 % at TR1 20 ms, T1 >= 0.6 s, B1 <= 1.4
    assert np.max(np.abs(got / b1 - 1)) < 0.008
    # and exact in the short-TR limit
    s1, s2 = _afi_forward(b1, t1 * 1e4)
    assert np.max(np.abs(kinds.relative_b1_from_afi(s1, s2, 5.0, 60.0) / b1 - 1)) < 1e-4


def test_afi_invalid_voxels_are_nan_not_zero():
    s1 = np.array([1.0, 0.0, 1.0, 1.0])
    s2 = np.array([0.5, 0.5, 6.0, -1.0])  # ok; no signal; ratio > n; negative
    got = kinds.relative_b1_from_afi(s1, s2, 5.0, 60.0)
    assert np.isfinite(got[0]) and np.all(np.isnan(got[1:]))
    filled, invalid = kinds.fill_invalid(got)
    assert invalid.tolist() == [False, True, True, True] and np.all(filled == got[0])
    with pytest.raises(QalasInputError, match="TR2/TR1"):
        kinds.relative_b1_from_afi(s1, s2, 0.2, 60.0)


def test_dam_matches_forward_equation():
    b1 = RNG.uniform(0.6, 1.4, N)
    a = np.radians(60.0) * b1
    got = kinds.relative_b1_from_dam(np.sin(a), np.abs(np.sin(2 * a)), 60.0)
    assert np.max(np.abs(got / b1 - 1)) < 1e-5
    # finite TR: spoiled gradient echo with TR 8 s biases B1 by < 1 % for T1 <= 1.5 s
    t1 = RNG.uniform(0.6, 1.5, N)
    e1 = np.exp(-8.0 / t1)
    s = [np.sin(k * a) * (1 - e1) / (1 - e1 * np.cos(k * a)) for k in (1, 2)]
    assert np.max(np.abs(kinds.relative_b1_from_dam(s[0], np.abs(s[1]), 60.0) / b1 - 1)) < 0.01


def test_famp_kinds():
    b1 = RNG.uniform(0.6, 1.4, N)
    assert np.allclose(kinds.relative_b1_from_famp(b1 * 10 * 80, 80), b1, rtol=1e-6)
    famp = 2048 + b1 * 90 * 2048 / 180  # rf_map: degrees = (famp - 2048) * 180 / 2048
    assert np.allclose(kinds.relative_b1_from_rfm(famp, 90), b1, rtol=1e-5)


@pytest.mark.parametrize("units, scale, expected", [
    ("percent", 100, "percent (Units)"), ("%", 100, "percent (Units)"), (None, 100, "percent (values)"),
    ("1", 1, "ratio (Units)"), (None, 1, "ratio (values)")])
def test_tb1map_units(units, scale, expected):
    b1 = RNG.uniform(0.7, 1.3, N)
    ratio, how = kinds.relative_b1_from_map(b1 * scale, units)
    assert how == expected and np.allclose(ratio, b1, rtol=1e-6)


def test_tb1map_units_contradicted_by_values():
    with pytest.raises(QalasInputError, match="do not fit its Units"):
        kinds.relative_b1_from_map(RNG.uniform(70, 130, N), "1")


def _source(kind, files, metas):
    main = {"afi": "tr1", "dam": "flip1", "tfl": "famp"}[kind]
    return B1Source(kind=kind, files=files, metadata=metas.get(main, {}), role_metadata=metas)


def test_afi_sidecar_keys_or_options():
    files = {"tr1": "/x/sub-01_acq-tr1_TB1AFI.nii.gz", "tr2": "/x/sub-01_acq-tr2_TB1AFI.nii.gz"}
    good = {"tr1": {"FlipAngle": 60, "RepetitionTimeExcitation": 0.02},
            "tr2": {"FlipAngle": 60, "RepetitionTimeExcitation": 0.1}}
    params = b1_parameters(_source("afi", files, good))
    assert params["TRRatio"] == pytest.approx(5.0) and params["NominalFlipAngle"] == 60
    missing = {"tr1": {"FlipAngle": 60, "RepetitionTimeExcitation": 0.02}, "tr2": {"FlipAngle": 60}}
    with pytest.raises(QalasInputError, match="sub-01_acq-tr2_TB1AFI.json has no RepetitionTimeExcitation"
                                              ".*--afi-tr-ratio"):
        b1_parameters(_source("afi", files, missing))
    assert b1_parameters(_source("afi", files, missing), afi_tr_ratio=6.0)["TRRatio"] == 6.0
    no_angle = {r: {"RepetitionTimeExcitation": m["RepetitionTimeExcitation"]} for r, m in good.items()}
    with pytest.raises(QalasInputError, match="acq-tr1_TB1AFI.json has no FlipAngle.*--b1-flip-angle"):
        b1_parameters(_source("afi", files, no_angle))
    assert b1_parameters(_source("afi", files, no_angle), flip_angle_override=45)["NominalFlipAngle"] == 45
    swapped = {"tr1": good["tr2"], "tr2": good["tr1"]}
    with pytest.raises(QalasInputError, match="not > 1"):
        b1_parameters(_source("afi", files, swapped))


def test_dam_angles_must_double():
    files = {"flip1": "/x/sub-01_flip-1_TB1DAM.nii.gz", "flip2": "/x/sub-01_flip-2_TB1DAM.nii.gz"}
    assert b1_parameters(_source("dam", files, {"flip1": {"FlipAngle": 60}, "flip2": {"FlipAngle": 120}}))
    with pytest.raises(QalasInputError, match="not twice"):
        b1_parameters(_source("dam", files, {"flip1": {"FlipAngle": 60}, "flip2": {"FlipAngle": 90}}))
    with pytest.raises(QalasInputError, match="flip-2_TB1DAM.json has no FlipAngle"):
        b1_parameters(_source("dam", files, {"flip1": {"FlipAngle": 60}, "flip2": {}}))


def _rotation(axis, degrees):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return Rotation.from_rotvec(np.radians(degrees) * axis).as_matrix()


def _head(shape=(44, 52, 40), voxel=3.0):
    affine = np.diag([voxel] * 3 + [1.0])
    affine[:3, 3] = -np.array(shape) * voxel / 2
    world = np.indices(shape).transpose(1, 2, 3, 0) * voxel + affine[:3, 3]
    r = ((world / np.array([55.0, 65.0, 50.0])) ** 2).sum(-1)
    texture = ndimage.gaussian_filter(np.random.default_rng(3).normal(size=shape), 2.5)
    image = np.where(r < 1, 1 + 3 * texture / texture.std() * 0.15, 0) + 0.6 * (r < 0.3)
    return nib.Nifti1Image(image.astype(np.float32), affine), r < 1.15


@pytest.mark.parametrize("seed", [0, 1])
def test_registration_recovers_a_random_rigid_motion(seed):
    rng = np.random.default_rng(seed)
    fixed, mask = _head()
    motion = np.eye(4)
    motion[:3, :3] = _rotation(rng.normal(size=3), rng.uniform(4, 9))
    motion[:3, 3] = rng.uniform(-8, 8, 3)
    b1_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    b1_affine[:3, 3] = -np.array([36, 40, 32]) * 2.0
    # the B1 magnitude sees the head after the motion: moving(y) = fixed(motion^-1 y)
    to_fixed = np.linalg.inv(fixed.affine) @ np.linalg.inv(motion) @ b1_affine
    data = ndimage.affine_transform(np.asarray(fixed.dataobj), to_fixed[:3, :3], to_fixed[:3, 3],
                                    output_shape=(36, 40, 32), order=1)
    result = register_rigid(nib.Nifti1Image(data, b1_affine), fixed, mask)
    points = nib.affines.apply_affine(fixed.affine, np.argwhere(mask)[::40])
    error = nib.affines.apply_affine(result.matrix, points) - nib.affines.apply_affine(motion, points)
    assert np.sqrt((error ** 2).sum(1).mean()) < 0.5  # mm RMS over the head (3-4 mm voxels)
    placed = registered_affine(b1_affine, result)
    assert np.allclose(placed, np.linalg.inv(result.matrix) @ b1_affine)
    again = register_rigid(nib.Nifti1Image(data, b1_affine), fixed, mask)
    assert np.allclose(again.matrix, result.matrix, rtol=0, atol=1e-9)  # deterministic (to rounding)
    assert motion_warnings(result.translation_mm, result.rotation_deg)  # > 2 mm / 2 deg


@pytest.mark.parametrize("slices", [4, 8])
def test_b1_slab_too_thin_for_the_rotation_search_keeps_the_header_start(slices):
    """A B1 magnitude of only 4-8 slices (12-24 mm) over a whole-head QALAS: the coarse
    rotation search cannot run on it (ITK needs 4 voxels per axis at 8 mm), so the header
    start's optimum stands - a result, not a SimpleITK traceback."""
    fixed, mask = _head()
    data = np.asarray(fixed.dataobj)[:, :, 18:18 + slices]
    affine = fixed.affine.copy()
    affine[:3, 3] += affine[:3, 2] * 18
    result = register_rigid(nib.Nifti1Image(data, affine), fixed, mask)
    assert result.translation_mm < 1.0 and result.rotation_deg < 1.0  # it did not move


def test_thin_qalas_slab_is_not_registered():
    from qalas_bids.qalas.b1.coregister import MIN_EXTENT_MM, too_thin_to_register

    assert too_thin_to_register((90, 108, 90), (2.0, 2.0, 2.0)) is None  # whole head
    reason = too_thin_to_register((90, 108, 10), (2.0, 2.0, 2.0))  # a 20 mm slab
    assert reason and "20 mm thick" in reason and "header geometry" in reason
    assert too_thin_to_register((64, 64, 30), (1.0, 1.0, MIN_EXTENT_MM / 30)) is None


def test_quality_flags():
    assert motion_warnings(1.0, 1.0) == []
    shape = (30, 30, 30)
    head = np.zeros(shape, bool)
    head[5:25, 5:25, 5:25] = True
    smooth = 1 + 0.004 * np.indices(shape)[0]  # 0.2 % per mm at 2 mm voxels
    stats = structure_stats(smooth, head, (2.0, 2.0, 2.0))
    assert stats == {"HoleFraction": 0.0, "StepFraction": 0.0} and structure_warnings(stats) == []
    stepped = smooth.copy()
    stepped[15:] += 0.2
    holes = np.zeros(shape)
    holes[10:13, 10:13, 10:13] = 1
    stats = structure_stats(stepped, head, (2.0, 2.0, 2.0), holes)
    assert stats["StepFraction"] > 0.01 and stats["HoleFraction"] > 0.001
    assert any("steps" in w for w in structure_warnings(stats))


def test_no_b1_bias_constant_matches_the_refit():
    from qalas_bids.qalas.b1.identifiability import no_b1_bias

    for b1, table in NO_B1_BIAS_PER_10_PERCENT.items():
        got = no_b1_bias(round(b1 - 1.0, 6))
        for tissue, maps in table.items():
            for name, value in maps.items():
                assert got[tissue][name] == pytest.approx(value, abs=0.11), (b1, tissue, name)
    json.dumps(NO_B1_BIAS_PER_10_PERCENT)  # sidecar-ready


def test_no_b1_is_stated_in_help_and_sidecars():
    from qalas_bids.bids.sidecars import map_metadata
    from qalas_bids.cli.parser import build_parser

    help_text = " ".join(build_parser().format_help().split())
    wm = NO_B1_BIAS_PER_10_PERCENT[0.9]["WM"]["T1"]
    assert f"true B1 0.9: WM T1 {wm:+.1f} %" in help_text
    assert "--b1-registration {header,rigid}" in help_text and "--afi-tr-ratio" in help_text
    (first, *_) = map_metadata("scan-specific", [], None)
    assert "per 10 % of B1 error" in first["B1Source"] and f"WM T1 {wm:+.1f} %" in first["B1Source"]


def test_tb1map_scale_survives_a_noisy_background():
    head = RNG.uniform(70, 130, 3000)
    background = np.abs(RNG.normal(0, 20, 7000))  # 70 % of the field of view is noise
    ratio, how = kinds.relative_b1_from_map(np.concatenate([head, background]), None)
    assert how == "percent (values)" and np.allclose(ratio[:3000], head / 100)
