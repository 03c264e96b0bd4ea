"""Issue 13: the realistic digital head (scalp, fat, skull, sinuses, eyes, partial volume).

Tolerances (SNR 60, 2 mm, Siemens timing):
* brain mask from the fitted maps: Dice >= 0.97 with the true intracranial mask;
* tissue classes from the maps: >= 90 % agreement with the true labels inside the brain;
* pure-CSF (fraction > 0.95) median T1 within 5 % of the truth on the full head (pretrained
  here; +2.0 to +4.3 % in the four modes, docs/methods.md) and within 8 % on the 14-slice
  ventricle slab of the per-mode test (+2 to +7 % measured: the per-voxel CSF estimate
  depends on the start of the refinement, see docs), < 2 % of it at the T1 bound;
* WM/GM (fraction > 0.9) median |bias| < 0.5 % for T1 and T2, NRMSE <= 1.1 x the CRLB at
  the true parameters (RMS over the voxels);
* the CSF and WM T1 used for the synthetic nulls within 5 % / 3 % of the truth;
* synthetic nulls (medians over pure tissue): FLAIR CSF/WM < 0.1, DIR CSF/GM < 0.2 and
  WM/GM < 0.2, and without the fluid shrinkage FLAIR CSF/WM is worse (per-voxel CSF T1
  has a 25 % CRLB at SNR 60, so per-voxel synthesis cannot null it).
"""
from __future__ import annotations

import numpy as np
import pytest

from qalas_bids.qalas.physics.bounds import T1_RANGE_S, at_bound
from qalas_bids.qalas.tissue.brain_mask import brain_mask_from_maps
from qalas_bids.qalas.fitting.fit_volume import fit_volume
from qalas_bids.qalas.phantom.head_anatomy import HEAD_LABELS
from qalas_bids.qalas.tissue.masking import compute_head_mask
from qalas_bids.qalas.phantom.digital_brain import TISSUE_LABELS, make_digital_brain
from qalas_bids.qalas.tissue.synthetic import synthesize_all
from qalas_bids.qalas.tissue.classes import classify_tissues
from qalas_bids.qalas.fitting.uncertainty import crlb_std


@pytest.fixture(scope="module")
def head():
    return make_digital_brain(resolution=2.0, snr=60, anatomy="head")


def _slab(h, z_lo: float = -2.0, z_hi: float = 26.0) -> tuple[slice, ...]:
    """Axial slab (world z in mm) through the ventricles: brain, CSF, skull, scalp."""
    z = h.affine[2, 3] + h.affine[2, 2] * np.arange(h.shape[2])
    keep = np.nonzero((z >= z_lo) & (z <= z_hi))[0]
    return (slice(None), slice(None), slice(int(keep[0]), int(keep[-1]) + 1))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_head_has_every_tissue_with_partial_volume(head):
    present = set(np.unique(head.labels).tolist())
    assert {1, 2, 3} | set(HEAD_LABELS.values()) <= present
    for name in ("Scalp", "Fat", "Vitreous", "Bone", "Air", "CSF"):
        frac = head.tissue_fractions[name]
        assert ((frac > 0.05) & (frac < 0.95)).any(), f"{name} has no partial-volume voxels"
    # eyes and sinuses are outside the intracranial volume, separated by bone
    for name in ("Vitreous", "Air"):
        assert not (head.brain_mask & (head.labels == HEAD_LABELS[name])).any()
    # skull and air carry no signal; fat is bright with a short T1
    bone = head.tissue_fractions["Bone"] > 0.99
    wm_level = head.noiseless[head.tissue_fractions["WM"] > 0.9].mean()
    assert np.all(head.noiseless[bone] < 0.03 * wm_level)  # at most 1 % of fat partial volume
    fat = head.tissue_fractions["Fat"] > 0.9
    assert np.median(head.t1[fat]) == pytest.approx(0.38, rel=0.05)


def test_brain_only_phantom_is_still_available():
    brain = make_digital_brain(resolution=4.0, snr=30)
    assert set(brain.tissue_fractions) == set(TISSUE_LABELS)
    assert brain.anatomy == "brain"


