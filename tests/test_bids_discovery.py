"""QALAS discovery with pybids on small fake BIDS datasets (8x8x6 NIfTIs)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qalas_bids.bids import (collect_qalas_runs, format_timing, load_bids_filters,
                             load_qalas_run, make_layout, resolve_timing)
from qalas_bids.qalas.errors import QalasInputError

SHAPE = (8, 8, 6)
AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])
QALAS_META = {"Manufacturer": "Siemens", "FlipAngle": 4, "EchoTrainLength": 128,
              "RepetitionTime": 0.0058, "EchoTime": 0.0023, "ShimSetting": [1, 2, 3],
              "AcquisitionTime": "10:00:00.000000"}


# --------------------------------------------------------------------------- helpers
def write_nifti(path: Path, data: np.ndarray | None = None, shape=SHAPE, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = np.random.default_rng(0).uniform(10, 100, shape).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def write_json(path: Path, meta: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta))
    return path


def _prefix(sub, ses=None, acq=None, run=None):
    parts = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + ([f"acq-{acq}"] if acq else [])
    return "_".join(parts + ([f"run-{run}"] if run else []))


class FakeBids:
    """Tiny BIDS dataset writer."""

    def __init__(self, root: Path):
        self.root = root
        write_json(root / "dataset_description.json", {"Name": "fake", "BIDSVersion": "1.10.0"})

    def folder(self, sub, ses, datatype):
        return self.root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / datatype

    def add_qalas(self, sub="01", ses=None, run=None, acq=None, split=True, n=5, meta=None,
                  first_index=0, data=None, shape=SHAPE, affines=None) -> list[Path]:
        meta = dict(QALAS_META, **(meta or {}))
        folder, stem = self.folder(sub, ses, "anat"), _prefix(sub, ses, acq, run)
        if not split:
            vol = np.random.default_rng(1).uniform(10, 100, shape + (n,)).astype(np.float32)
            path = write_nifti(folder / f"{stem}_QALAS.nii.gz", vol if data is None else data)
            write_json(folder / f"{stem}_QALAS.json", meta)
            return [path]
        paths = []
        for k, i in enumerate(range(first_index, first_index + n)):
            affine = AFFINE if affines is None else affines[k]
            p = write_nifti(folder / f"{stem}_inv-{i}_QALAS.nii.gz",
                            None if data is None else data[..., k], shape=shape, affine=affine)
            write_json(folder / f"{stem}_inv-{i}_QALAS.json", dict(meta, InversionTime=0.1 * k))
            paths.append(p)
        return paths

    def add_tfl(self, sub="01", ses=None, run=None, style="acq", meta=None, acq_prefix="") -> dict:
        folder = self.folder(sub, ses, "fmap")
        meta = dict({"FlipAngle": 80, "ShimSetting": [1, 2, 3],
                     "AcquisitionTime": "09:59:00"}, **(meta or {}))
        out = {}
        for role, part in (("anat", "mag"), ("famp", "phase")):
            if style == "acq":
                stem = _prefix(sub, ses, f"{acq_prefix}{role}", run)
            else:
                stem = _prefix(sub, ses, acq_prefix or None, run) + f"_part-{part}"
            out[role] = write_nifti(folder / f"{stem}_TB1TFL.nii.gz", shape=(6, 6, 4))
            write_json(folder / f"{stem}_TB1TFL.json", meta)
        return out

    def add_tb1map(self, sub="01", ses=None, run=None, meta=None) -> Path:
        folder = self.folder(sub, ses, "fmap")
        stem = _prefix(sub, ses, None, run)
        write_json(folder / f"{stem}_TB1map.json", dict({"Units": "1"}, **(meta or {})))
        return write_nifti(folder / f"{stem}_TB1map.nii.gz", np.ones((6, 6, 4), np.float32),
                           shape=(6, 6, 4))

    def add_afi(self, sub="01", ses=None) -> list[Path]:
        folder = self.folder(sub, ses, "fmap")
        stem = _prefix(sub, ses)
        return [write_nifti(folder / f"{stem}_acq-tr{i}_TB1AFI.nii.gz", shape=(6, 6, 4))
                for i in (1, 2)]


@pytest.fixture
def fake(tmp_path) -> FakeBids:
    return FakeBids(tmp_path / "bids")


# --------------------------------------------------------------------------- layouts
def test_split_volumes_one_run(fake):
    files = fake.add_qalas(ses="01")
    fake.add_tfl(ses="01")
    runs = collect_qalas_runs(fake.root)
    assert len(runs) == 1
    run = runs[0]
    assert run.qalas_files == tuple(str(p) for p in files)  # readout order inv-0..4
    assert run.subject == "01" and run.session == "01" and run.run is None
    assert run.entities == {"subject": "01", "session": "01"}
    assert run.metadata["InversionTimes"] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    assert run.b1 is not None and run.b1.kind == "tfl"
    assert run.timing is not None and run.timing.sources["tf"] == "sidecar:EchoTrainLength"
    data, ref = load_qalas_run(run)
    assert data.shape == SHAPE + (5,) and data.dtype == np.float32
    np.testing.assert_allclose(data[..., 3], nib.load(files[3]).get_fdata(), rtol=1e-6)
    np.testing.assert_allclose(ref.affine, AFFINE)


def test_split_indices_one_to_five_and_unordered_names(fake):
    files = fake.add_qalas(first_index=1)
    fake.add_tb1map()
    (run,) = collect_qalas_runs(fake.root)
    assert [Path(p).name for p in run.qalas_files] == [p.name for p in files]


def test_4d_file(fake):
    rng = np.random.default_rng(3)
    vol = rng.uniform(1, 50, SHAPE + (5,)).astype(np.float32)
    (path,) = fake.add_qalas(split=False, data=vol)
    fake.add_tfl()
    (run,) = collect_qalas_runs(fake.root)
    assert run.is_4d and run.qalas_files == (str(path),)
    data, ref = load_qalas_run(run)
    np.testing.assert_allclose(data, vol)
    assert ref.shape == SHAPE + (5,)


def test_two_sessions_two_runs_give_four_fits(fake):
    for ses, hour in (("01", 9), ("02", 14)):
        for run in (1, 2):
            fake.add_qalas(ses=ses, run=run,
                           meta={"AcquisitionTime": f"{hour + run}:00:00"})
            fake.add_tfl(ses=ses, run=run, meta={"AcquisitionTime": f"{hour + run - 1}:58:00"})
    runs = collect_qalas_runs(fake.root)
    assert [(r.session, r.run) for r in runs] == [("01", "1"), ("01", "2"), ("02", "1"), ("02", "2")]
    for r in runs:
        assert f"ses-{r.session}" in r.b1.files["famp"]
        # the nearest TFL map acquired before the QALAS run is the one with the same run
        assert f"run-{r.run}_TB1TFL" in r.b1.files["famp"], r.b1.reason
    only = collect_qalas_runs(fake.root, session_labels=["ses-02"])
    assert {r.session for r in only} == {"02"}
    filtered = collect_qalas_runs(fake.root, bids_filters={"qalas": {"session": "01", "run": 2}})
    assert [(r.session, r.run) for r in filtered] == [("01", "2")]


def test_participant_labels(fake):
    fake.add_qalas(sub="01"); fake.add_tfl(sub="01")
    fake.add_qalas(sub="02"); fake.add_tfl(sub="02")
    assert [r.subject for r in collect_qalas_runs(fake.root, participant_labels=["sub-02"])] == ["02"]
    with pytest.raises(QalasInputError, match="participants with QALAS: \\['01', '02'\\]"):
        collect_qalas_runs(fake.root, participant_labels=["03"])


def test_bids_filter_file(tmp_path, fake):
    fake.add_qalas(acq="fast"); fake.add_qalas(acq="slow"); fake.add_tb1map()
    path = tmp_path / "filters.json"
    path.write_text(json.dumps({"qalas": {"acquisition": "slow"}}))
    (run,) = collect_qalas_runs(fake.root, bids_filters=path)
    assert run.acquisition == "slow" and run.entities["acquisition"] == "slow"
    path.write_text('{"bold": {}}')
    with pytest.raises(QalasInputError, match="valid keys are \\['qalas', 'b1', 't1w'\\]"):
        load_bids_filters(path)
    path.write_text('{"qalas": {"acq": "slow"}}')
    with pytest.raises(QalasInputError, match="'acquisition', not 'acq'"):
        load_bids_filters(path)
    path.write_text('{"qalas": {"suffix": "T1w"}}')
    with pytest.raises(QalasInputError, match="cannot be filtered"):
        load_bids_filters(path)
    path.write_text('{"qalas": {"session": }')
    with pytest.raises(QalasInputError, match="not valid JSON"):
        load_bids_filters(path)
    assert load_bids_filters_null(tmp_path)


def load_bids_filters_null(tmp_path):
    path = tmp_path / "null.json"
    path.write_text('{"qalas": {"acquisition": null}, "b1": {"run": "*"}}')
    from bids.layout import Query
    filters = load_bids_filters(path)
    return filters["qalas"]["acquisition"] is Query.NONE and filters["b1"]["run"] is Query.ANY


def test_layout_database_never_in_bids_dir(tmp_path, fake):
    fake.add_qalas(); fake.add_tb1map()
    before = sorted(p.name for p in fake.root.rglob("*"))
    work = tmp_path / "work"
    layout = make_layout(fake.root, work_dir=work)
    assert not (work / "bids_db").exists()  # in memory: concurrent runs share no index file
    assert len(collect_qalas_runs(fake.root, layout=layout)) == 1
    assert sorted(p.name for p in fake.root.rglob("*")) == before
    fake.add_qalas(run=2)  # added after indexing: a re-run must see it (no stale index)
    assert len(collect_qalas_runs(fake.root, work_dir=work)) == 2
    with pytest.raises(QalasInputError, match="inside the BIDS dataset"):
        make_layout(fake.root, work_dir=fake.root / "work")


def test_own_derivatives_under_bids_dir_are_not_indexed(fake):
    """Outputs in ``<bids_dir>/derivatives/`` (even QALAS-named, even broken JSON) are skipped."""
    fake.add_qalas(); fake.add_tb1map()
    ours = fake.root / "derivatives" / "qalas-bids"
    copy = ours / "sub-01" / "anat" / "sub-01_inv-1_QALAS.nii.gz"
    write_nifti(copy)
    (ours / "sub-01" / "anat" / "sub-01_inv-1_QALAS.json").write_text("[1, 2]")
    runs = collect_qalas_runs(fake.root)
    assert len(runs) == 1 and all(not Path(f).is_relative_to(ours) for f in runs[0].qalas_files)


@pytest.mark.parametrize("content, words", [
    ("[1, 2]", "an array"), ("42", "a number"), ("3.5", "a number"), ('"text"', "a string"),
    ("null", "null"), ("true", "a boolean"), ('[{"FlipAngle": 4}]', "an array"),
    ("", "is empty"), ("{\"FlipAngle\": 4", "not valid JSON"),
    ("\ufeff{\"FlipAngle\": 4}", "byte-order mark"),
])
def test_malformed_sidecar_named_before_indexing(fake, content, words):
    fake.add_qalas(); fake.add_tb1map()
    bad = sorted(fake.root.rglob("*_QALAS.json"))[0] if list(fake.root.rglob("*_QALAS.json")) \
        else write_json(fake.root / "sub-01" / "anat" / "sub-01_inv-1_QALAS.json", {})
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(QalasInputError, match=words) as exc:
        make_layout(fake.root)
    assert str(bad.relative_to(fake.root)) in str(exc.value)
    assert bad.read_text(encoding="utf-8") == content  # input unchanged


# --------------------------------------------------------------------------- errors
def test_no_qalas(fake):
    fake.add_tb1map()
    with pytest.raises(QalasInputError, match="no QALAS images"):
        collect_qalas_runs(fake.root)


def test_four_volumes_error_names_files(fake):
    fake.add_qalas(n=4); fake.add_tb1map()
    with pytest.raises(QalasInputError, match="found 4 QALAS volumes .*sub-01_inv-0_QALAS.nii.gz"):
        collect_qalas_runs(fake.root)


def test_4d_with_four_volumes(fake):
    fake.add_qalas(split=False, n=4); fake.add_tb1map()
    with pytest.raises(QalasInputError, match="sub-01_QALAS.nii.gz has shape \\(8, 8, 6, 4\\)"):
        collect_qalas_runs(fake.root)


def test_different_grids_error(fake):
    shifted = AFFINE.copy(); shifted[0, 3] = 5.0
    fake.add_qalas(affines=[AFFINE] * 4 + [shifted]); fake.add_tb1map()
    with pytest.raises(QalasInputError, match="different grids: .*inv-4_QALAS"):
        collect_qalas_runs(fake.root)


def test_nan_error(fake):
    data = np.random.default_rng(2).uniform(1, 5, SHAPE + (5,)).astype(np.float32)
    data[2, 2, 2, 1] = np.nan
    fake.add_qalas(data=data); fake.add_tb1map()
    (run,) = collect_qalas_runs(fake.root)
    with pytest.raises(QalasInputError, match="sub-01_inv-1_QALAS.nii.gz contains 1 NaN"):
        load_qalas_run(run)


def test_unreadable_file_error(fake):
    files = fake.add_qalas(); fake.add_tb1map()
    files[2].write_bytes(b"this is not a nifti file")
    with pytest.raises(QalasInputError, match="inv-2_QALAS.nii.gz could not be read"):
        collect_qalas_runs(fake.root)


def test_truncated_data_error(fake):
    files = fake.add_qalas(); fake.add_tb1map()
    (run,) = collect_qalas_runs(fake.root)
    raw = files[0].read_bytes()
    files[0].write_bytes(raw[: len(raw) // 2])
    with pytest.raises(QalasInputError, match="inv-0_QALAS.nii.gz"):
        load_qalas_run(run)


def test_missing_manufacturer_names_vendor_preset(fake):
    fake.add_qalas(meta={"Manufacturer": None}); fake.add_tb1map()
    with pytest.raises(QalasInputError, match="--vendor-preset"):
        collect_qalas_runs(fake.root)
    (run,) = collect_qalas_runs(fake.root, vendor_preset="ge")
    assert run.timing.timing.vendor.startswith("ge")
    (run,) = collect_qalas_runs(fake.root, check_timing=False)
    assert run.timing is None
    prov = resolve_timing(run, vendor_preset="siemens", overrides={"gap": 0.88})
    assert prov.sources["gap"] == "override" and prov.timing.gap == 0.88
    text = format_timing(prov)
    assert "gap = 0.88 s  (override)" in text and "esp = 0.0058 s  (sidecar:RepetitionTime)" in text


@pytest.mark.slow
def test_demo_dataset_is_discovered(tmp_path):
    from qalas_bids.demo.dataset import write_demo_dataset

    root = Path(write_demo_dataset(tmp_path / "demo", runs=(1, 2), resolution=4.0))
    runs = collect_qalas_runs(root)
    assert [(r.session, r.run) for r in runs] == [("01", "1"), ("01", "2")]
    for run in runs:
        assert len(run.qalas_files) in (1, 5)
        assert run.b1 is not None and "IntendedFor" in run.b1.reason
        assert f"run-{run.run}" in run.b1.files["famp"]
        data, ref = load_qalas_run(run)
        assert data.shape[-1] == 5 and data.shape[:3] == ref.shape[:3]


def test_disagreeing_sidecars_are_a_recorded_warning():
    from qalas_bids.bids.discovery import sidecar_disagreements

    metas = [{"FlipAngle": 4, "Manufacturer": "Siemens"}] * 4 + [{"FlipAngle": 5, "Manufacturer": "Siemens"}]
    names = [f"inv-{k}" for k in range(5)]
    (warning,) = sidecar_disagreements(metas, names)
    assert "disagree on FlipAngle" in warning and "inv-4: 5" in warning
    assert sidecar_disagreements(metas[:4], names[:4]) == []
