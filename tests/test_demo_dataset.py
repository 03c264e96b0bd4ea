"""Demo BIDS dataset: layout, sidecars, official validator, ground truth, B1 geometry, CLIs."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nilearn.image import resample_to_img
from scipy import ndimage

from qalas_bids.cli import demo_accuracy, demo_data
from qalas_bids.demo.dataset import GAIN, INVERSION_TIMES, write_demo_dataset
from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.phantom.digital_brain import make_digital_brain
from qalas_bids.qalas.physics.timing import get_preset, timing_from_metadata

VALIDATOR = Path(sys.executable).with_name("bids-validator-deno")
ANAT = "sub-01/ses-01/anat"
PREFIX = "sub-01_ses-01_run-1"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_demo_dataset(tmp_path_factory.mktemp("demo") / "bids", seed=0)


@pytest.fixture(scope="module")
def dataset_4d(tmp_path_factory):
    """Two subjects, no session level, two runs, 4D QALAS, no B1 map (4 mm to be quick)."""
    return write_demo_dataset(tmp_path_factory.mktemp("demo4d") / "bids", subjects=("01", "02"),
                              sessions=(), runs=(1, 2), qalas_layout="4d", with_b1=False, seed=4,
                              resolution=4.0)


def _json(path):
    return json.loads(Path(path).read_text())


def _validate(root: Path) -> dict:
    assert VALIDATOR.exists() or shutil.which("bids-validator-deno"), \
        "bids-validator-deno is a test dependency: pip install -e .[test]"
    cmd = [str(VALIDATOR if VALIDATOR.exists() else "bids-validator-deno"), str(root), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    report = json.loads(proc.stdout)
    return report


def _errors(report: dict) -> list:
    return [(i["code"], i.get("location"), i.get("subCode"))
            for i in report["issues"]["issues"] if i["severity"] == "error"]


def test_layout_and_top_level_files(dataset):
    for name in ("dataset_description.json", "participants.tsv", "participants.json", "README",
                 "CHANGES", ".bidsignore", "sub-01/sub-01_sessions.tsv"):
        assert (dataset / name).is_file(), name
    desc = _json(dataset / "dataset_description.json")
    assert desc["BIDSVersion"] == "1.10.0" and desc["DatasetType"] == "raw"
    assert desc["Authors"] and desc["License"]
    assert (dataset / ".bidsignore").read_text().split() == ["*_QALAS.nii.gz", "*_QALAS.json"]
    for k in range(5):
        assert (dataset / ANAT / f"{PREFIX}_inv-{k}_QALAS.nii.gz").is_file()
    for acq in ("anat", "famp"):
        assert (dataset / f"sub-01/ses-01/fmap/sub-01_ses-01_acq-{acq}_run-1_TB1TFL.nii.gz").is_file()


def test_qalas_sidecars_give_the_timing(dataset):
    metas = [_json(dataset / ANAT / f"{PREFIX}_inv-{k}_QALAS.json") for k in range(5)]
    assert [m["InversionTime"] for m in metas] == list(INVERSION_TIMES)
    meta = metas[0]
    for key in ("EchoTime", "RepetitionTime", "FlipAngle", "Manufacturer", "ManufacturersModelName",
                "MagneticFieldStrength", "EchoTrainLength", "ShimSetting", "AcquisitionTime",
                "SeriesNumber"):
        assert key in meta, key
    assert meta["Manufacturer"] == "Siemens" and meta["FlipAngle"] == 4
    assert meta["EchoTrainLength"] == 128 and meta["RepetitionTime"] == pytest.approx(0.0058)
    provenance = timing_from_metadata(meta)
    assert provenance.timing.differs_from(get_preset("siemens"), rtol=1e-9) == {}
    assert provenance.warnings == []


def test_images_and_ground_truth_match_the_simulation(dataset):
    gt = dataset / "derivatives" / "groundtruth"
    assert _json(gt / "dataset_description.json")["DatasetType"] == "derivative"
    sim = _json(gt / ANAT / f"{PREFIX}_simulation.json")
    brain = make_digital_brain(resolution=2.0, snr=30.0, seed=sim["NoiseSeed"],
                               anatomy_seed=sim["AnatomySeed"], b1_scale=sim["B1Scale"])
    img = nib.load(dataset / ANAT / f"{PREFIX}_inv-4_QALAS.nii.gz")
    assert img.get_data_dtype() == np.int16
    np.testing.assert_allclose(img.get_fdata(), GAIN * brain.signals[..., 4], atol=0.5 + 1e-6)
    np.testing.assert_allclose(img.affine, brain.affine)
    t1 = nib.load(gt / ANAT / f"{PREFIX}_T1map.nii.gz")
    np.testing.assert_allclose(t1.get_fdata(), brain.t1, rtol=1e-6)
    np.testing.assert_allclose(nib.load(gt / ANAT / f"{PREFIX}_PDmap.nii.gz").get_fdata(),
                               GAIN * brain.pd, rtol=1e-6)
    dseg = nib.load(gt / ANAT / f"{PREFIX}_desc-tissue_dseg.nii.gz").get_fdata()
    np.testing.assert_array_equal(dseg, brain.labels)
    assert "index\tname" in (gt / ANAT / f"{PREFIX}_desc-tissue_dseg.tsv").read_text()
    assert sim["SNR"] == 30.0 and sim["NoiseSigma"] == pytest.approx(GAIN * brain.sigma)
    assert sim["SequenceTiming"]["tf"] == 128
    for suffix in ("T2map", "IEmap"):
        assert (gt / ANAT / f"{PREFIX}_{suffix}.nii.gz").is_file()


def test_b1_map_geometry_and_values(dataset):
    fmap = dataset / "sub-01/ses-01/fmap"
    famp = nib.load(fmap / "sub-01_ses-01_acq-famp_run-1_TB1TFL.nii.gz")
    qalas = nib.load(dataset / ANAT / f"{PREFIX}_inv-0_QALAS.nii.gz")
    assert max(famp.header.get_zooms()) > 1.5 * max(qalas.header.get_zooms())
    assert not np.allclose(famp.affine, qalas.affine)
    assert nib.aff2axcodes(famp.affine) != nib.aff2axcodes(qalas.affine)
    meta = _json(fmap / "sub-01_ses-01_acq-famp_run-1_TB1TFL.json")
    assert meta["FlipAngle"] == 80 and meta["ShimSetting"]
    assert meta["IntendedFor"] == [f"bids::{ANAT}/{PREFIX}_inv-{k}_QALAS.nii.gz" for k in range(5)]
    assert meta["ShimSetting"] == _json(dataset / ANAT / f"{PREFIX}_inv-0_QALAS.json")["ShimSetting"]
    # Resampled back with both affines, famp/(10*80) is the true B1 inside the brain.
    b1 = resample_to_img(famp, qalas, interpolation="linear", force_resample=True,
                         copy_header=True).get_fdata() / (10 * meta["FlipAngle"])
    gt = dataset / "derivatives/groundtruth"
    truth = nib.load(gt / f"sub-01/ses-01/fmap/{PREFIX}_space-QALAS_TB1map.nii.gz").get_fdata()
    brain = nib.load(gt / ANAT / f"{PREFIX}_desc-tissue_dseg.nii.gz").get_fdata() > 0
    inner = ndimage.binary_erosion(brain, iterations=1)
    rel = np.abs(b1[inner] / truth[inner] - 1)
    assert rel.max() < 0.03
    assert truth[inner].min() < 0.85 and truth[inner].max() > 1.0


@pytest.mark.slow
def test_official_validator_passes(dataset):
    report = _validate(dataset)
    assert _errors(report) == []
    assert "fmap" in report["summary"]["dataTypes"]


@pytest.mark.slow
def test_4d_no_b1_multi_subject_variant(dataset_4d):
    report = _validate(dataset_4d)
    assert _errors(report) == []
    participants = (dataset_4d / "participants.tsv").read_text().splitlines()
    assert [row.split("\t")[0] for row in participants[1:]] == ["sub-01", "sub-02"]
    assert not list(dataset_4d.rglob("*TB1TFL*"))
    assert not list(dataset_4d.rglob("*TB1map*"))
    files = sorted(p.name for p in (dataset_4d / "sub-02/anat").glob("*.nii.gz"))
    assert files == ["sub-02_run-1_QALAS.nii.gz", "sub-02_run-2_QALAS.nii.gz"]
    img = nib.load(dataset_4d / "sub-02/anat/sub-02_run-1_QALAS.nii.gz")
    assert img.ndim == 4 and img.shape[-1] == 5
    meta = _json(dataset_4d / "sub-02/anat/sub-02_run-1_QALAS.json")
    assert meta["InversionTime"] == list(INVERSION_TIMES)
    # Runs of one subject: same anatomy (ground truth), independent noise.
    gt = dataset_4d / "derivatives/groundtruth/sub-02/anat"
    t1_run1 = nib.load(gt / "sub-02_run-1_T1map.nii.gz").get_fdata()
    np.testing.assert_array_equal(t1_run1, nib.load(gt / "sub-02_run-2_T1map.nii.gz").get_fdata())
    run2 = nib.load(dataset_4d / "sub-02/anat/sub-02_run-2_QALAS.nii.gz").get_fdata()
    assert not np.array_equal(img.get_fdata(), run2)
    # Subjects differ (anatomy variation, position).
    other = dataset_4d / "derivatives/groundtruth/sub-01/anat/sub-01_run-1_T1map.nii.gz"
    assert not np.array_equal(nib.load(other).get_fdata(), t1_run1)


def test_bad_arguments(tmp_path):
    with pytest.raises(QalasInputError):
        write_demo_dataset(tmp_path / "a", qalas_layout="5d")
    with pytest.raises(QalasInputError):
        write_demo_dataset(tmp_path / "b", subjects=("0-1",))
    with pytest.raises(QalasInputError):
        write_demo_dataset(tmp_path / "c", vendor="acme")


def test_cli_refuses_non_empty_directory(tmp_path, capsys):
    target = tmp_path / "bids"
    target.mkdir()
    (target / "precious.txt").write_text("user data")
    with pytest.raises(SystemExit) as exc:
        demo_data.main([str(target)])
    assert exc.value.code == 2
    assert "not empty" in capsys.readouterr().err
    assert (target / "precious.txt").read_text() == "user data"
    assert sorted(p.name for p in target.iterdir()) == ["precious.txt"]


@pytest.mark.parametrize("args", [["--resolution", "3"], ["--snr", "-1"], ["--runs", "0"],
                                  ["--layout", "2d"], ["--subjects", "a_b"]])
def test_cli_bad_arguments_exit_2(tmp_path, args, capsys):
    with pytest.raises(SystemExit) as exc:
        demo_data.main([str(tmp_path / "x"), *args])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_writes_dataset_and_accuracy_tool(tmp_path, capsys):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "precious.txt").write_text("user data")
    assert demo_data.main([str(bids), "--no-b1", "--seed", "3", "--snr", "60", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "inv-0_QALAS.nii.gz" in out and "groundtruth" in out
    assert not list(bids.rglob("*TB1TFL*"))
    assert (bids / "precious.txt").read_text() == "user data"

    out_dir = tmp_path / "out"
    assert demo_accuracy.main([str(bids), str(out_dir)]) == 1
    assert "does not exist" in capsys.readouterr().err
    (out_dir / "sub-01/ses-01/anat").mkdir(parents=True)
    assert demo_accuracy.main([str(bids), str(out_dir)]) == 1
    assert "missing app outputs" in capsys.readouterr().err
    # Fake app outputs: the truth, T1 10 % too long.
    gt = bids / "derivatives/groundtruth" / ANAT
    for suffix in ("T1map", "T2map", "PDmap", "IEmap"):
        img = nib.load(gt / f"{PREFIX}_{suffix}.nii.gz")
        data = img.get_fdata() * (1.1 if suffix == "T1map" else 1.0)
        nib.save(nib.Nifti1Image(data.astype(np.float32), img.affine),
                 out_dir / "sub-01/ses-01/anat" / f"{PREFIX}_{suffix}.nii.gz")
    assert demo_accuracy.main([str(bids), str(out_dir)]) == 0
    text = capsys.readouterr().out
    t1_lines = [line for line in text.splitlines() if line.strip().startswith("T1map")]
    t2_lines = [line for line in text.splitlines() if line.strip().startswith("T2map")]
    assert len(t1_lines) == 3 and all("10.00%" in line for line in t1_lines)
    assert all("0.00%" in line for line in t2_lines)
    assert "sub-01.html" in text
