"""Group level: TSV + data dictionary + HTML from a fake multi-subject derivatives folder."""
import json
import math

import nibabel as nib
import nibabel.processing
import numpy as np
import pandas as pd
import pytest

from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.testing.fake_derivatives import write_fake_derivatives
from qalas_bids.reports.group import TSV_NAME, run_group_level


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    out = tmp_path_factory.mktemp("group") / "out"
    for i in range(5):  # sub-05 has 40 % longer T1 everywhere: an outlier
        write_fake_derivatives(out, f"{i + 1:02d}", resolution=3.0, with_synthetic=False, with_b1=i != 1, seed=i,
                               t1_scale=1.4 if i == 4 else 1.0)
    return out, run_group_level(out)


def test_files_written(group):
    out, paths = group
    assert paths["tsv"] == out.absolute() / TSV_NAME
    for key in ("tsv", "json", "html", "figure"):
        assert paths[key].is_file()
    assert paths["figure"].relative_to(out.absolute()).as_posix() in paths["html"].read_text()


def test_table_values_and_flags(group):
    _, paths = group
    table = pd.read_csv(paths["tsv"], sep="\t")
    assert list(table["participant_id"]) == [f"sub-{i:02d}" for i in range(1, 6)]
    normal = table.iloc[:4]
    # class medians include partial-volume voxels (WM class up to the ~1.1 s split): pure WM
    # is 0.85 s and pure GM 1.35 s in the digital brain
    assert normal["T1map_WM_median"].between(0.85, 0.97).all()
    assert normal["T1map_GM_median"].between(1.2, 1.45).all()
    assert np.allclose(normal["T2map_WM_median"], 0.075, atol=0.01)
    assert (table["T1map_WM_iqr"] > 0).all()
    assert list(table["qc_no_b1"]) == [0, 1, 0, 0, 0]
    assert "T1map_WM_median" in table.loc[4, "qc_outlier_columns"]
    assert table.loc[:3, "qc_outlier_columns"].isna().all()  # "n/a" in the TSV
    assert "outlier" in paths["html"].read_text()


def test_data_dictionary_describes_every_column(group):
    _, paths = group
    table = pd.read_csv(paths["tsv"], sep="\t")
    dictionary = json.loads(paths["json"].read_text())
    assert set(dictionary) == set(table.columns)
    assert dictionary["T1map_WM_median"]["Units"] == "s"
    assert "T1 > 2.5 s" in dictionary["n_voxels_WM"]["Description"]


def test_fmriprep_dseg_used_with_warning(tmp_path):
    out = tmp_path / "out"
    for sub in ("01", "02"):
        write_fake_derivatives(out, sub, resolution=3.0, with_synthetic=False)
    fmriprep = tmp_path / "fmriprep"
    anat = fmriprep / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (fmriprep / "dataset_description.json").write_text(json.dumps(
        {"Name": "fake", "BIDSVersion": "1.8.0", "DatasetType": "derivative", "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    t1 = nib.load(out / "sub-01" / "anat" / "sub-01_T1map.nii.gz")
    data = np.asarray(t1.dataobj)
    # a dseg on a coarser grid: all brain = "WM" (label 2) -> WM gets every voxel
    coarse = nib.processing.resample_to_output(nib.Nifti1Image((data > 0).astype(np.float32) * 2, t1.affine),
                                               voxel_sizes=(4, 4, 4), order=0)
    nib.Nifti1Image(np.asarray(coarse.dataobj).astype(np.int16), coarse.affine).to_filename(anat / "sub-01_dseg.nii.gz")
    with pytest.warns(UserWarning, match="NO registration"):
        paths = run_group_level(out, derivatives_dir=fmriprep)
    table = pd.read_csv(paths["tsv"], sep="\t")
    assert table.loc[0, "n_voxels_GM"] == 0 and table.loc[0, "n_voxels_WM"] > 1000
    assert math.isnan(table.loc[0, "T1map_GM_median"])
    assert table.loc[1, "n_voxels_GM"] > 0  # sub-02 has no dseg: classes from its own maps


def test_empty_output_is_a_clear_error(tmp_path):
    (tmp_path / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.8.0", '
                                                       '"DatasetType": "derivative", "GeneratedBy": [{"Name": "q"}]}')
    with pytest.raises(QalasInputError, match="participant level"):
        run_group_level(tmp_path)


def test_group_outputs_keep_the_derivatives_valid(tmp_path):
    """After the group level, bids-validator-deno reports 0 errors (group files included)."""
    import json as _json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from qalas_bids.bids import write_dataset_description

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text(_json.dumps({"Name": "raw", "BIDSVersion": "1.10.0"}))
    out = tmp_path / "out"
    for i in range(2):
        write_fake_derivatives(out, f"{i + 1:02d}", resolution=4.0, with_synthetic=False, with_b1=False,
                               seed=i)
    write_dataset_description(out, raw)
    (out / ".bidsignore").unlink(missing_ok=True)  # the group level must write what it needs
    paths = run_group_level(out)
    assert (out / "group").is_dir() and paths["tsv"].name.startswith("group_")
    exe = Path(sys.executable).parent / "bids-validator-deno"
    exe = str(exe) if exe.exists() else shutil.which("bids-validator-deno")
    assert exe, "bids-validator-deno is a test dependency: pip install -e .[test]"
    proc = subprocess.run([exe, "--format", "json", str(out)], capture_output=True, text=True, timeout=300)
    issues = _json.loads(proc.stdout)["issues"]["issues"]
    errors = [(i["code"], i.get("location")) for i in issues if i["severity"] == "error"]
    assert errors == [], errors


def test_participants_without_maps_are_listed_with_the_reason(tmp_path, caplog):
    out = tmp_path / "out"
    for i in range(2):
        write_fake_derivatives(out, f"{i + 1:02d}", resolution=4.0, with_synthetic=False, seed=i)
    crash = out / "sub-03" / "log" / "20260101-000000_x" / "crash-fit.txt"
    crash.parent.mkdir(parents=True)
    crash.write_text("Traceback ...")
    (out / "sub-04" / "anat").mkdir(parents=True)
    with caplog.at_level("WARNING", logger="qalas_bids"):
        paths = run_group_level(out)
    page = paths["html"].read_text()
    assert "sub-03: no T1 map; the participant level crashed" in page and "crash-fit.txt" in page
    assert "sub-04: no T1 map (the participant level did not finish)" in page
    assert "sub-03 left out" in caplog.text and "sub-04 left out" in caplog.text
    assert len(pd.read_csv(paths["tsv"], sep="\t")) == 2
