"""Tests of model files: save/load, the shipped prior, timing checks, fine-tuning."""
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.fitting.network import NetworkConfig, QalasNet
from qalas_bids.qalas.phantom.digital_brain import simulate_tissue_voxels
from qalas_bids.qalas.fitting.pretrained import (MODEL_FORMAT, default_model_path, file_sha256, load_model,
                                         save_model)
from qalas_bids.qalas.fitting.ssl import fit_ssl
from qalas_bids.qalas.physics.timing import SequenceTiming, get_preset

SIEMENS = get_preset("siemens")
SHIFTED = SIEMENS.replace(esp=0.0052, gap=0.85, tr_cycle=4.4, t2p=0.08)  # another protocol
OLD_MODEL = Path(__file__).parent / "data" / "ssl_model_v0_siemens.pt"  # per-protocol (Siemens) file of 0.1
WM, GM = 3, 2


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    net = QalasNet(NetworkConfig(use_b1_input=False))
    path = save_model(tmp_path / "m.pt", net, {"timing": SIEMENS.as_dict(), "loss_history": [1.0, 0.5]})
    blob = torch.load(path, weights_only=True)  # plain types only
    assert blob["config"]["format"] == MODEL_FORMAT and blob["config"]["network"]["use_b1_input"] is False
    loaded = load_model(path, expected_timing=SIEMENS)
    x = torch.rand(7, 5)
    torch.testing.assert_close(loaded.net(x), net.eval()(x))
    assert loaded.sha256 == file_sha256(path) and loaded.config["loss_history"] == [1.0, 0.5]
    with pytest.raises(ValueError, match="timing"):
        save_model(tmp_path / "n.pt", net, {})


def test_shipped_weights_load_offline(no_network):
    path = default_model_path()
    assert path.is_file(), "qalas_bids/data/ssl_pretrained_generic.pt must ship with the package"
    assert path.stat().st_size < 1_000_000
    loaded = load_model(None, expected_timing=SIEMENS)
    cfg = loaded.config
    for key in ("timing", "input_normalisation", "ranges", "software_version", "training", "loss_history"):
        assert key in cfg, key
    assert loaded.timing == SequenceTiming(**cfg["timing"])
    assert not loaded.timing.differs_from(SIEMENS)


def test_mismatched_timing_refused_unless_forced():
    assert not load_model(None, expected_timing=SHIFTED).warnings  # inside the shipped model's ranges
    with pytest.raises(QalasInputError, match="another QALAS timing.*gap"):
        load_model(OLD_MODEL, expected_timing=SHIFTED)
    loaded = load_model(OLD_MODEL, expected_timing=SHIFTED, force=True)
    assert loaded.warnings and "gap" in loaded.warnings[0]


def test_bad_model_files_are_clear_errors(tmp_path):
    with pytest.raises(QalasInputError, match="not found"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(QalasInputError, match="cannot read"):
        load_model(junk)
    torch.save({"state_dict": {}, "config": {"format": "other"}}, tmp_path / "other.pt")
    with pytest.raises(QalasInputError, match="unsupported model format"):
        load_model(tmp_path / "other.pt")


def _rel_rmse(fit, truth, labels, name):
    sel = (labels == WM) | (labels == GM)
    return float(np.sqrt(np.mean((getattr(fit, name)[sel] / truth[name][sel] - 1) ** 2)))


def test_pretrained_mode_accuracy_on_its_protocol():
    mags, truth, labels = simulate_tissue_voxels(200, snr=100, seed=11)
    fit = fit_ssl(mags, truth["b1"], SIEMENS, mode="pretrained", device="cpu", progress=False, refine_steps=0)
    assert fit.info["epochs"] == 0 and fit.info["model"]["sha256"]
    assert _rel_rmse(fit, truth, labels, "t1") < 0.15
    assert _rel_rmse(fit, truth, labels, "t2") < 0.25


@pytest.mark.slow
def test_fine_tune_improves_over_pretrained_on_shifted_timing():
    mags, truth, labels = simulate_tissue_voxels(200, snr=100, seed=12, timing=SHIFTED)
    kw = dict(device="cpu", progress=False, refine_steps=0, seed=0, model_path=str(OLD_MODEL))
    with pytest.raises(QalasInputError):
        fit_ssl(mags, truth["b1"], SHIFTED, mode="pretrained", device="cpu", progress=False,
                model_path=str(OLD_MODEL))
    pre = fit_ssl(mags, truth["b1"], SHIFTED, mode="pretrained", force_model=True, **kw)
    assert any("another QALAS timing" in w for w in pre.info["warnings"])
    tuned = fit_ssl(mags, truth["b1"], SHIFTED, mode="fine-tune", epochs=40, batch_size=256, **kw)
    assert tuned.info["epochs"] > 0
    for name in ("t1", "t2"):
        assert _rel_rmse(tuned, truth, labels, name) < _rel_rmse(pre, truth, labels, name), name