@pytest.fixture(scope="module")
def pretrained_fit(head):
    mask = compute_head_mask(head.signals)
    fit = fit_volume(head.signals, head.b1, mask, head.timing, method="pretrained",
                     ssl_options={"num_threads": 2}, progress=False)
    return mask, fit


def test_brain_mask_and_tissue_classes_from_the_maps(head, pretrained_fit):
    mask, fit = pretrained_fit
    assert _dice(mask, head.head_mask) > 0.95  # the head mask keeps scalp, skull and eyes
    brain, info = brain_mask_from_maps(fit.maps["t1"], fit.maps["pd"], mask, 2.0)
    assert _dice(brain, head.brain_mask) >= 0.97, info
    assert not (brain & (head.labels == HEAD_LABELS["Vitreous"])).any()
    classes = classify_tissues(fit.maps["t1"], brain)
    inside = head.brain_mask & brain
    agreement = float(np.mean(classes.labels[inside] == head.labels[inside]))
    assert agreement >= 0.90, agreement




@pytest.mark.parametrize("method", ["pretrained", "scan-specific", "fine-tune", "dictionary"])
def test_every_fit_mode_on_the_realistic_head(head, method):
    sl = _slab(head)
    signals, b1 = head.signals[sl], head.b1[sl]
    mask = compute_head_mask(signals)
    options = {"ssl_options": {"num_threads": 2}} if method != "dictionary" else {}
    fit = fit_volume(signals, b1, mask, head.timing, method=method, progress=False, **options)
    m = fit.maps
    fractions = {k: v[sl] for k, v in head.tissue_fractions.items()}
    pure_csf = (fractions["CSF"] > 0.95) & head.brain_mask[sl]
    csf_t1 = m["t1"][pure_csf]
    assert np.median(csf_t1) == pytest.approx(np.median(head.t1[sl][pure_csf]), rel=0.08)
    assert np.mean(csf_t1 >= T1_RANGE_S[1] * 0.99) < 0.02
    for tissue in ("WM", "GM"):
        sel = fractions[tissue] > 0.9
        sub = {k: getattr(head, k)[sl] for k in ("t1", "t2", "pd", "ie", "b1")}
        for name in ("t1", "t2"):
            rel = m[name][sel] / sub[name][sel] - 1
            assert abs(np.median(rel)) < 0.005, (method, tissue, name, np.median(rel))
            crlb = crlb_std(sub["t1"][sel], sub["t2"][sel], sub["pd"][sel], sub["ie"][sel], sub["b1"][sel],
                            head.timing, fit.info["noise_sigma"], device="cpu")
            bound = float(np.sqrt(np.mean((crlb[name] / sub[name][sel]) ** 2)))
            assert np.sqrt(np.mean(rel ** 2)) <= 1.1 * bound, (method, tissue, name)

    brain, _ = brain_mask_from_maps(m["t1"], m["pd"], mask, 2.0)
    crlb = {k: m[f"crlb_{k}"] for k in ("t1", "t2", "ie")}
    images = synthesize_all(m["t1"], m["t2"], m["pd"], m["ie"], mask=mask, brain_mask=brain,
                            crlb=crlb, residual=m["residual"], contrasts=["FLAIR", "DIR"])
    nulls = images["FLAIR"][1]["NullTissues"]["CSF"]
    assert nulls["T1"] == pytest.approx(np.median(head.t1[sl][pure_csf]), rel=0.05)
    assert nulls["VoxelsUsed"] > 0 and "ExcludedInBrain" in nulls
    wm = fractions["WM"] > 0.9
    gm = fractions["GM"] > 0.9
    assert images["DIR"][1]["NullTissues"]["WM"]["T1"] == pytest.approx(np.median(head.t1[sl][wm]), rel=0.03)
    flair, dir_ = images["FLAIR"][0], images["DIR"][0]
    ratio = np.median(flair[pure_csf]) / np.median(flair[wm])
    assert ratio < 0.1, ratio
    assert np.median(dir_[pure_csf]) / np.median(dir_[gm]) < 0.2
    assert np.median(dir_[wm]) / np.median(dir_[gm]) < 0.2
    assert "BrainFluid" in images["FLAIR"][1]["FluidShrinkage"]["Groups"]
    unfiltered = synthesize_all(m["t1"], m["t2"], m["pd"], m["ie"], mask=mask, brain_mask=brain,
                                crlb=crlb, residual=m["residual"], contrasts=["FLAIR"],
                                fluid_shrinkage=False)["FLAIR"][0]
    assert ratio < np.median(unfiltered[pure_csf]) / np.median(unfiltered[wm])


