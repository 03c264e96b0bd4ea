"""Derivative names, atomic NIfTI/JSON writing, dataset_description, pybids + validator."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import qalas_bids.bids.derivatives as derivatives_module
from qalas_bids.bids import (OutputLocationError, bids_uri, derivative_path, detect_container,
                             write_bidsignore, write_dataset_description, write_derivative)

ENTS = {"subject": "01", "session": "01", "acquisition": "hbcd", "run": "1", "inv": "0"}
AFFINE = np.array([[0.0, 0.0, 1.1, -40.0], [-1.0, 0.0, 0.0, 60.0], [0.0, 1.2, 0.0, -30.0],
                   [0.0, 0.0, 0.0, 1.0]])
VALIDATOR = Path(sys.executable).parent / "bids-validator-deno"


@pytest.fixture
def raw(tmp_path) -> Path:
    root = tmp_path / "raw"
    root.mkdir()
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "study", "BIDSVersion": "1.10.0", "DatasetDOI": "doi:10.0/x"}))
    return root


@pytest.fixture
def reference() -> nib.Nifti1Image:
    """A 4D QALAS-like reference with distinct qform/sform codes and units."""
    img = nib.Nifti1Image(np.zeros((8, 7, 6, 5), np.int16), AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=2)
    img.header.set_xyzt_units("mm", "sec")
    return img


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize("suffix, kw, expected", [
    ("T1map", {}, "anat/sub-01_ses-01_acq-hbcd_run-1_T1map.nii.gz"),
    ("IEmap", {}, "anat/sub-01_ses-01_acq-hbcd_run-1_IEmap.nii.gz"),
    ("T2map", {"desc": "crlb"}, "anat/sub-01_ses-01_acq-hbcd_run-1_desc-crlb_T2map.nii.gz"),
    ("QALAS", {"desc": "residual"}, "anat/sub-01_ses-01_acq-hbcd_run-1_desc-residual_QALAS.nii.gz"),
    ("mask", {"desc": "brain"}, "anat/sub-01_ses-01_acq-hbcd_run-1_desc-brain_mask.nii.gz"),
    ("FLAIR", {"desc": "synthetic"}, "anat/sub-01_ses-01_acq-hbcd_run-1_desc-synthetic_FLAIR.nii.gz"),
    ("PSIR", {"desc": "synthetic"}, "anat/sub-01_ses-01_acq-hbcd_run-1_desc-synthetic_PSIR.nii.gz"),
    ("TB1map", {"space": "QALAS", "datatype": "fmap"},
     "fmap/sub-01_ses-01_acq-hbcd_run-1_space-QALAS_TB1map.nii.gz"),
    ("T1map", {"extension": ".json"}, "anat/sub-01_ses-01_acq-hbcd_run-1_T1map.json"),
])
def test_derivative_path(suffix, kw, expected):
    assert derivative_path(ENTS, suffix, **kw) == f"sub-01/ses-01/{expected}"


def test_derivative_path_figures_and_minimal_entities():
    assert derivative_path(ENTS, "T1map", desc="maps", datatype="figures", extension=".svg") == \
        "sub-01/figures/sub-01_ses-01_acq-hbcd_run-1_desc-maps_T1map.svg"
    assert derivative_path({"subject": "02"}, "PDmap") == "sub-02/anat/sub-02_PDmap.nii.gz"


def test_derivative_path_rejects_unknown():
    with pytest.raises(ValueError, match="no qalas-bids output pattern"):
        derivative_path(ENTS, "bold")
    with pytest.raises(ValueError, match="subject"):
        derivative_path({"session": "01"}, "T1map")


def test_bids_uri(raw):
    path = raw / "sub-01" / "anat" / "sub-01_inv-0_QALAS.nii.gz"
    assert bids_uri(path, raw) == "bids:raw:sub-01/anat/sub-01_inv-0_QALAS.nii.gz"


# --------------------------------------------------------------------------- writing
def test_write_derivative_float32_header_and_sidecar(tmp_path, raw, reference):
    out = tmp_path / "out"
    data = np.random.default_rng(0).uniform(0.2, 4.0, (8, 7, 6))  # float64 in
    rel = derivative_path(ENTS, "T1map")
    meta = {"Units": "s", "Sources": ["bids:raw:x"], "Value": np.float64(1.5), "Arr": np.arange(2)}
    path = write_derivative(out, rel, data, reference, meta, bids_dir=raw)
    assert path == out / rel
    img = nib.load(path)
    assert img.get_data_dtype() == np.float32 and img.shape == (8, 7, 6)
    np.testing.assert_allclose(img.get_fdata(), data.astype(np.float32))
    np.testing.assert_allclose(img.affine, AFFINE, atol=1e-6)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 2
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.2, 1.1), atol=1e-6)
    assert img.header.get_xyzt_units() == ("mm", "sec")
    sidecar = json.loads(path.with_name(path.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar == {"Units": "s", "Sources": ["bids:raw:x"], "Value": 1.5, "Arr": [0, 1]}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp files


def test_write_mask_as_uint8(tmp_path, reference):
    rel = derivative_path(ENTS, "mask", desc="brain")
    path = write_derivative(tmp_path / "out", rel, np.ones((8, 7, 6), bool), reference,
                            {"Type": "Brain"}, dtype=np.uint8)
    assert nib.load(path).get_data_dtype() == np.uint8


def test_space_qalas_gets_spatial_reference(tmp_path, reference):
    rel = derivative_path(ENTS, "TB1map", space="QALAS", datatype="fmap")
    src = "bids:raw:sub-01/ses-01/anat/sub-01_ses-01_acq-hbcd_run-1_inv-0_QALAS.nii.gz"
    path = write_derivative(tmp_path / "out", rel, np.ones((8, 7, 6)), reference,
                            {"Sources": ["bids:raw:sub-01/fmap/famp.nii.gz", src]})
    assert json.loads(path.with_suffix("").with_suffix(".json").read_text())["SpatialReference"] == src
    with pytest.raises(ValueError, match="SpatialReference"):
        write_derivative(tmp_path / "out", rel, np.ones((8, 7, 6)), reference, {})


def test_nan_refused_and_nothing_written(tmp_path, reference):
    data = np.ones((8, 7, 6)); data[1, 1, 1] = np.nan
    rel = derivative_path(ENTS, "T2map")
    with pytest.raises(ValueError, match="1 NaN/Inf"):
        write_derivative(tmp_path / "out", rel, data, reference, {})
    assert not (tmp_path / "out" / rel).exists()


def test_shape_mismatch_refused(tmp_path, reference):
    with pytest.raises(ValueError, match="does not match the reference grid"):
        write_derivative(tmp_path / "out", derivative_path(ENTS, "T2map"), np.ones((8, 7, 5)),
                         reference, {})


def test_never_writes_inside_bids_dir(tmp_path, raw, reference):
    rel = derivative_path(ENTS, "T1map")
    for out in (raw, raw / "sub-01", raw / "sub-01" / "anat", raw / "derivatives", raw / "code" / "x"):
        with pytest.raises(OutputLocationError, match="never writes into"):
            write_derivative(out, rel, np.ones((8, 7, 6)), reference, {}, bids_dir=raw)
        with pytest.raises(OutputLocationError):  # also found without bids_dir
            write_derivative(out, rel, np.ones((8, 7, 6)), reference, {})
        with pytest.raises(OutputLocationError):
            write_dataset_description(out, raw)
    assert [p.name for p in raw.rglob("*")] == ["dataset_description.json"]


@pytest.mark.parametrize("sub", ["derivatives/qalas-bids", "derivatives/pipelines/qalas"])
def test_writes_in_the_bids_derivatives_folder(raw, reference, sub):
    """``<bids_dir>/derivatives/<name>`` is where BIDS puts derivatives: allowed, twice."""
    out = raw / sub
    rel = derivative_path(ENTS, "T1map")
    for _ in range(2):  # the second time our own dataset_description.json is already there
        write_dataset_description(out, raw)
        write_derivative(out, rel, np.ones((8, 7, 6)), reference, {}, bids_dir=raw)
    assert (out / rel).is_file()
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] == "derivative"


def test_atomic_write_keeps_old_file_on_crash(tmp_path, reference, monkeypatch):
    out = tmp_path / "out"
    rel = derivative_path(ENTS, "T1map")
    write_derivative(out, rel, np.full((8, 7, 6), 1.0), reference, {"Units": "s"})

    def crash(img, filename):
        Path(filename).write_bytes(b"half")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(derivatives_module, "write_image", crash)
    with pytest.raises(KeyboardInterrupt):
        write_derivative(out, rel, np.full((8, 7, 6), 2.0), reference, {"Units": "s"})
    monkeypatch.undo()
    np.testing.assert_array_equal(nib.load(out / rel).get_fdata(), 1.0)
    assert not [p.name for p in (out / rel).parent.iterdir() if p.name.startswith(".")]


# --------------------------------------------------------------------------- dataset files
def test_dataset_description(tmp_path, raw):
    out = tmp_path / "out"
    desc = json.loads(write_dataset_description(out, raw).read_text())
    assert desc["DatasetType"] == "derivative" and desc["BIDSVersion"]
    gen = desc["GeneratedBy"][0]
    from qalas_bids import __version__
    assert gen["Name"] == "qalas-bids" and gen["Version"] == __version__ and gen["CodeURL"]
    assert desc["DatasetLinks"] == {"raw": raw.absolute().as_uri()}
    assert desc["SourceDatasets"] == [{"URL": raw.absolute().as_uri(), "DOI": "doi:10.0/x"}]


def test_detect_container(tmp_path):
    assert detect_container(tmp_path, environ={}) is None
    assert detect_container(tmp_path, environ={"APPTAINER_CONTAINER": "/img/q.sif"}) == {
        "Type": "singularity", "URI": "/img/q.sif"}
    (tmp_path / ".dockerenv").touch()
    assert detect_container(tmp_path, environ={}, prefix="/usr") is None  # native install in a container
    docker = detect_container(tmp_path, environ={}, prefix="/opt/qalas-venv")
    assert docker["Type"] == "docker" and docker["Tag"].startswith("qalas-bids/qalas-bids:")
    assert detect_container(tmp_path, environ={"QALAS_BIDS_CONTAINER_TAG": "me/q:dev"},
                            prefix="/opt/qalas-venv")["Tag"] == "me/q:dev"
    (tmp_path / ".dockerenv").unlink()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".containerenv").touch()  # podman
    assert detect_container(tmp_path, environ={}, prefix="/opt/qalas-venv")["Type"] == "docker"


def test_bidsignore_idempotent(tmp_path):
    (tmp_path / ".bidsignore").write_text("extra/\n")
    write_bidsignore(tmp_path)
    write_bidsignore(tmp_path)
    lines = (tmp_path / ".bidsignore").read_text().splitlines()
    assert lines[0] == "extra/" and len(lines) == len(set(lines))
    for suffix in ("IEmap", "DIR", "PSIR", "STIR", "QALAS"):
        assert f"*_{suffix}.*" in lines


# --------------------------------------------------------------------------- full tree
def _write_full_tree(out: Path, raw: Path, reference) -> None:
    src = [bids_uri(raw / "sub-01/ses-01/anat/sub-01_ses-01_acq-hbcd_run-1_inv-0_QALAS.nii.gz", raw)]
    ones = np.ones((8, 7, 6))

    def write(suffix, **kw):
        meta = {"Units": "s", "Sources": src, "SkullStripped": False}
        dtype = np.uint8 if suffix == "mask" else np.float32
        write_derivative(out, derivative_path(ENTS, suffix, **kw), ones, reference, meta,
                         dtype=dtype, bids_dir=raw)

    for suffix in ("T1map", "T2map", "PDmap", "IEmap"):
        write(suffix)
        write(suffix, desc="crlb")
    write("QALAS", desc="residual")
    write("mask", desc="brain")
    for suffix in ("T1w", "T2w", "PDw", "FLAIR", "DIR", "PSIR", "STIR"):
        write(suffix, desc="synthetic")
    write("TB1map", space="QALAS", datatype="fmap")
    fig = out / derivative_path(ENTS, "T1map", desc="maps", datatype="figures")
    fig.parent.mkdir(parents=True)
    fig.write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (out / "sub-01.html").write_text("<html></html>")
    (out / "logs").mkdir()
    (out / "logs" / "CITATION.md").write_text("methods")
    write_dataset_description(out, raw)
    write_bidsignore(out)


def test_outputs_load_in_pybids(tmp_path, raw, reference):
    from bids import BIDSLayout

    out = tmp_path / "out"
    _write_full_tree(out, raw, reference)
    layout = BIDSLayout(out, validate=False, is_derivative=True)
    t1 = layout.get(suffix="T1map", extension=".nii.gz")
    assert sorted(f.entities.get("desc", "") for f in t1) == ["", "crlb"]
    assert t1[0].get_metadata()["Units"] == "s"
    assert layout.get(suffix="TB1map", space="QALAS", datatype="fmap")
    assert len(layout.get(desc="synthetic", extension=".nii.gz")) == 7
    raw_layout = BIDSLayout(raw, validate=False, derivatives=str(out))
    assert raw_layout.derivatives  # loads as a derivatives dataset of the raw data


def test_bids_validator_accepts_outputs(tmp_path, raw, reference):
    out = tmp_path / "out"
    _write_full_tree(out, raw, reference)
    exe = str(VALIDATOR) if VALIDATOR.exists() else shutil.which("bids-validator-deno")
    assert exe, "bids-validator-deno is a test dependency: pip install -e .[test]"
    proc = subprocess.run([exe, "--format", "json", str(out)], capture_output=True, text=True,
                          timeout=300)
    report = json.loads(proc.stdout)
    errors = [(i["code"], i.get("location")) for i in report["issues"]["issues"]
              if i["severity"] == "error"]
    assert errors == [], errors
    # without .bidsignore, the custom suffixes are the only errors
    (out / ".bidsignore").unlink()
    proc = subprocess.run([exe, "--format", "json", str(out)], capture_output=True, text=True,
                          timeout=300)
    errors = [i.get("location") or "" for i in json.loads(proc.stdout)["issues"]["issues"]
              if i["severity"] == "error"]
    assert errors and all(any(tag in loc for tag in ("IEmap", "QALAS", "DIR", "PSIR", "STIR",
                                                     "figures", ".html", "logs"))
                          for loc in errors), errors


def test_stale_temporaries_of_killed_runs_are_removed(tmp_path):
    import os
    import time

    from qalas_bids.bids.derivatives import remove_stale_temporaries

    anat = tmp_path / "sub-01" / "anat"
    anat.mkdir(parents=True)
    old = anat / ".sub-01_T1map.abc123.tmp.nii.gz"
    fresh = anat / ".sub-01_T2map.def456.tmp.nii.gz"
    other = tmp_path / "sub-02" / "anat" / ".sub-02_T1map.x.tmp.nii.gz"
    for path in (old, fresh, other):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    past = time.time() - 3600
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert remove_stale_temporaries(tmp_path, ["01"]) == [old]
    assert not old.exists() and fresh.exists() and other.exists()  # a running write, another subject
