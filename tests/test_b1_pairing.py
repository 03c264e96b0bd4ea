"""B1+ map discovery and pairing rules on small fake BIDS datasets."""
from __future__ import annotations

import json
import logging

import pytest

from qalas_bids.bids import collect_qalas_runs
from qalas_bids.bids.b1_pairing import intended_for_paths, parse_acquisition_time, tfl_role
from qalas_bids.qalas.errors import QalasInputError
from test_bids_discovery import FakeBids  # tiny dataset writer shared with discovery tests


@pytest.fixture
def fake(tmp_path) -> FakeBids:
    return FakeBids(tmp_path / "bids")


def _set_meta(path, **changes):
    sidecar = path.with_name(path.name.replace(".nii.gz", ".json"))
    meta = json.loads(sidecar.read_text())
    meta.update(changes)
    sidecar.write_text(json.dumps(meta))


# --------------------------------------------------------------------------- naming variants
@pytest.mark.parametrize("style, acq_prefix", [("acq", ""), ("acq", "b1"), ("part", ""), ("part", "b1")])
def test_tfl_naming_variants(fake, style, acq_prefix):
    fake.add_qalas()
    files = fake.add_tfl(style=style, acq_prefix=acq_prefix)
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.kind == "tfl"
    assert run.b1.files == {"anat": str(files["anat"]), "famp": str(files["famp"])}
    assert run.b1.metadata["FlipAngle"] == 80


def test_tfl_role_rules():
    assert tfl_role({"acquisition": "famp"}) == ("famp", None)
    assert tfl_role({"acquisition": "b1anat"}) == ("anat", "b1")
    assert tfl_role({"part": "phase"}) == ("famp", None)
    assert tfl_role({"acquisition": "tfl", "part": "mag"}) == ("anat", "tfl")
    assert tfl_role({"acquisition": "other"}) == (None, "other")


def test_famp_without_anat_is_used(fake):
    fake.add_qalas()
    files = fake.add_tfl()
    for ext in (".nii.gz", ".json"):
        files["anat"].with_name(files["anat"].name.replace(".nii.gz", ext)).unlink()
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.files == {"famp": str(files["famp"])}


def test_anat_without_famp_is_an_error(fake):
    fake.add_qalas()
    files = fake.add_tfl()
    files["famp"].unlink()
    with pytest.raises(QalasInputError, match="acq-anat_TB1TFL.nii.gz: TB1TFL map without its famp image"):
        collect_qalas_runs(fake.root)


def test_unreadable_b1_file(fake):
    fake.add_qalas()
    files = fake.add_tfl()
    files["famp"].write_bytes(b"\x1f\x8b broken")
    with pytest.raises(QalasInputError, match="acq-famp_TB1TFL.nii.gz could not be read"):
        collect_qalas_runs(fake.root)


def test_tb1map(fake):
    fake.add_qalas()
    path = fake.add_tb1map()
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.kind == "tb1map" and run.b1.files == {"map": str(path)}
    assert run.b1.as_dict(fake.root)["Files"] == {"map": "bids:raw:sub-01/fmap/sub-01_TB1map.nii.gz"}


def test_afi_is_found_and_paired(fake):
    fake.add_qalas()
    tr1, tr2 = fake.add_afi()
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.kind == "afi" and run.b1.files == {"tr1": str(tr1), "tr2": str(tr2)}


def test_unsupported_kind_is_a_clear_error(fake):
    fake.add_qalas()
    folder = fake.folder("01", None, "fmap")
    from test_bids_discovery import write_nifti
    write_nifti(folder / "sub-01_echo-1_flip-1_TB1EPI.nii.gz", shape=(6, 6, 4))
    with pytest.raises(QalasInputError, match="TB1EPI.nii.gz.*does not support"):
        collect_qalas_runs(fake.root)
    (run,) = collect_qalas_runs(fake.root, require_b1=False)
    assert run.b1 is None


def test_no_b1_map_lists_the_choices(fake):
    fake.add_qalas()
    with pytest.raises(QalasInputError, match=r"choices: \(1\) add a B1\+ map.*TB1AFI.*\(3\) pass --no-b1"):
        collect_qalas_runs(fake.root)


