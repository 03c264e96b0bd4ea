"""The report's registration overlays for ``--output-spaces`` outputs: the space outputs are
found, each registration target is found again (SpatialReference through DatasetLinks, the
template's brain T1w), and the figure draws the target's edges, not the moving image's."""
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from matplotlib.image import imread

from qalas_bids.bids.derivatives import derivative_path, resolve_bids_uri, write_dataset_description
from qalas_bids.bids.templates import SHIPPED_DIR
from qalas_bids.reports import figures
from qalas_bids.reports.collect import SpaceDerivatives, find_runs
from qalas_bids.reports.participant import make_participant_report
from qalas_bids.reports.targets import registration_target
from qalas_bids.testing.fake_derivatives import write_derivative, write_fake_derivatives

TPL = SHIPPED_DIR / "tpl-MNI152NLin2009cAsym"
TPL_T1W = TPL / "tpl-MNI152NLin2009cAsym_res-02_desc-brain_T1w.nii.gz"
TPL_MASK = TPL / "tpl-MNI152NLin2009cAsym_res-02_desc-brain_mask.nii.gz"
RAW_T1W = "sub-01/anat/sub-01_T1w.nii.gz"


def write_space_outputs(out: Path, ents: dict, space: str, image: nib.Nifti1Image, mask: np.ndarray,
                        extra: dict, res: str | None = None) -> None:
    """T1 map, synthetic T1w, brain mask and transform sidecar of one space (as the app names them)."""
    to = space
    xfm = derivative_path(ents, "xfm", extension=".h5" if res else ".txt", from_="QALAS", to=to, mode="image")
    (out / xfm).parent.mkdir(parents=True, exist_ok=True)
    (out / xfm).write_text("#Insight Transform File V1.0\n")
    (out / xfm.rsplit(".", 1)[0]).with_suffix(".json").write_text(json.dumps(
        {"Description": f"QALAS -> {to}: test", "Registration": {"Seconds": 1.5, "Metric": -0.61}}))
    meta = {"Transforms": [f"bids::{xfm}"], **extra}
    data = np.asarray(image.dataobj, np.float32)
    for suffix, desc, values in (("T1map", None, data / max(data.max(), 1e-6) * 2),
                                 ("T1w", "synthetic", data), ("mask", "brain", mask)):
        write_derivative(out, derivative_path(ents, suffix, desc=desc, space=space, res=res), values, image, meta)


@pytest.fixture(scope="module")
def spaces_dir(tmp_path_factory):
    """Fake derivatives (2 mm brain) with space-T1w outputs (target: a raw T1w) and
    space-MNI152NLin2009cAsym_res-2 outputs (target: the shipped template)."""
    root = tmp_path_factory.mktemp("spaces")
    out, raw = root / "out", root / "rawdata"  # DatasetLinks says root/raw (not there)
    made = write_fake_derivatives(out, "01")
    ents = made["entities"]
    brain = made["brain"]
    t1w = nib.Nifti1Image(np.where(brain.brain_mask, 1.5 - brain.t1 / 4, 0).astype(np.float32), brain.affine)
    (raw / "sub-01/anat").mkdir(parents=True)
    nib.save(t1w, str(raw / RAW_T1W))
    write_space_outputs(out, ents, "T1w", t1w, brain.brain_mask.astype(np.uint8),
                        {"SpatialReference": f"bids:raw:{RAW_T1W}"})
    tpl = nib.load(TPL_T1W)
    write_space_outputs(out, ents, "MNI152NLin2009cAsym", tpl, np.asarray(nib.load(TPL_MASK).dataobj),
                        {"Resolution": "Template MNI152NLin2009cAsym (2.0x2.0x2.0 mm^3)"}, res="2")
    return out, raw


def test_space_outputs_are_collected_apart_from_the_qalas_maps(spaces_dir):
    out, _ = spaces_dir
    (run,) = find_runs(out, "01")
    assert sorted(run.spaces) == ["space-MNI152NLin2009cAsym_res-2", "space-T1w"]
    tpl = run.spaces["space-MNI152NLin2009cAsym_res-2"]
    assert (tpl.space, tpl.res, tpl.cohort) == ("MNI152NLin2009cAsym", "2", None)
    for space in run.spaces.values():
        assert space.t1map.name.endswith(f"{space.label}_T1map.nii.gz")
        assert "desc-synthetic" in space.synthetic_t1w.name and "desc-brain" in space.mask.name
    assert "space-" not in run.maps["T1map"].name  # the QALAS-grid map is still the run's map
    cohort = SpaceDerivatives("MNIInfant", "1", "1")
    assert cohort.label == "space-MNIInfant_cohort-1_res-1"  # the file-name entity order


