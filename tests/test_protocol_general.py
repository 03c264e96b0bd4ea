"""The shipped protocol-general network (issue 21 item 1): one model for every QALAS timing
inside PROTOCOL_RANGES, a clear refusal outside them, fall-back to fine-tune on request,
old per-protocol model files still load.

Accuracy (tolerance from the issue): ``pretrained`` (network + per-voxel refinement) on 20
random valid protocols, WM/GM voxels of the 2 mm digital brain (the phantom's own T1/T2/PD/IE
maps, signals simulated with each protocol, SNR 60, Rician noise), |median bias| < 1 % for
T1, T2, PD and IE. The full-volume measurement is benchmarks/bench_protocols.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.fitting.pretrained import (check_pretrained_timing, default_model_path, load_model,
                                                 read_config)
from qalas_bids.qalas.fitting.ssl import fit_ssl
from qalas_bids.qalas.phantom.digital_brain import add_rician_noise, make_digital_brain
from qalas_bids.qalas.physics.protocols import PROTOCOL_RANGES, sample_protocol
from qalas_bids.qalas.physics.signal_model import qalas_magnitude
from qalas_bids.qalas.physics.timing import get_preset

OLD_MODEL = Path(__file__).parent / "data" / "ssl_model_v0_siemens.pt"  # a per-protocol file of 0.1
PHILIPS_OFF = get_preset("philips").replace(esp=0.0056)  # the protocol refused before (issue 21)
OUT_OF_RANGE = get_preset("siemens").replace(tf=100, esp=0.0078)
BIAS_LIMIT = 0.01
N_PROTOCOLS = 20
PARAMS = ("t1", "t2", "pd", "ie")


def test_shipped_model_is_one_small_protocol_general_file():
    path = default_model_path()
    assert path.name == "ssl_pretrained_generic.pt" and path.stat().st_size < 1_000_000
    assert sorted(p.name for p in path.parent.glob("*.pt")) == [path.name]
    config = read_config(path)
    assert config["protocol_general"] is True
    assert {k: tuple(v) for k, v in config["network"]["timing_ranges"].items()} == dict(PROTOCOL_RANGES)
    loaded = load_model(None, expected_timing=PHILIPS_OFF)
    assert loaded.protocol_general and not loaded.warnings
    assert loaded.net.n_inputs == 15 and loaded.timing_input(PHILIPS_OFF).shape == (9,)


def test_out_of_range_timing_is_refused_naming_the_field():
    with pytest.raises(QalasInputError, match=r"esp 0.0078 \(trained 0.004-0.0075\).*--pretrained-fallback"):
        check_pretrained_timing(OUT_OF_RANGE)
    with pytest.raises(QalasInputError, match="esp 0.0078"):
        load_model(None, expected_timing=OUT_OF_RANGE)
    check_pretrained_timing(PHILIPS_OFF)  # inside: no error


def test_fallback_to_fine_tune_only_when_asked():
    rng = np.random.default_rng(3)
    t1 = rng.uniform(0.7, 1.5, 300)
    mags = qalas_magnitude(torch.tensor(t1), torch.tensor(t1 / 12), torch.full((300,), 10.0),
                           torch.full((300,), 0.9), torch.ones(300, dtype=torch.float64), OUT_OF_RANGE).numpy()
    kw = dict(device="cpu", progress=False, refine_steps=0, epochs=2, batch_size=128)
    with pytest.raises(QalasInputError, match="esp"):
        fit_ssl(mags, None, OUT_OF_RANGE, mode="pretrained", **kw)
    fit = fit_ssl(mags, None, OUT_OF_RANGE, mode="pretrained", pretrained_fallback=True, **kw)
    assert fit.info["pretrained_fallback"] == "fine-tune" and fit.info["epochs"] > 0
    assert any("--pretrained-fallback" in w for w in fit.info["warnings"])


def test_old_per_protocol_model_files_still_load_and_check_their_timing():
    siemens = get_preset("siemens")
    loaded = load_model(OLD_MODEL, expected_timing=siemens)
    assert not loaded.protocol_general and loaded.timing_input(siemens) is None
    assert loaded.net.n_inputs == 6
    with pytest.raises(QalasInputError, match="another QALAS timing.*esp"):
        load_model(OLD_MODEL, expected_timing=siemens.replace(esp=0.0052))
    mags = qalas_magnitude(torch.tensor([0.85, 1.35]), torch.tensor([0.075, 0.095]), torch.tensor([10.0, 12.0]),
                           torch.tensor([0.9, 0.9]), torch.ones(2, dtype=torch.float64), siemens).numpy()
    fit = fit_ssl(mags, None, siemens, mode="pretrained", model_path=str(OLD_MODEL), device="cpu",
                  progress=False)
    np.testing.assert_allclose(fit.t1, [0.85, 1.35], rtol=1e-3)


@pytest.fixture(scope="module")
def head_tissue():
    """Parameters of the pure WM and GM voxels of the 2 mm digital brain (a random 1500 of each)."""
    head = make_digital_brain(resolution=2.0, snr=60, anatomy="brain", seed=4)  # same WM/GM values as "head"
    rng = np.random.default_rng(0)
    picks = []
    for name in ("WM", "GM"):
        idx = np.flatnonzero(head.tissue_fractions[name].ravel() > 0.9)
        picks.append(rng.choice(idx, 1500, replace=False))
    idx = np.concatenate(picks)
    truth = {k: getattr(head, k).ravel()[idx].astype(np.float64) for k in (*PARAMS, "b1")}
    labels = np.repeat(["WM", "GM"], 1500)
    return truth, labels


def _bias_table(truth, labels, timing, seed):
    """Median relative error per tissue and parameter of a pretrained fit with ``timing``."""
    t = {k: torch.tensor(v) for k, v in truth.items()}
    clean = qalas_magnitude(t["t1"], t["t2"], t["pd"], t["ie"], t["b1"], timing).numpy()
    sigma = float(np.mean(clean[labels == "WM", 4])) / 60.0
    noisy = add_rician_noise(clean, sigma, np.random.default_rng(seed))
    fit = fit_ssl(noisy, truth["b1"], timing, mode="pretrained", device="cpu", progress=False)
    return {(tissue, p): float(np.median(getattr(fit, p)[labels == tissue] / truth[p][labels == tissue] - 1))
            for tissue in ("WM", "GM") for p in PARAMS}


@pytest.mark.slow  # about 20 s alone on 2 cores (20 fits of 3000 voxels)
def test_pretrained_is_unbiased_on_20_random_protocols(head_tissue):
    truth, labels = head_tissue
    rng = np.random.default_rng(2021)
    worst = {}
    for k in range(N_PROTOCOLS):
        timing = sample_protocol(rng)
        for key, bias in _bias_table(truth, labels, timing, seed=k).items():
            worst[key] = max(worst.get(key, 0.0), abs(bias))
            assert abs(bias) < BIAS_LIMIT, f"protocol {k} {timing}: {key} median bias {bias:+.4f}"
    print("worst |median bias| over 20 protocols:", {f"{t}-{p}": round(v, 4) for (t, p), v in worst.items()})
