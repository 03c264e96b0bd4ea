"""Repeatability statistics: CoV / RMSE maths, noise prediction on fitted digital brains,
and group_repeatability.tsv written by the group level."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from qalas_bids.qalas.phantom.digital_brain import make_digital_brain
from qalas_bids.qalas.tissue.repeatability import predicted_median_sd, voxelwise_rmse, within_subject_cov

N_SLICES = 4


def test_cov_and_rmse_basics():
    assert within_subject_cov([1.2, 1.2, 1.2]) == 0.0
    assert within_subject_cov([1.0, 1.1]) == pytest.approx(np.std([1.0, 1.1], ddof=1) / 1.05)
    assert math.isnan(within_subject_cov([1.0]))
    a = np.arange(8.0).reshape(2, 2, 2)
    assert voxelwise_rmse(a, a) == 0.0
    assert voxelwise_rmse(a, a + 2, a > 3) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="grid"):
        voxelwise_rmse(a, a[0])


def test_predicted_median_sd_matches_monte_carlo():
    rng = np.random.default_rng(0)
    truth = np.concatenate([np.full(400, 1.0), rng.uniform(0.9, 1.3, 600)])  # pure + partial volume
    sd = 0.05 * truth
    medians = [np.median(truth + sd * rng.standard_normal(truth.size)) for _ in range(2000)]
    assert predicted_median_sd(truth, sd) == pytest.approx(np.std(medians), rel=0.1)
    homogeneous = predicted_median_sd(np.ones(900), 0.1)
    assert homogeneous == pytest.approx(math.sqrt(math.pi / 2) * 0.1 / 30, rel=0.05)


@pytest.fixture(scope="module")
def two_fitted_runs():
    """Same digital subject (anatomy_seed 5), two scans with independent noise, fitted with
    the shipped pretrained network + per-voxel refinement (a near-ML estimator, so the
    CRLB at the true parameters is the per-voxel noise SD)."""
    from qalas_bids.qalas.fitting.ssl import fit_ssl
    from qalas_bids.qalas.fitting.uncertainty import crlb_std

    runs = []
    for noise_seed in (11, 12, 11):
        brain = make_digital_brain(3.0, snr=30, seed=noise_seed, anatomy_seed=5)
        z0 = brain.shape[2] // 2 - N_SLICES // 2
        mask = brain.brain_mask.copy()
        mask[:, :, :z0] = False
        mask[:, :, z0 + N_SLICES:] = False
        fit = fit_ssl(brain.signals[mask], brain.b1[mask], brain.timing, mode="pretrained", device="cpu",
                      progress=False, num_threads=1)
        runs.append((brain, mask, fit))
    brain, mask, _ = runs[0]
    truth = {k: getattr(brain, k)[mask] for k in ("t1", "t2", "pd", "ie", "b1")}
    crlb = crlb_std(truth["t1"], truth["t2"], truth["pd"], truth["ie"], truth["b1"], brain.timing, brain.sigma,
                    device="cpu")
    return runs, truth, crlb


def test_independent_noise_cov_matches_noise_prediction(two_fitted_runs):
    (brain, mask, fit1), (_, _, fit2), _ = two_fitted_runs[0]
    truth, crlb = two_fitted_runs[1], two_fitted_runs[2]
    ratios, rmse_ratios = [], []
    for tissue in ("WM", "GM"):
        sel = brain.tissue_mask(tissue)[mask]
        for key in ("t1", "t2", "pd"):
            m1, m2 = np.median(getattr(fit1, key)[sel]), np.median(getattr(fit2, key)[sel])
            observed = within_subject_cov([m1, m2])
            predicted = predicted_median_sd(truth[key][sel], crlb[key][sel]) / np.median(truth[key][sel])
            ratios.append(observed / predicted)
            rmse = voxelwise_rmse(getattr(fit1, key)[sel], getattr(fit2, key)[sel])
            rmse_ratios.append(rmse / (math.sqrt(2) * np.sqrt(np.mean(crlb[key][sel] ** 2))))
            print(f"{tissue} {key}: wCoV observed {100 * observed:.3f} % predicted {100 * predicted:.3f} %; "
                  f"voxel RMSE / (sqrt2 CRLB) {rmse_ratios[-1]:.2f}")
    # One pair per (tissue, parameter): |m1 - m2| / sqrt(2) is a half-normal draw of the
    # median's SD, so single ratios scatter widely; their RMS over 6 draws lies in
    # [0.45, 1.5] with > 95 % probability if the prediction is right.
    rms = float(np.sqrt(np.mean(np.square(ratios))))
    print(f"RMS observed/predicted wCoV: {rms:.2f}")
    assert 0.35 < rms < 1.8
    # voxel level: run-to-run RMSE = sqrt(2) x per-voxel SD (CRLB); allow 30 % for the
    # estimator not being exactly efficient at SNR 30 and for Rician bias.
    assert all(0.7 < r < 1.3 for r in rmse_ratios), rmse_ratios


def test_identical_runs_give_zero(two_fitted_runs):
    (brain, mask, fit1), _, (_, _, fit3) = two_fitted_runs[0]
    for key in ("t1", "t2", "pd", "ie"):
        sel = brain.tissue_mask("WM")[mask]
        assert within_subject_cov([np.median(getattr(f, key)[sel]) for f in (fit1, fit3)]) == 0.0
        assert voxelwise_rmse(getattr(fit1, key), getattr(fit3, key)) == 0.0


def test_group_level_writes_repeatability(tmp_path):
    from qalas_bids.testing.fake_derivatives import write_fake_derivatives
    from qalas_bids.reports.group import run_group_level

    out = tmp_path / "out"
    for session in ("01", "02"):  # sub-01: identical maps; sub-02: independent 2 % noise
        write_fake_derivatives(out, "01", session, resolution=3.0, with_synthetic=False, seed=0)
        fake = write_fake_derivatives(out, "02", session, resolution=3.0, with_synthetic=False,
                                      seed=int(session))
    write_fake_derivatives(out, "03", resolution=3.0, with_synthetic=False, seed=3)  # single run
    paths = run_group_level(out)
    table = pd.read_csv(paths["repeatability_tsv"], sep="\t")
    assert set(table["participant_id"]) == {"sub-01", "sub-02"}
    assert (table["n_runs"] == 2).all()
    same = table[table["participant_id"] == "sub-01"]
    for suffix in ("T1map", "T2map", "PDmap", "IEmap"):
        assert (same[f"{suffix}_wcov"] == 0).all() and (same[f"{suffix}_rmse"] == 0).all()
    # fake maps: truth x (1 + 0.02 n), n ~ N(0,1) per run -> voxel RMSE = sqrt(2) 0.02 rms(T1)
    brain = fake["brain"]
    wm = table[(table["participant_id"] == "sub-02") & (table["tissue"] == "WM")].iloc[0]
    expected = math.sqrt(2) * 0.02 * np.sqrt(np.mean(brain.t1[brain.tissue_mask("WM")] ** 2))
    assert wm["T1map_rmse"] == pytest.approx(expected, rel=0.15)
    assert 0 < wm["T1map_wcov"] < 0.01
    dictionary = json.loads(paths["repeatability_json"].read_text())
    assert set(dictionary) == set(table.columns)
    assert "no registration" in dictionary["T1map_rmse"]["Description"]
    assert "id='repeatability'" in paths["html"].read_text()