def test_bids_uris_resolve_through_dataset_links(tmp_path):
    links = {"raw": str(tmp_path / "raw"), "smriprep": (tmp_path / "smri prep").as_uri(),
             "remote": "https://example.org/ds"}
    assert resolve_bids_uri("bids:raw:sub-01/anat/x.nii.gz", links) == tmp_path / "raw/sub-01/anat/x.nii.gz"
    assert resolve_bids_uri("bids:smriprep:sub-01/a.nii.gz", links) == tmp_path / "smri prep/sub-01/a.nii.gz"
    for uri in ("bids:remote:a.nii.gz", "bids:other:a.nii.gz", "sub-01/a.nii.gz", "bids::a.nii.gz"):
        assert resolve_bids_uri(uri, links) is None, uri
    # the output folder links each --derivatives folder (what bids:<NAME>: URIs refer to) and
    # keeps the names of an earlier invocation
    out, raw = tmp_path / "out", tmp_path / "raw"
    raw.mkdir()
    out.mkdir()
    write_dataset_description(out, raw, {"smriprep": tmp_path / "smriprep"})
    write_dataset_description(out, raw, {"fmriprep": tmp_path / "fmriprep"})
    linked = json.loads((out / "dataset_description.json").read_text())["DatasetLinks"]
    assert linked == {"raw": raw.as_uri(), "smriprep": (tmp_path / "smriprep").as_uri(),
                      "fmriprep": (tmp_path / "fmriprep").as_uri()}


def test_registration_targets(spaces_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty-home"))  # no user templates
    out, raw = spaces_dir
    (run,) = find_runs(out, "01")
    t1w, tpl = run.spaces["space-T1w"], run.spaces["space-MNI152NLin2009cAsym_res-2"]
    found = registration_target(t1w, {"raw": str(raw)})
    assert found.path == raw / RAW_T1W and RAW_T1W in found.name
    lost = registration_target(t1w, {"raw": str(tmp_path / "moved-away")})
    assert lost.path is None and "not reachable" in lost.reason and f"bids:raw:{RAW_T1W}" in lost.reason
    assert registration_target(tpl, {}).path == TPL_T1W  # the shipped template, no home needed
    other = registration_target(SpaceDerivatives("MNI152NLin6Asym", "2"), {})
    assert other.path is None and "TemplateFlow home" in other.reason


def red_pixels(png: Path) -> int:
    rgb = imread(str(png))[..., :3]
    return int(((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)).sum())


def test_overlay_draws_the_targets_edges(tmp_path):
    """Red pixels come from the target: an empty target draws none, the template draws many,
    and a target shifted by 20 mm draws them elsewhere."""
    tpl, mask = nib.load(TPL_T1W), nib.load(TPL_MASK)
    empty = nib.Nifti1Image(np.zeros(tpl.shape, np.float32), tpl.affine)
    shifted = nib.Nifti1Image(np.asarray(tpl.dataobj, np.float32), nib.affines.from_matvec(
        np.eye(3), [0, 20, 0]) @ tpl.affine)
    drawn = {name: figures.registration_overlay(tmp_path / f"{name}.png", tpl, target, mask)
             for name, target in (("empty", empty), ("same", tpl), ("shifted", shifted))}
    assert red_pixels(drawn["empty"]) == 0
    assert red_pixels(drawn["same"]) > 2000
    same, moved = (imread(str(drawn[k]))[..., :3] for k in ("same", "shifted"))
    assert same.shape == moved.shape
    red = lambda rgb: (rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.35) & (rgb[..., 2] < 0.35)  # noqa: E731
    assert (red(same) & red(moved)).sum() < 0.5 * red(same).sum()


def test_report_shows_one_overlay_per_space(spaces_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tmp_path / "empty-home"))
    out, raw = spaces_dir
    page = make_participant_report(out, "01", bids_dir=raw).read_text()
    sources = re.findall(r'<img src="([^"]*desc-registration[^"]*)"', page)
    assert sorted(Path(s).name for s in sources) == [
        "sub-01_space-MNI152NLin2009cAsym_res-2_desc-registration_T1w.png",
        "sub-01_space-T1w_desc-registration_T1w.png"]
    assert all(red_pixels(out / s) > 500 for s in sources)
    assert "Output spaces (registration check)" in page and "final metric -0.61" in page
    # without the raw dataset (the output folder's DatasetLinks point to a raw folder that is
    # not there): a sentence for the T1w, the template overlay still drawn
    page = make_participant_report(out, "01").read_text()
    assert "No overlay: its SpatialReference bids:raw:" in page
    assert len(re.findall(r'<img src="[^"]*desc-registration', page)) == 1
