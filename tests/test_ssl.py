"""Tests of SSL-QALAS training and fitting (qalas_bids.qalas.fitting.ssl)."""
import numpy as np
import pytest
import torch

from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.fitting.network import QalasNet, network_inputs
from qalas_bids.qalas.phantom.digital_brain import simulate_tissue_voxels
from qalas_bids.qalas.physics.signal_model import qalas_magnitude
from qalas_bids.qalas.fitting.ssl import fit_ssl, model_magnitudes, train_network
from qalas_bids.qalas.physics.timing import SequenceTiming

TIMING = SequenceTiming()
WM, GM, CSF = 3, 2, 1
FAST = dict(device="cpu", progress=False, batch_size=256)


def crlb_relative(truth, sigma, timing=TIMING):
    """Relative CRLB std (N, 4) of T1, T2, PD, IE for Gaussian noise ``sigma`` (computed
    here from first principles with autograd, independent of the uncertainty module)."""
    p = torch.tensor(np.stack([truth[k] for k in ("t1", "t2", "pd", "ie")], 1), dtype=torch.float64)
    b = torch.as_tensor(truth["b1"], dtype=torch.float64)

    def total(q):
        return qalas_magnitude(q[:, 0], q[:, 1], q[:, 2], q[:, 3], b, timing).sum(0)

    jac = torch.autograd.functional.jacobian(total, p).permute(1, 0, 2)  # (N, 5, 4)
    fisher = jac.transpose(1, 2) @ jac / sigma ** 2
    std = torch.sqrt(torch.diagonal(torch.linalg.inv(fisher), dim1=1, dim2=2))
    return (std / p).numpy()


def _sigma(mags_clean_wm5, snr):
    return mags_clean_wm5 / snr


def test_loss_decreases():
    mags, truth, _ = simulate_tissue_voxels(200, snr=60, seed=0)
    scale = np.percentile(mags[:, 4], 99)
    targets = torch.tensor(mags / scale, dtype=torch.float32)
    b1 = torch.tensor(truth["b1"], dtype=torch.float32)
    torch.manual_seed(0)
    net = QalasNet()
    history = train_network(net, network_inputs(targets, b1, 1.0, True), targets, b1, TIMING,
                            epochs=40, batch_size=128, progress=False, patience=100)
    assert history[-1] < 0.2 * history[0]
    assert np.mean(history[-5:]) < np.mean(history[:5])


def test_magnitude_loss_handles_zero_crossing():
    """CSF's contrast 3 crosses zero: the model magnitude must match |S|, not the signed S."""
    p = torch.tensor([[4.0, 2.0, 1.0, 1.0]], dtype=torch.float64)
    out = model_magnitudes(p, torch.ones(1, dtype=torch.float64), TIMING)
    assert (out >= 0).all()
    assert abs(float(out[0, 2]) - 0.000269) < 1e-5  # |S3| from the reference test vector


@pytest.mark.slow
def test_scan_specific_recovers_wm_gm_within_crlb():
    snr = 100
    mags, truth, labels = simulate_tissue_voxels(300, snr=snr, seed=3)
    clean = qalas_magnitude(*(torch.tensor(truth[k]) for k in ("t1", "t2", "pd", "ie", "b1")), TIMING).numpy()
    sigma = clean[labels == WM, 4].mean() / snr
    rel_crlb = crlb_relative(truth, sigma)
    fit = fit_ssl(mags, truth["b1"], TIMING, mode="scan-specific", epochs=150, seed=0, **FAST)
    assert fit.info["epochs"] >= 5 and len(fit.info["loss_history"]) == fit.info["epochs"]
    for label in (WM, GM):
        sel = labels == label
        for k, name in enumerate(("t1", "t2")):
            rel_err = getattr(fit, name)[sel] / truth[name][sel] - 1
            mean_crlb = rel_crlb[sel, k].mean()
            # Median of 300 errors has standard error ~1.25 * crlb / sqrt(300) ~ 0.07 crlb:
            # allow 0.5 crlb (7 SE) of bias, and an RMS error of 1.5x the CRLB (the fit is
            # an efficient estimator up to the network/optimiser error).
            assert abs(np.median(rel_err)) < 0.5 * mean_crlb + 0.005, (label, name)
            assert np.sqrt(np.mean(rel_err ** 2)) < 1.5 * mean_crlb, (label, name)


def test_csf_t1_fits():
    mags, truth, labels = simulate_tissue_voxels(150, snr=200, seed=5)
    fit = fit_ssl(mags, truth["b1"], TIMING, mode="scan-specific", epochs=60, seed=0, **FAST)
    sel = labels == CSF
    assert abs(np.median(fit.t1[sel] / truth["t1"][sel] - 1)) < 0.10


def test_deterministic_with_seed():
    mags, truth, _ = simulate_tissue_voxels(60, snr=50, seed=1)
    kw = dict(mode="scan-specific", epochs=8, **FAST)
    a = fit_ssl(mags, truth["b1"], TIMING, seed=7, **kw)
    b = fit_ssl(mags, truth["b1"], TIMING, seed=7, **kw)
    c = fit_ssl(mags, truth["b1"], TIMING, seed=8, **kw)
    np.testing.assert_array_equal(a.stacked(), b.stacked())
    assert a.info["loss_history"] == b.info["loss_history"]
    assert not np.array_equal(a.stacked(), c.stacked())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -1.0])
def test_bad_values_rejected(bad):
    mags, truth, _ = simulate_tissue_voxels(10, snr=50, seed=1)
    mags[3, 2] = bad
    with pytest.raises(QalasInputError, match="NaN|negative"):
        fit_ssl(mags, truth["b1"], TIMING, epochs=1, **FAST)


def test_bad_shapes_and_mode_rejected():
    mags, truth, _ = simulate_tissue_voxels(10, snr=50, seed=1)
    with pytest.raises(QalasInputError, match="shape"):
        fit_ssl(mags[:, :4], truth["b1"], TIMING, **FAST)
    with pytest.raises(QalasInputError, match="B1"):
        fit_ssl(mags, truth["b1"][:5], TIMING, **FAST)
    with pytest.raises(QalasInputError, match="mode"):
        fit_ssl(mags, truth["b1"], TIMING, mode="magic", **FAST)
    with pytest.raises(QalasInputError, match="no voxels"):
        fit_ssl(mags[:0], truth["b1"][:0], TIMING, **FAST)


def test_no_b1_warns_and_outputs_are_finite():
    mags, truth, _ = simulate_tissue_voxels(30, snr=50, seed=2)
    fit = fit_ssl(mags, None, TIMING, epochs=3, use_b1_input=False, **FAST)
    assert any("B1" in w for w in fit.info["warnings"])
    assert np.isfinite(fit.stacked()).all()
    assert fit.t1.dtype == np.float32 and fit.t1.shape == (90,)
    assert fit.info["use_b1_input"] is False
