"""Cohort models: a model trained on subject A reused on subject B (pretrained, fine-tune),
protocol checks, safe loading, pooled multi-scan training and scanner grouping."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from qalas_bids.qalas.fitting.cohort import (CohortScan, annotate_model, check_model_compatibility,
                                     group_by_scanner, model_filename, read_model, scanner_key,
                                     train_cohort_model)
from qalas_bids.qalas.errors import QalasInputError
from qalas_bids.qalas.phantom.digital_brain import make_digital_brain, simulate_tissue_voxels
from qalas_bids.qalas.fitting.ssl import fit_ssl
from qalas_bids.qalas.physics.timing import SequenceTiming

N_SLICES = 4
EPOCHS = 40
FIT = dict(device="cpu", progress=False, num_threads=1)
PRISMA = {"Manufacturer": "Siemens", "ManufacturersModelName": "Prisma", "DeviceSerialNumber": "123",
          "MagneticFieldStrength": 3}


def _subject(seed: int, b1_scale: float, snr: float):
    """Cropped 3 mm digital brain; returns (brain, fit mask, WM+GM selection within the mask)."""
    brain = make_digital_brain(3.0, snr=snr, seed=seed, anatomy_seed=seed, b1_scale=b1_scale)
    z0 = brain.shape[2] // 2 - N_SLICES // 2
    mask = brain.brain_mask.copy()
    mask[:, :, :z0] = False
    mask[:, :, z0 + N_SLICES:] = False
    parenchyma = (brain.tissue_mask("WM") | brain.tissue_mask("GM"))[mask]
    return brain, mask, parenchyma


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Subject A (SNR 40, B1 x1.0) trained scan-specific and saved; subject B (SNR 30,
    B1 x1.1, other anatomy) fitted scan-specific, pretrained from A, fine-tuned from A."""
    tmp = tmp_path_factory.mktemp("models")
    a, mask_a, _ = _subject(1, 1.0, 40)
    b, mask_b, par_b = _subject(2, 1.1, 30)
    path = tmp / model_filename({"subject": "A", "session": "1"})
    fit_ssl(a.signals[mask_a], a.b1[mask_a], a.timing, epochs=EPOCHS, save_model_path=str(path), **FIT)
    annotate_model(path, acquisition=PRISMA, sources=["bids:raw:sub-A/anat/sub-A_inv-1_QALAS.nii.gz"])
    args = (b.signals[mask_b], b.b1[mask_b], b.timing)
    out = {"path": path, "brain": b, "mask": mask_b, "parenchyma": par_b,
           "scan": fit_ssl(*args, epochs=EPOCHS, **FIT),
           "pretrained": fit_ssl(*args, mode="pretrained", model_path=str(path), **FIT),
           "fine": fit_ssl(*args, mode="fine-tune", model_path=str(path), epochs=EPOCHS, **FIT)}
    return out


def _nrmse(a, b):
    return float(np.sqrt(np.mean((np.asarray(a, float) - b) ** 2)) / np.mean(b))


def test_model_from_a_reproduces_b_scan_specific_maps(models):
    b, mask, sel = models["brain"], models["mask"], models["parenchyma"]
    for key in ("t1", "t2", "pd", "ie"):
        truth = getattr(b, key)[mask][sel]
        scan = getattr(models["scan"], key)[sel]
        pre = getattr(models["pretrained"], key)[sel]
        between, noise = _nrmse(pre, scan), _nrmse(scan, truth)
        print(f"{key}: NRMSE pretrained(A) vs scan-specific(B) {between:.4f}; scan-specific vs truth {noise:.4f}")
        # Tolerance: swapping the network must change B's maps by much less than the noise
        # already does (< 1/4 of the scan-specific error vs truth, in WM+GM): both end in
        # the same per-voxel least-squares refinement, so only the starting point differs.
        assert between < 0.25 * noise
    assert models["pretrained"].info["model"]["sha256"]