def test_afi_and_tfl_pair_by_the_same_rules(fake):
    fake.add_qalas(); fake.add_afi(); fake.add_tfl()  # only the TFL has the QALAS ShimSetting
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.kind == "tfl" and "same ShimSetting" in run.b1.reason


def test_afi_half_is_a_problem(fake):
    fake.add_qalas()
    tr1, tr2 = fake.add_afi()
    tr2.unlink()
    with pytest.raises(QalasInputError, match="TB1AFI map without its tr2 image"):
        collect_qalas_runs(fake.root)


def test_dam_pair(fake):
    fake.add_qalas()
    folder = fake.folder("01", None, "fmap")
    from test_bids_discovery import write_json, write_nifti
    paths = []
    for i in (1, 2):
        paths.append(write_nifti(folder / f"sub-01_flip-{i}_TB1DAM.nii.gz", shape=(6, 6, 4)))
        write_json(folder / f"sub-01_flip-{i}_TB1DAM.json", {"FlipAngle": 60 * i})
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.kind == "dam" and run.b1.files == {"flip1": str(paths[0]), "flip2": str(paths[1])}
    assert run.b1.role_metadata["flip2"]["FlipAngle"] == 120


# --------------------------------------------------------------------------- rules
@pytest.mark.parametrize("uri_form", ["bids", "relative"])
def test_intended_for_wins_over_time_and_shim(fake, uri_form):
    qalas = fake.add_qalas(ses="01")
    near = fake.add_tfl(ses="01", run=1, meta={"AcquisitionTime": "09:59:59"})
    far = fake.add_tfl(ses="01", run=2, meta={"AcquisitionTime": "08:00:00", "ShimSetting": [9]})
    rel = qalas[0].relative_to(fake.root).as_posix()
    value = f"bids::{rel}" if uri_form == "bids" else rel.split("/", 1)[1]  # ses-01/anat/...
    _set_meta(far["famp"], IntendedFor=[value])
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.files["famp"] == str(far["famp"])
    assert "IntendedFor" in run.b1.reason
    assert str(near["famp"]) not in run.b1.reason


def test_intended_for_other_run_excludes_candidate(fake):
    q1 = fake.add_qalas(run=1)
    fake.add_qalas(run=2)
    only = fake.add_tfl(run=2)
    _set_meta(only["famp"], IntendedFor=[f"bids::{q1[0].relative_to(fake.root).as_posix()}"])
    runs = collect_qalas_runs(fake.root, require_b1=False)
    assert runs[0].b1.files["famp"] == str(only["famp"])
    assert runs[1].b1 is None  # never borrowed from the map meant for run 1
    with pytest.raises(QalasInputError, match="names another QALAS run|no usable B1"):
        collect_qalas_runs(fake.root)


def test_b0_field_identifier(fake):
    fake.add_qalas(meta={"B0FieldSource": "tfl2"})
    fake.add_tfl(run=1, meta={"B0FieldIdentifier": "tfl1", "AcquisitionTime": "10:00:00"})
    second = fake.add_tfl(run=2, meta={"B0FieldIdentifier": "tfl2", "AcquisitionTime": "07:00:00"})
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.files["famp"] == str(second["famp"]) and "B0FieldIdentifier" in run.b1.reason


def test_shim_setting_fallback(fake, caplog):
    fake.add_qalas(meta={"ShimSetting": [5, 6, 7], "AcquisitionTime": "10:00:00"})
    fake.add_tfl(run=1, meta={"ShimSetting": [1, 2, 3], "AcquisitionTime": "10:00:01"})
    same = fake.add_tfl(run=2, meta={"ShimSetting": [5, 6, 7], "AcquisitionTime": "08:00:00"})
    with caplog.at_level(logging.INFO, logger="qalas_bids.bids"):
        (run,) = collect_qalas_runs(fake.root)
    assert run.b1.files["famp"] == str(same["famp"]) and "ShimSetting" in run.b1.reason
    assert any("B1 for" in rec.message and "ShimSetting" in rec.message for rec in caplog.records)


