"""Synthetic contrasts on the digital brain (ground-truth maps, 2 mm)."""
import math

import numpy as np
import pytest

from qalas_bids.qalas.phantom import digital_brain as phantom_module
from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.phantom.digital_brain import make_digital_brain
from qalas_bids.qalas.tissue.synthetic import (
    CONTRASTS,
    inversion_recovery_mz,
    null_inversion_times,
    synthesize_all,
)


@pytest.fixture(scope="module")
def brain():
    return make_digital_brain(resolution=2.0, snr=math.inf)


@pytest.fixture(scope="module")
def flat_brain():
    """Digital brain without the smooth 3 % parameter variation (one T1 per pure tissue)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(phantom_module, "SPATIAL_VARIATION", 0.0)
        return make_digital_brain(resolution=2.0, snr=math.inf)


@pytest.fixture(scope="module")
def images(brain):
    return synthesize_all(brain.t1, brain.t2, brain.pd, brain.ie, brain.brain_mask)


def tissue_means(brain, image, min_fraction=0.95):
    return {t: float(image[brain.tissue_mask(t, min_fraction)].mean()) for t in ("WM", "GM", "CSF")}


def test_all_contrasts_written_with_metadata(brain, images):
    assert list(images) == list(CONTRASTS)
    for name, (image, meta) in images.items():
        assert image.dtype == np.float32 and image.shape == brain.t1.shape
        assert np.isfinite(image).all()
        assert not image[~brain.brain_mask].any(), f"{name} is not 0 outside the mask"
        assert {"RepetitionTime", "EchoTime", "Equation", "IntensityScale"} <= set(meta)
        if name not in ("T1w", "T2w", "PDw"):
            assert "InversionTime" in meta
        # integer-friendly range: the brightest voxels are in the hundreds to low thousands
        assert 100 < np.percentile(np.abs(image[brain.brain_mask]), 99.5) < 3000, name


def test_t1w_and_t2w_tissue_order(brain, images):
    t1w = tissue_means(brain, images["T1w"][0])
    t2w = tissue_means(brain, images["T2w"][0])
    assert t1w["WM"] > t1w["GM"] > t1w["CSF"]
    assert t2w["CSF"] > t2w["GM"] > t2w["WM"]


def test_flair_nulls_csf_on_digital_brain(brain):
    # Standard digital brain: T1 varies smoothly by 3 % inside pure CSF, which no single TI
    # can null (even TI from the true 4.2 s leaves ~4.5-5 % of WM); hence 8 % here and the
    # 5 % criterion on the flat brain below.
    flair, meta = synthesize_all(brain.t1, brain.t2, brain.pd, brain.ie, brain.brain_mask,
                                 contrasts=["FLAIR"], ie_aware=False)["FLAIR"]
    means = tissue_means(brain, flair)
    assert means["CSF"] < 0.08 * means["WM"], means
    csf_t1 = meta["NullTissues"]["CSF"]["T1"]
    assert abs(csf_t1 - 4.2) < 0.15, csf_t1  # robust statistic lands near pure CSF
    expected_ti = csf_t1 * math.log(2 / (1 + math.exp(-meta["RepetitionTime"] / csf_t1)))
    assert meta["InversionTime"] == pytest.approx(expected_ti, rel=1e-9)


@pytest.mark.parametrize("ie_aware", [True, False])
def test_flair_nulls_csf_ie_aware(flat_brain, ie_aware):
    b = flat_brain
    flair, meta = synthesize_all(b.t1, b.t2, b.pd, b.ie, b.brain_mask,
                                 contrasts=["FLAIR"], ie_aware=ie_aware)["FLAIR"]
    means = tissue_means(b, flair)
    assert means["CSF"] < 0.05 * means["WM"], means
    assert meta["IEAware"] is ie_aware
    if ie_aware:
        assert meta["NullTissues"]["CSF"]["IE"] == pytest.approx(0.98, abs=0.01)


def test_ie_aware_matters_when_ie_is_not_one(flat_brain):
    """With IE = 0.98 in CSF, nulling with IE = 1 leaves more CSF signal than IE-aware."""
    b = flat_brain
    kwargs = dict(contrasts=["FLAIR"], null_mode="constant")
    aware = synthesize_all(b.t1, b.t2, b.pd, b.ie, b.brain_mask, ie_aware=True,
                           params={"FLAIR": {"InversionTime": 2.4453}}, **kwargs)["FLAIR"][0]
    naive = synthesize_all(b.t1, b.t2, b.pd, b.ie, b.brain_mask, ie_aware=False,
                           params={"FLAIR": {"InversionTime": 2.4453}}, **kwargs)["FLAIR"][0]
    assert not np.allclose(aware, naive)


def test_dir_nulls_csf_and_wm(brain):
    image, meta = synthesize_all(brain.t1, brain.t2, brain.pd, brain.ie, brain.brain_mask,
                                 contrasts=["DIR"])["DIR"]
    means = tissue_means(brain, image)
    assert means["CSF"] < 0.2 * means["GM"], means
    assert means["WM"] < 0.2 * means["GM"], means
    ti1, ti2 = meta["InversionTime"]
    assert meta["RepetitionTime"] > ti1 > ti2 > 0
    assert set(meta["NullTissues"]) == {"CSF", "WM"}


def test_dir_null_times_solve_both_nulls():
    ti1, ti2 = null_inversion_times(11.0, [4.2, 0.85])
    for t1 in (4.2, 0.85):
        assert abs(inversion_recovery_mz(t1, 11.0, [ti1, ti2])) < 1e-6
    # Textbook closed form with IE = 1 (shared physics notes, spacing = TI1 - TI2).
    t1 = 1.35
    e = lambda t: math.exp(-t / t1)  # noqa: E731
    closed = 1 - 2 * e(ti2) + 2 * e(ti1) - e(11.0)
    assert inversion_recovery_mz(t1, 11.0, [ti1, ti2]) == pytest.approx(closed, abs=1e-12)


def test_psir_sign(brain, images):
    psir = tissue_means(brain, images["PSIR"][0])
    assert psir["WM"] > 0 > psir["CSF"]
    assert psir["GM"] < psir["WM"]


def test_constant_null_mode_uses_textbook_values(brain):
    _, meta = synthesize_all(brain.t1, brain.t2, brain.pd, brain.ie, brain.brain_mask,
                             contrasts=["FLAIR"], null_mode="constant", ie_aware=False)["FLAIR"]
    assert meta["NullTissues"]["CSF"]["T1"] == 4.2
    assert meta["InversionTime"] == pytest.approx(4.2 * math.log(2 / (1 + math.exp(-9 / 4.2))))


def test_user_params_override_presets(brain):
    params = {"T2w": {"EchoTime": 0.12, "RepetitionTime": 6.0}, "FLAIR": {"InversionTime": 2.5}}
    out = synthesize_all(brain.t1, brain.t2, brain.pd, contrasts=["T2w", "FLAIR"], params=params)
    assert out["T2w"][1]["EchoTime"] == 0.12 and out["T2w"][1]["RepetitionTime"] == 6.0
    assert out["FLAIR"][1]["InversionTime"] == 2.5
    assert out["FLAIR"][1]["IEAware"] is False  # no IE map given


@pytest.mark.parametrize("kwargs, match", [
    ({"contrasts": ["T3w"]}, "unknown synthetic contrast"),
    ({"params": {"FLAIR": {"TE": 0.1}}}, "unknown key"),
    ({"params": {"T1w": {"EchoTime": -1}}}, "EchoTime"),
    ({"params": {"FLAIR": {"InversionTime": 20.0}}}, "must end before RepetitionTime"),
    ({"params": {"DIR": {"InversionTime": 3.0}}}, r"\[TI1, TI2\]"),
    ({"null_mode": "guess"}, "null_mode"),
])
def test_bad_parameters_raise_clear_errors(brain, kwargs, match):
    with pytest.raises(QalasInputError, match=match):
        synthesize_all(brain.t1, brain.t2, brain.pd, brain.ie, brain.brain_mask, **kwargs)


def test_nan_in_mask_is_rejected(brain):
    t1 = brain.t1.copy()
    t1[brain.brain_mask.nonzero()[0][0], brain.brain_mask.nonzero()[1][0], brain.brain_mask.nonzero()[2][0]] = np.nan
    with pytest.raises(QalasInputError, match="NaN"):
        synthesize_all(t1, brain.t2, brain.pd, mask=brain.brain_mask, contrasts=["T1w"])


def test_nipype_interface_writes_files_in_order(tmp_path, brain):
    import nibabel as nib

    from qalas_bids.interfaces.synthetic import SyntheticContrasts

    crop = (slice(30, 50), slice(40, 60), slice(40, 50))
    paths = {}
    for name in ("t1", "t2", "pd", "ie"):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.Nifti1Image(getattr(brain, name)[crop].astype("float32"), brain.affine).to_filename(paths[name])
    node = SyntheticContrasts(**paths, contrasts=["T1w", "FLAIR"], params={"FLAIR": {"InversionTime": 2.4}},
                              sources=["bids:raw:sub-01/anat/sub-01_inv-0_QALAS.nii.gz"])
    (tmp_path / "node").mkdir()
    res = node.run(cwd=str(tmp_path / "node"))
    assert res.outputs.out_names == ["T1w", "FLAIR"]
    assert [m["InversionTime"] for m in res.outputs.out_metadata[1:]] == [2.4]
    assert all(m["Sources"] for m in res.outputs.out_metadata)
    img = nib.load(res.outputs.out_files[1])
    assert img.shape == brain.t1[crop].shape and np.allclose(img.affine, brain.affine)
    assert res.outputs.out_files[0].startswith(str(tmp_path / "node"))


def test_dir_solver_with_implausible_t1_never_raises_a_raw_valueerror():
    """WM T1 of 1.5 ms (wrong maps) used to start the solver outside its bounds."""
    from qalas_bids.qalas.errors import QalasInputError
    from qalas_bids.qalas.tissue.synthetic import null_inversion_times

    for t1s in ([4.0, 0.0015], [0.0005, 0.0002], [50.0, 0.85]):
        try:
            ti1, ti2 = null_inversion_times(11.0, t1s)
        except QalasInputError:
            continue
        assert 0 < ti2 < ti1 < 11.0