def test_fine_tune_reaches_scan_specific_loss_in_fewer_epochs(models):
    scratch = models["scan"].info["loss_history"]
    fine = models["fine"].info["loss_history"]
    target = 1.02 * scratch[-1]

    def epochs_to(history):
        return next((i + 1 for i, v in enumerate(history) if v <= target), len(history) + 1)

    print(f"epochs to reach the scan-specific loss {target:.3e}: from scratch {epochs_to(scratch)}, "
          f"fine-tuned from subject A {epochs_to(fine)}")
    assert epochs_to(fine) <= len(fine)
    assert epochs_to(fine) < epochs_to(scratch)


def test_saved_model_is_self_describing_and_safe(models, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("model loading tried to use the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    blob = torch.load(models["path"], map_location="cpu", weights_only=True)
    config = blob["config"]
    assert config["format"] == "qalas-bids-ssl-model" and config["format_version"] >= 1
    assert config["acquisition"]["MagneticFieldStrength"] == 3
    assert config["training"]["sources"][0].startswith("bids:raw:")
    assert config["timing"] == SequenceTiming().as_dict()
    assert config["input_normalisation"]["percentile"] == 99.0
    assert len(config["loss_history"]) == config["training"]["epochs"] > 0
    assert config["software_version"]
    assert models["path"].stat().st_size < 1_000_000


def test_mismatched_protocol_is_refused_or_forced(models):
    path = models["path"]
    other_timing = SequenceTiming().replace(tinv=SequenceTiming().tinv * 1.2)
    with pytest.raises(QalasInputError, match="timing.*tinv"):
        check_model_compatibility(path, other_timing, PRISMA)
    with pytest.raises(QalasInputError, match="field strength"):
        check_model_compatibility(path, SequenceTiming(), {**PRISMA, "MagneticFieldStrength": 1.5})
    with pytest.raises(QalasInputError, match="vendor"):
        check_model_compatibility(path, SequenceTiming(), {**PRISMA, "Manufacturer": "GE"})
    assert check_model_compatibility(path, SequenceTiming(), PRISMA) == []
    warnings = check_model_compatibility(path, other_timing, PRISMA, force=True)
    assert len(warnings) == 1 and "--force-model" in warnings[0]
    mags, truth, _ = simulate_tissue_voxels(20, snr=50, seed=0)
    with pytest.raises(QalasInputError, match="another QALAS timing"):
        fit_ssl(mags, truth["b1"], other_timing, mode="pretrained", model_path=str(path), **FIT)


def test_unreadable_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(QalasInputError, match="cannot read"):
        read_model(bad)


def test_cohort_training_pools_scans_and_groups_by_scanner(tmp_path):
    scans = []
    for i, serial in enumerate(("1", "1", "2")):
        mags, truth, _ = simulate_tissue_voxels(200, snr=40, seed=i)
        scans.append(CohortScan(mags * (1 + i), truth["b1"], SequenceTiming(), f"sub-{i}",
                                [f"bids:raw:sub-{i}/anat/x.nii.gz"], {**PRISMA, "DeviceSerialNumber": serial}))
    groups = group_by_scanner(scans)
    assert sorted(len(g) for g in groups.values()) == [1, 2]
    assert scanner_key(PRISMA) == "SiemensPrisma123"
    path, info = train_cohort_model(groups[scanner_key(scans[0].metadata)], tmp_path / "m.pt", epochs=15,
                                    batch_size=300, **{k: FIT[k] for k in ("device", "progress")})
    _, config = read_model(path)
    assert config["training"]["scans"] == ["sub-0", "sub-1"] and config["training"]["n_voxels"] == 1200
    assert config["acquisition"]["DeviceSerialNumber"] == "1"
    assert info["loss_history"][-1] < info["loss_history"][0]
    # per-scan normalisation: a 2x brighter scan gets the same T1 from the pooled model
    fits = [fit_ssl(s.magnitudes, s.b1, s.timing, mode="pretrained", model_path=str(path), refine_steps=0, **FIT)
            for s in scans[:2]]
    assert abs(np.median(fits[0].t1) / np.median(fits[1].t1) - 1) < 0.1
    bad = CohortScan(scans[0].magnitudes, None, SequenceTiming().replace(flip_angle=6.0), "sub-x")
    with pytest.raises(QalasInputError, match="another QALAS timing"):
        train_cohort_model([scans[0], bad], tmp_path / "n.pt", epochs=1)
