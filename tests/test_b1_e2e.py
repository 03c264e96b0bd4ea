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