def test_at_bound_flags_and_reliable_voxels():
    from qalas_bids.qalas.tissue.classes import reliable_voxels

    t1 = np.array([0.8, 10.0, 4.0, 4.0, 9.99])
    t2 = np.array([0.07, 1.0, 5.0, 1.0, 1.0])
    ie = np.array([0.9, 0.9, 0.9, 0.5, 0.9])
    flags = at_bound(t1, t2, ie)
    assert flags["T1"].tolist() == [False, True, False, False, True]
    assert flags["T2"].tolist() == [False, False, True, False, False]
    assert flags["IE"].tolist() == [False, False, False, True, False]
    residual = np.array([0.01, 0.01, 0.01, 0.01, 0.5])
    keep, censored, counts = reliable_voxels(np.ones(5, bool), t1, t2, ie, residual=residual)
    # T2 at its bound keeps the voxel (CSF T2 is barely determined); T1 at 10 s is censored
    assert keep.tolist() == [True, False, True, False, False]
    assert censored.tolist() == [False, True, False, False, False]
    assert counts["HighResidual"] == 1 and counts["AtBound"] == 3


def test_receive_inhomogeneity_moves_pd_only():
    """A 20 % receive-coil gradient scales all contrasts alike: T1/T2 stay unbiased, the brain
    mask still separates, and the fitted PD follows pd * receive."""
    head = make_digital_brain(resolution=2.0, snr=60, anatomy="head", receive_amplitude=0.2)
    sl = _slab(head)
    mask = compute_head_mask(head.signals[sl])
    fit = fit_volume(head.signals[sl], head.b1[sl], mask, head.timing, method="pretrained",
                     ssl_options={"num_threads": 2}, progress=False)
    brain, _ = brain_mask_from_maps(fit.maps["t1"], fit.maps["pd"], mask, 2.0)
    assert _dice(brain, head.brain_mask[sl]) >= 0.97
    wm = head.tissue_fractions["WM"][sl] > 0.9
    for name in ("t1", "t2"):
        assert abs(np.median(fit.maps[name][wm] / getattr(head, name)[sl][wm] - 1)) < 0.005
    apparent = fit.maps["pd"][wm] / head.pd[sl][wm]
    receive = head.receive[sl][wm]
    assert np.corrcoef(apparent, receive)[0, 1] > 0.9
    assert receive.max() / receive.min() > 1.2


def test_full_head_csf_and_nulls_meet_the_targets(head, pretrained_fit):
    """The issue's targets on the whole head (pretrained; the other modes are measured in the
    docs): pure-CSF median T1 within 5 %, < 2 % at the bound, FLAIR/DIR nulls."""
    mask, fit = pretrained_fit
    m = fit.maps
    pure_csf = (head.tissue_fractions["CSF"] > 0.95) & head.brain_mask
    assert np.median(m["t1"][pure_csf]) == pytest.approx(np.median(head.t1[pure_csf]), rel=0.05)
    assert np.mean(m["t1"][pure_csf] >= T1_RANGE_S[1] * 0.99) < 0.02
    brain, _ = brain_mask_from_maps(m["t1"], m["pd"], mask, 2.0)
    images = synthesize_all(m["t1"], m["t2"], m["pd"], m["ie"], mask=mask, brain_mask=brain,
                            crlb={k: m[f"crlb_{k}"] for k in ("t1", "t2", "ie")}, residual=m["residual"],
                            contrasts=["FLAIR", "DIR"])
    wm, gm = head.tissue_fractions["WM"] > 0.9, head.tissue_fractions["GM"] > 0.9
    flair, dir_ = images["FLAIR"][0], images["DIR"][0]
    assert np.median(flair[pure_csf]) / np.median(flair[wm]) < 0.1
    assert np.median(dir_[pure_csf]) / np.median(dir_[gm]) < 0.2
    assert np.median(dir_[wm]) / np.median(dir_[gm]) < 0.2
