"""--atlases: TemplateFlow atlases by name (skeleton checks, files from a local home, the
pre-fetch hint when absent), user segmentations (checks, template from the file name) and
the specs they give a run; the prefetch hint of a template with a cohort."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from qalas_bids.bids.atlases import AtlasRequest, check_atlases, parse_atlas, templateflow_atlas_files
from qalas_bids.bids.output_spaces import OutputSpace, parse_output_spaces
from qalas_bids.bids.templates import SHIPPED_DIR, build_local_home, resolve_template_homes
from qalas_bids.qalas.errors import QalasInputError

MNI2 = parse_output_spaces(["MNI152NLin2009cAsym:res-2"])
TPL = "tpl-MNI152NLin2009cAsym"


def _dseg(path: Path, data: np.ndarray | None = None) -> Path:
    data = np.zeros((6, 6, 6), np.int16) if data is None else data
    if data is not None and not data.any():
        data[1:4, 1:4, 1:4] = 3
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def test_templateflow_atlas_names_are_checked_against_the_skeleton():
    ok = check_atlases([parse_atlas("HOCPA:desc-th25"), parse_atlas("Schaefer2018:desc-400Parcels7Networks")], MNI2)
    assert [a.label for a in ok] == ["HOCPAth25", "Schaefer2018400Parcels7Networks"]
    for token, message in (("Nope", "no TemplateFlow atlas of that name.*HOCPA"),
                           ("Schaefer2018", "choose a version, one of .*Schaefer2018:desc-400Parcels7Networks"),
                           ("HOCPA:desc-th99", "no desc-th99; TemplateFlow has .*desc-th25"),
                           ("HCP", "TemplateFlow has it for MNI152NLin6Asym, none of which"),
                           ("HOCPA:res-2", "not desc-<label>"), ("a b", "TemplateFlow atlas name")):
        with pytest.raises(QalasInputError, match=message):
            check_atlases([parse_atlas(token)], MNI2)
    with pytest.raises(QalasInputError, match="needs a template in --output-spaces"):
        check_atlases([parse_atlas("HOCPA:desc-th25")], parse_output_spaces(["T1w"]))


def test_user_segmentations_are_checked(tmp_path):
    good = _dseg(tmp_path / f"{TPL}_res-02_atlas-Mine_dseg.nii.gz")
    tsv = tmp_path / "labels.tsv"
    tsv.write_text("index\tname\n3\tblob\n")
    atlas = check_atlases([parse_atlas(f"Mine={good},{tsv}")], MNI2)[0]
    assert (atlas.template, atlas.tsv, atlas.label) == ("MNI152NLin2009cAsym", str(tsv), "Mine")
    assert parse_atlas(str(atlas)) == parse_atlas(f"Mine={good},{tsv}")  # round trip through Settings
    plain = _dseg(tmp_path / "rois.nii.gz")  # no template in the name: the one requested
    assert check_atlases([parse_atlas(f"R={plain}")], MNI2)[0].template == "MNI152NLin2009cAsym"
    two = parse_output_spaces(["MNI152NLin2009cAsym:res-2", "MNI152NLin6Asym:res-2"])
    with pytest.raises(QalasInputError, match="names no template.*rename"):
        check_atlases([parse_atlas(f"R={plain}")], two)
    other = _dseg(tmp_path / "space-MNI152NLin6Asym_atlas-X_dseg.nii.gz")
    with pytest.raises(QalasInputError, match="add MNI152NLin6Asym to --output-spaces"):
        check_atlases([parse_atlas(f"X={other}")], MNI2)
    prob = tmp_path / "prob.nii.gz"
    nib.save(nib.Nifti1Image(np.full((4, 4, 4), 0.3, np.float32), np.eye(4)), str(prob))
    t1w = _dseg(tmp_path / "sub-01_space-T1w_dseg.nii.gz")
    for token, message in ((f"P={prob}", "integer labels"), (f"M={tmp_path / 'missing.nii.gz'}", "does not exist"),
                           (f"M={good},{tmp_path / 'no.tsv'}", "label table .* does not exist"),
                           (f"T={t1w}", "through --derivatives"), (f"bad-label={good}", "letters and digits"),
                           (f"N={tsv}", "not a readable NIfTI")):
        with pytest.raises(QalasInputError, match=message):
            parse_atlas(token)


@pytest.fixture
def user_home(tmp_path, monkeypatch) -> Path:
    """A user TemplateFlow home holding the shipped template and one atlas at res-1 only."""
    home = build_local_home(tmp_path / "home")
    (home / ".qalas-bids-local-home").unlink()
    folder = home / TPL
    shutil.copyfile(SHIPPED_DIR / TPL / f"{TPL}_res-01_atlas-TissueHemi_dseg.nii.gz",
                    folder / f"{TPL}_res-01_atlas-HOCPA_desc-th25_dseg.nii.gz")
    (folder / f"{TPL}_atlas-HOCPA_desc-th25_dseg.tsv").write_text("index\tname\n1\tA\n2\tB\n")
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    return home


def test_templateflow_atlas_from_the_home_or_a_prefetch_hint(user_home, tmp_path):
    from qalas_bids.bids.space_inputs import SpaceInputs, atlas_specs, requested_atlas_specs

    atlas = check_atlases([parse_atlas("HOCPA:desc-th25")], MNI2)[0]
    dseg, tsv = templateflow_atlas_files(atlas, "MNI152NLin2009cAsym", "2", None, str(user_home))
    assert "res-01_atlas-HOCPA_desc-th25_dseg" in dseg and tsv.endswith("desc-th25_dseg.tsv")  # res-1 serves res-2
    other = check_atlases([parse_atlas("HOCPA:desc-th50")], MNI2)[0]
    with pytest.raises(QalasInputError, match=r"never downloads.*get\('MNI152NLin2009cAsym', resolution=2, "
                                              r"atlas='HOCPA', desc='th50'"):
        templateflow_atlas_files(other, "MNI152NLin2009cAsym", "2", None, str(user_home))
    user = _dseg(tmp_path / f"{TPL}_res-02_atlas-Mine_dseg.nii.gz")
    atlases = check_atlases([atlas, parse_atlas(f"Mine={user}")], MNI2)
    from qalas_bids.bids.space_inputs import TemplateTarget
    from qalas_bids.bids.templates import template_files

    target = TemplateTarget(MNI2[0], template_files("MNI152NLin2009cAsym", "2", None, user_home))
    specs = atlas_specs(SpaceInputs(templates=(target,), atlases=tuple(requested_atlas_specs(atlases, [target]))))
    assert [(s["label"], s["space_key"]) for s in specs] == [
        ("TissueHemi", "MNI152NLin2009cAsym_res-2"), ("HOCPAth25", "MNI152NLin2009cAsym_res-2"),
        ("Mine", "MNI152NLin2009cAsym_res-2")]
    assert "tsv" not in specs[2] and specs[1]["tsv"] == tsv


def test_template_prefetch_hint_names_the_cohort(tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty"))
    with pytest.raises(QalasInputError, match=r"get\('MNIInfant', resolution=1, cohort='1'"):
        resolve_template_homes([OutputSpace("MNIInfant", "1", "1")], tmp_path / "local")


def test_a_prefetched_cohort_template_is_served_from_the_users_home(tmp_path, monkeypatch):
    """TemplateFlow keeps cohort templates in ``tpl-<T>/cohort-<c>/``: a home pre-fetched with
    the hint above (the layout the Docker image bakes for MNIInfant) serves the run."""
    import zipfile

    from qalas_bids.bids.templates import skeleton_zip, template_files

    home = tmp_path / "home"
    zipfile.ZipFile(skeleton_zip()).extractall(home)  # zero-byte placeholders, as a fresh home
    fetched = sorted((home / "tpl-MNIInfant" / "cohort-1").glob("*_res-1_*.nii.gz"))
    assert fetched and not list((home / "tpl-MNIInfant").glob("*.nii.gz"))
    for path in fetched:
        _dseg(path, np.ones((6, 6, 6), np.int16))
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    homes = resolve_template_homes([OutputSpace("MNIInfant", "1", "1")], tmp_path / "local")
    assert homes == {"MNIInfant": home} and not (tmp_path / "local").exists()
    files = template_files("MNIInfant", "1", "1", home)
    assert "/cohort-1/" in files.brain_mask and files.brain_t1w.endswith("_cohort-1_res-1_T1w.nii.gz")
    with pytest.raises(QalasInputError, match=r"res-2 cohort-1: no .*get\('MNIInfant', resolution=2, cohort='1'"):
        template_files("MNIInfant", "2", "1", home)  # not fetched: exit 2 with the hint


def test_a_users_home_without_the_shipped_resolution_falls_back_to_the_shipped_files(tmp_path, monkeypatch):
    """An fMRIPrep TemplateFlow home with MNI152NLin2009cAsym res-1 only: res-1 comes from it,
    res-2 from the shipped files (said in a note), not an exit 2."""
    import zipfile

    from qalas_bids.bids.templates import reference_files, skeleton_zip

    home = tmp_path / "home"
    zipfile.ZipFile(skeleton_zip()).extractall(home)
    for src in (SHIPPED_DIR / TPL).glob("*_res-01_desc-brain_*.nii.gz"):
        shutil.copyfile(src, home / TPL / src.name)
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    res1, res2 = parse_output_spaces(["MNI152NLin2009cAsym:res-1", "MNI152NLin2009cAsym:res-2"])
    local = tmp_path / "local"
    homes = resolve_template_homes([res1, res2], local)
    assert homes == {"MNI152NLin2009cAsym": home}
    files, note = reference_files(res1, homes, local)
    assert files.brain_mask.startswith(str(home)) and note is None
    files, note = reference_files(res2, homes, local)
    assert files.brain_mask.startswith(str(local)) and files.brain_mask.endswith("_res-02_desc-brain_mask.nii.gz")
    assert files.home == str(home) and "lacks res-2 files" in note and "ships" in note


def test_cli_exits_2_on_a_bad_atlas_before_any_work(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    proc = subprocess.run([sys.executable, "-m", "qalas_bids.cli.run", str(bids), str(tmp_path / "out"),
                           "participant", "--output-spaces", "MNI152NLin2009cAsym:res-2", "--atlases", "Schaefer2018"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--atlases: " in proc.stderr and "choose a version" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_atlas_request_text():
    assert str(AtlasRequest("HOCPAth25", name="HOCPA", desc="th25")) == "HOCPA:desc-th25"


# --------------------------------------------------------------------------- qalas-bids-prefetch-templates
def test_prefetch_queries_cover_what_a_run_reads():
    from qalas_bids.bids.output_spaces import _template_resolutions
    from qalas_bids.cli.prefetch_templates import template_queries

    infant = template_queries(OutputSpace("MNIInfant", None, "1"))
    resolutions = sorted({q["resolution"] for q in infant if "resolution" in q})
    assert resolutions == sorted(int(r) for r in _template_resolutions("MNIInfant", "1")) and resolutions
    assert all(q["cohort"] == "1" and q["template"] == "MNIInfant" for q in infant)
    assert {(q["desc"], q["suffix"]) for q in infant if "desc" in q} == {("brain", "mask"), ("brain", "T1w"), (None, "T1w")}
    atlas = check_atlases([parse_atlas("HOCPA:desc-th25")], MNI2)
    queries = template_queries(MNI2[0], atlas)
    assert {"template": "MNI152NLin2009cAsym", "resolution": 2, "extension": ".nii.gz", "atlas": "HOCPA",
            "desc": "th25", "suffix": "dseg"} in queries
    assert any(q.get("extension") == ".tsv" and q.get("atlas") == "HOCPA" for q in queries)


def test_prefetch_local_home_is_used_as_the_users_home(tmp_path, monkeypatch):
    from qalas_bids.cli.prefetch_templates import main

    home = tmp_path / "tf"
    assert main(["--local", "--home", str(home)]) == 0
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(home))
    assert resolve_template_homes(["MNI152NLin2009cAsym"], tmp_path / "work-home") == {"MNI152NLin2009cAsym": home}
    assert not (tmp_path / "work-home").exists()  # served from the baked home, not rebuilt
    assert main(["Nope"]) == 2 and main([]) == 2
