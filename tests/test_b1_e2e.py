"""End to end on AFI demo data whose B1 map was taken 8 deg / 8 mm away (issue 22)."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from test_e2e_cli import FAST, assert_usage_error, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def afi_moved(tmp_path_factory):
    from qalas_bids.demo.dataset import write_demo_dataset

    root = tmp_path_factory.mktemp("afi") / "bids"
    write_demo_dataset(root, snr=60, anatomy="brain", b1_kind="afi", b1_pattern="asymmetric",
                       b1_motion=(8.0, 8.0))
    return root


def test_afi_moved_map_is_registered_flagged_and_recorded(afi_moved, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(afi_moved, out, "participant", "-w", tmp_path / "work", *FAST)
    assert proc.returncode == 0, proc.stderr[-4000:]
    prefix = "sub-01_ses-01_run-1"
    side = json.loads((out / "sub-01/ses-01/anat" / f"{prefix}_T1map.json").read_text())
    summary = side["B1Summary"]
    assert summary["Conversion"]["Kind"] == "afi" and summary["Conversion"]["TRRatio"] == pytest.approx(5.0)
    reg = summary["Registration"]
    assert reg["MotionMM"] > 5 and 6 < reg["RotationDegrees"] < 10  # true: 8 deg, 8 mm shift
    assert any(w.startswith("B1 QC: the rigid registration moved") for w in side["Warnings"])
    xfm = out / reg["TransformFile"]
    assert xfm.name == f"{prefix}_from-B1_to-QALAS_mode-image_xfm.txt"
    assert sitk.ReadTransform(str(xfm)).GetNumberOfParameters() == 6
    b1_side = json.loads((out / "sub-01/ses-01/fmap" / f"{prefix}_space-QALAS_TB1map.json").read_text())
    assert b1_side["B1Summary"]["Registration"]["TransformFile"] == reg["TransformFile"]
    # the registered field lies where the true one is (B1 error, not fit accuracy: 2 epochs)
    gt = afi_moved / "derivatives/groundtruth/sub-01/ses-01"
    truth = np.asarray(nib.load(gt / "fmap" / f"{prefix}_space-QALAS_TB1map.nii.gz").dataobj)
    got = np.asarray(nib.load(out / "sub-01/ses-01/fmap" / f"{prefix}_space-QALAS_TB1map.nii.gz").dataobj)
    brain = sum(np.asarray(nib.load(gt / "anat" / f"{prefix}_label-{t}_probseg.nii.gz").dataobj)
                for t in ("WM", "GM")) > 0.8
    error = got[brain] / truth[brain] - 1
    assert abs(np.median(error)) < 0.01 and np.percentile(np.abs(error), 95) < 0.04
    report = (out / "sub-01.html").read_text()
    assert "B1 QC: the rigid registration moved" in report
    assert "B1+ map coregistration (moved" in report  # before/after overlay
    assert list((out / "sub-01" / "figures").glob("*desc-b1motion_TB1map.png"))


def test_afi_missing_tr_key_is_exit_2(afi_moved, tmp_path):
    import shutil

    root = tmp_path / "bids"
    shutil.copytree(afi_moved, root, ignore=shutil.ignore_patterns("derivatives"))
    sidecar = next(root.glob("sub-01/ses-01/fmap/*acq-tr2*_TB1AFI.json"))
    meta = json.loads(sidecar.read_text())
    del meta["RepetitionTimeExcitation"]
    sidecar.write_text(json.dumps(meta))
    proc = run_cli(root, tmp_path / "out", "participant", "-w", tmp_path / "work", *FAST)
    assert_usage_error(proc, r"acq-tr2_run-1_TB1AFI\.json has no RepetitionTimeExcitation.*--afi-tr-ratio")


@pytest.mark.parametrize("kind,seed", [("tfl", 0), ("tfl", 7), ("afi", 4), ("afi", 8), ("dam", 3)])
def test_rigid_b1_registration_recovers_large_random_head_motion(tmp_path, kind, seed):
    """The digital head (with scalp and skull) moved between QALAS and the B1 map by a random
    rotation of 15-30 deg about a random axis and a shift of 10-28 mm: the pre-work check
    places the map within 1 mm RMS over the head (B1 voxels are 4 mm or more; measured
    0.09-0.57 mm). From the header start alone, seeds 0-9 of this draw gave 5 failures: afi 4
    and 8 ended 28 and 23 mm off, tfl 0 and 7 were misplaced so far that the B1 support gate
    refused the valid map (docs/b1.md)."""
    from scipy.spatial.transform import Rotation

    from qalas_bids.bids import collect_qalas_runs
    from qalas_bids.bids.inputs_check import check_run_inputs
    from qalas_bids.demo.dataset import write_demo_dataset

    rng = np.random.default_rng(seed + 10)
    axis = rng.normal(size=3)
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_rotvec(np.radians(rng.uniform(15, 30)) * axis / np.linalg.norm(axis)).as_matrix()
    shift = rng.normal(size=3)
    motion[:3, 3] = shift / np.linalg.norm(shift) * rng.uniform(10, 28)
    root = tmp_path / "bids"
    write_demo_dataset(root, subjects=("01",), sessions=("01",), runs=(1,), snr=30, anatomy="head", b1_kind=kind,
                       b1_motion=motion)
    (run,) = collect_qalas_runs(root)
    checked = check_run_inputs(run, b1_registration="rigid")
    found = np.array(checked.b1_info["Registration"]["MatrixQALASToB1RAS"])
    points = nib.affines.apply_affine(checked.reference.affine, np.argwhere(checked.mask)[::50])
    error = nib.affines.apply_affine(found, points) - nib.affines.apply_affine(motion, points)
    rms = float(np.sqrt((error ** 2).sum(1).mean()))
    print(f"{kind}: {np.degrees(Rotation.from_matrix(motion[:3, :3]).magnitude()):.1f} deg, "
          f"{np.linalg.norm(motion[:3, 3]):.1f} mm -> {rms:.2f} mm RMS")
    assert rms < 1.0, rms