def test_acquisition_time_fallback(fake):
    fake.add_qalas(meta={"ShimSetting": None, "AcquisitionTime": "10:30:00"})
    fake.add_tfl(run=1, meta={"AcquisitionTime": "09:00:00"})
    near = fake.add_tfl(run=2, meta={"AcquisitionTime": "10:28:00.5"})
    fake.add_tfl(run=3, meta={"AcquisitionTime": "11:00:00"})
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.files["famp"] == str(near["famp"])
    assert "nearest acquisition time (120 s apart)" in run.b1.reason


def test_scans_tsv_times_used_without_sidecar_times(fake):
    fake.add_qalas(ses="01", meta={"AcquisitionTime": None})
    first = fake.add_tfl(ses="01", run=1, meta={"AcquisitionTime": None})
    second = fake.add_tfl(ses="01", run=2, meta={"AcquisitionTime": None})
    rows = [("anat/sub-01_ses-01_inv-0_QALAS.nii.gz", "2024-01-01T10:00:00"),
            (f"fmap/{first['famp'].name}", "2024-01-01T08:00:00"),
            (f"fmap/{second['famp'].name}", "2024-01-01T09:55:00")]
    (fake.root / "sub-01/ses-01/sub-01_ses-01_scans.tsv").write_text(
        "filename\tacq_time\n" + "".join(f"{f}\t{t}\n" for f, t in rows))
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.files["famp"] == str(second["famp"])


def test_ambiguous_pairing_lists_candidates(fake):
    fake.add_qalas(meta={"AcquisitionTime": None})
    fake.add_tfl(run=1, meta={"AcquisitionTime": None})
    fake.add_tfl(run=2, meta={"AcquisitionTime": None})
    with pytest.raises(QalasInputError, match="among 2 candidates.*run-1_TB1TFL.*--bids-filter-file"):
        collect_qalas_runs(fake.root)
    (run,) = collect_qalas_runs(fake.root, bids_filters={"b1": {"run": 2}})
    assert "run-2" in run.b1.files["famp"]


def test_missing_b1_error_or_no_b1(fake, caplog):
    fake.add_qalas()
    with pytest.raises(QalasInputError, match="no B1\\+ map found .*--no-b1"):
        collect_qalas_runs(fake.root)
    with caplog.at_level(logging.WARNING, logger="qalas_bids.bids"):
        (run,) = collect_qalas_runs(fake.root, require_b1=False)
    assert run.b1 is None
    assert any("B1 = 1" in rec.message for rec in caplog.records)


def test_b1_only_in_other_session_names_it(fake):
    fake.add_qalas(ses="01")
    fake.add_qalas(ses="02")
    fake.add_tfl(ses="02")
    with pytest.raises(QalasInputError, match="another session .*ses-02_acq-famp_TB1TFL.*session 02"):
        collect_qalas_runs(fake.root)
    runs = collect_qalas_runs(fake.root, require_b1=False)
    assert [r.b1 is not None for r in runs] == [False, True]


def test_intended_for_across_sessions_is_honoured(fake):
    qalas = fake.add_qalas(ses="01")
    other = fake.add_tfl(ses="02")
    _set_meta(other["famp"], IntendedFor=f"bids::{qalas[2].relative_to(fake.root).as_posix()}")
    (run,) = collect_qalas_runs(fake.root)
    assert run.b1.files["famp"] == str(other["famp"])


# --------------------------------------------------------------------------- helpers
def test_intended_for_paths_forms():
    assert intended_for_paths(["bids::sub-01/anat/a.nii.gz", "ses-1/anat/b.nii", "bids:x:c"], "01") == {
        "sub-01/anat/a.nii.gz", "sub-01/ses-1/anat/b.nii"}
    assert intended_for_paths(None, "01") == set()


def test_parse_acquisition_time():
    assert parse_acquisition_time({"AcquisitionTime": "10:01:02.5"}) == pytest.approx(36062.5)
    assert parse_acquisition_time({"AcquisitionDateTime": "2020-01-01T00:00:10"}) == 10
    assert parse_acquisition_time({"AcquisitionTime": "soon"}) is None
