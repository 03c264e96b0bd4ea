"""Cohort models: SSL-QALAS networks trained by users and reused on other scans.

Three jobs, all built on the public functions of :mod:`.ssl` and :mod:`.pretrained`
(same model file format as the shipped prior, loadable with ``weights_only=True``):

- :func:`annotate_model` adds what a reuser needs to a model written by ``fit_ssl(...,
  save_model_path=...)``: acquisition (vendor, model, serial number, field strength),
  training data provenance (BIDS URIs), how it was trained;
- :func:`check_model_compatibility` refuses a model trained for another protocol (timing,
  vendor or field strength) with a clear message, or returns warnings when forced;
- :func:`train_cohort_model` trains one network on masked voxels pooled from several scans
  (each normalised by its own volume scale, exactly as ``fit_ssl`` does at inference), and
  :func:`group_by_scanner` splits scans by Manufacturer + ManufacturersModelName +
  DeviceSerialNumber (when present) so that each scanner gets its own model.

No nipype/pybids imports here; nothing downloads anything.
"""
from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import QalasInputError
from .network import NetworkConfig, QalasNet, network_inputs, robust_scale
from .pretrained import TIMING_RTOL, file_sha256, is_protocol_general, save_model, timing_mismatch
from ..physics.timing import SequenceTiming, vendor_key

LOGGER = logging.getLogger("qalas_bids")

#: Sidecar keys that identify the scanner (and field strength) a model was trained on.
ACQUISITION_KEYS = ("Manufacturer", "ManufacturersModelName", "DeviceSerialNumber",
                    "MagneticFieldStrength")
#: Keys that define a scanner group when pooling a cohort.
SCANNER_KEYS = ("Manufacturer", "ManufacturersModelName", "DeviceSerialNumber")
MODEL_EXTENSION = ".pt"
#: Relative tolerance on MagneticFieldStrength (tesla) before a model counts as another field.
FIELD_RTOL = 0.05
#: Same input normalisation as fit_ssl (99th percentile of contrast 5 in the mask).
SCALE_PERCENTILE = 99.0
TARGET_STEPS = 3000
DEFAULT_BATCH = 8192


# --------------------------------------------------------------------------- metadata
def acquisition_info(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The :data:`ACQUISITION_KEYS` present in a QALAS sidecar (others omitted)."""
    return {k: metadata[k] for k in ACQUISITION_KEYS if metadata.get(k) not in (None, "")}


def scanner_key(metadata: Mapping[str, Any]) -> str:
    """Filename-safe scanner label, e.g. ``SiemensHealthineersPrisma12345`` (``unknown``
    when the sidecar names no scanner)."""
    parts = [str(metadata[k]) for k in SCANNER_KEYS if metadata.get(k) not in (None, "")]
    label = re.sub(r"[^A-Za-z0-9]", "", "".join(p.title() for p in parts))
    return label or "unknown"


def model_filename(entities: Mapping[str, Any], desc: str = "ssl") -> str:
    """``sub-01_ses-01_run-1_desc-ssl_model.pt`` for a run's entities (BIDS entity order)."""
    order = (("subject", "sub"), ("session", "ses"), ("acquisition", "acq"),
             ("reconstruction", "rec"), ("run", "run"))
    parts = [f"{short}-{entities[k]}" for k, short in order if entities.get(k) not in (None, "")]
    return "_".join(parts + [f"desc-{desc}", f"model{MODEL_EXTENSION}"])


def read_model(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(state_dict, config)`` of a model file, read with ``weights_only=True`` (no code
    objects are unpickled; no network access)."""
    path = Path(path)
    if not path.is_file():
        raise QalasInputError(f"model file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise QalasInputError(f"cannot read model file {path}: {exc}") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        raise QalasInputError(f"{path} is not a qalas-bids model file (missing state_dict/config)")
    return blob["state_dict"], blob["config"]


def annotate_model(path: str | Path, *, acquisition: Mapping[str, Any] | None = None,
                   sources: Sequence[str] = (), training: Mapping[str, Any] | None = None) -> Path:
    """Add acquisition, provenance and training details to a saved model (rewritten in place
    with :func:`~.pretrained.save_model`; architecture and weights unchanged)."""
    state, config = read_model(path)
    net = QalasNet(NetworkConfig.from_dict(config.get("network", {})))
    net.load_state_dict(state)
    config = dict(config)
    if acquisition:
        config["acquisition"] = dict(acquisition)
    train = dict(config.get("training") or {})
    if sources:
        train["sources"] = list(sources)
    train.update(training or {})
    config["training"] = train
    return save_model(path, net, config)


# --------------------------------------------------------------------------- compatibility
def check_model_compatibility(model_path: str | Path, timing: SequenceTiming,
                              metadata: Mapping[str, Any] | None = None, *,
                              force: bool = False, label: str = "this scan") -> list[str]:
    """Check that a user model was trained for the scan's protocol.

    Compares the sequence timing (any field > 2 %; protocol-general models: their timing
    ranges, and no vendor check), the vendor (timing ``vendor`` or the
    model's ``acquisition.Manufacturer``) and ``MagneticFieldStrength`` (> 5 %) of the
    model with the scan's ``timing`` and sidecar ``metadata``. Raises
    :class:`QalasInputError` naming every difference, unless ``force``; then returns the
    differences as warnings (to be written into the sidecars). Returns ``[]`` when they match.
    """
    _, config = read_model(model_path)
    name = Path(model_path).name
    problems: list[str] = []
    model_timing = SequenceTiming(**config["timing"])
    timing_problem = timing_mismatch(timing, config)
    if timing_problem:
        problems.append(f"timing {timing_problem}")
    meta = dict(metadata or {})
    acq = dict(config.get("acquisition") or {})
    scan_vendor = vendor_key(meta.get("Manufacturer")) or timing.vendor
    model_vendor = None if is_protocol_general(config) else (vendor_key(acq.get("Manufacturer"))
                                                             or model_timing.vendor)
    if scan_vendor and model_vendor and str(scan_vendor).lower() != str(model_vendor).lower():
        problems.append(f"vendor: scan {scan_vendor} vs model {model_vendor}")
    scan_field, model_field = meta.get("MagneticFieldStrength"), acq.get("MagneticFieldStrength")
    if scan_field and model_field and abs(float(scan_field) - float(model_field)) > FIELD_RTOL * float(model_field):
        problems.append(f"field strength: scan {scan_field} T vs model {model_field} T")
    if not problems:
        return []
    message = (f"model {name} was trained for another protocol than {label} ({'; '.join(problems)}): "
               "its maps would be biased")
    if not force:
        raise QalasInputError(message + ". Use a model trained for this protocol, --fit-mode "
                              "scan-specific, or --force-model to use it anyway (recorded in the sidecars)")
    warning = message + " (used anyway: --force-model)"
    LOGGER.warning(warning)
    return [warning]


# --------------------------------------------------------------------------- cohort training
@dataclass
class CohortScan:
    """Masked voxels of one scan for cohort training.

    magnitudes : (N, 5) QALAS magnitudes; b1 : (N,) relative B1 or None (B1 = 1);
    timing : its sequence timing; label : e.g. ``sub-01_ses-01``; sources : BIDS URIs;
    metadata : sidecar keys (Manufacturer, ...) used for grouping and provenance.
    """

    magnitudes: np.ndarray
    b1: np.ndarray | None
    timing: SequenceTiming
    label: str
    sources: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


def group_by_scanner(scans: Sequence[CohortScan]) -> dict[str, list[CohortScan]]:
    """Scans grouped by :func:`scanner_key` (Manufacturer + model + serial when present)."""
    groups: dict[str, list[CohortScan]] = {}
    for scan in scans:
        groups.setdefault(scanner_key(scan.metadata), []).append(scan)
    return groups


def _pool(scans: Sequence[CohortScan], max_voxels_per_scan: int | None, rng: np.random.Generator):
    mags, b1s, counts = [], [], []
    for scan in scans:
        m = np.asarray(scan.magnitudes, dtype=np.float64)
        if m.ndim != 2 or m.shape[1] != 5 or m.shape[0] == 0:
            raise QalasInputError(f"{scan.label}: magnitudes must be a non-empty (N, 5) array, got {m.shape}")
        if not np.isfinite(m).all() or (m < 0).any():
            raise QalasInputError(f"{scan.label}: NaN/Inf or negative QALAS magnitudes in the mask")
        b1 = np.ones(m.shape[0]) if scan.b1 is None else np.asarray(scan.b1, dtype=np.float64).reshape(-1)
        if b1.shape[0] != m.shape[0] or not np.isfinite(b1).all() or (b1 <= 0).any():
            raise QalasInputError(f"{scan.label}: B1 must be finite, positive and one value per voxel")
        scaled = m / robust_scale(m, SCALE_PERCENTILE)  # the per-scan normalisation of fit_ssl
        if max_voxels_per_scan and m.shape[0] > max_voxels_per_scan:
            keep = np.sort(rng.choice(m.shape[0], max_voxels_per_scan, replace=False))
            scaled, b1 = scaled[keep], b1[keep]
        mags.append(scaled)
        b1s.append(b1)
        counts.append(int(scaled.shape[0]))
    return np.concatenate(mags), np.concatenate(b1s), counts


def train_cohort_model(scans: Sequence[CohortScan], out_path: str | Path, *,
                       epochs: int | None = None, batch_size: int | None = None, lr: float = 1e-3,
                       seed: int = 0, device: str = "cpu", use_b1_input: bool = True,
                       max_voxels_per_scan: int | None = None,
                       progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Train one SSL-QALAS network on the masked voxels pooled from ``scans`` and save it.

    Every scan must share one sequence timing (2 % tolerance; the loss runs the signal model
    with it) — split mixed protocols with :func:`group_by_scanner` first. Each scan is
    normalised by its own 99th percentile of contrast 5, as ``fit_ssl`` does when the model
    is applied. ``epochs=None`` aims for about 3000 optimiser steps (early stopping applies).
    Returns ``(path, info)`` with the loss history and training time (seconds).
    """
    from .device import resolve_device
    from .ssl import train_network

    if not scans:
        raise QalasInputError("no scans to train a cohort model on")
    timing = scans[0].timing
    for scan in scans[1:]:
        diff = scan.timing.differs_from(timing, rtol=TIMING_RTOL)
        if diff:
            raise QalasInputError(
                f"{scan.label} has another QALAS timing than {scans[0].label} ({sorted(diff)}): one "
                "model needs one protocol; select the scans with --participant-label/--session-label")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    mags, b1, counts = _pool(scans, max_voxels_per_scan, rng)
    dev = resolve_device(device)
    n = mags.shape[0]
    bs = int(min(batch_size or min(DEFAULT_BATCH, max(256, n // 8)), n))
    n_epochs = epochs if epochs is not None else int(min(300, max(3, math.ceil(TARGET_STEPS / math.ceil(n / bs)))))
    targets = torch.as_tensor(mags, dtype=torch.float32, device=dev)
    b1_t = torch.as_tensor(b1, dtype=torch.float32, device=dev)
    inputs = network_inputs(targets, b1_t, 1.0, use_b1_input)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = QalasNet(NetworkConfig(use_b1_input=use_b1_input)).to(dev)
        history = train_network(net, inputs, targets, b1_t, timing, epochs=n_epochs, batch_size=bs,
                                lr=lr, seed=seed, progress=progress)
    wall = time.perf_counter() - t0
    acquisitions = [acquisition_info(s.metadata) for s in scans]
    acq = {k: v for k, v in acquisitions[0].items() if all(a.get(k) == v for a in acquisitions)}
    path = save_model(out_path, net, {
        "timing": timing.as_dict(),
        "input_normalisation": {"method": "percentile", "percentile": SCALE_PERCENTILE, "contrast": 5,
                                "pd_units": "input scale", "per": "scan"},
        "acquisition": acq,
        "training": {"kind": "self-supervised (cohort, pooled voxels)", "n_voxels": int(n),
                     "scans": [s.label for s in scans], "voxels_per_scan": counts,
                     "sources": [u for s in scans for u in s.sources], "seed": seed, "lr": lr,
                     "batch_size": bs, "epochs": len(history), "wall_time_s": wall},
        "loss_history": [float(v) for v in history],
    })
    info = {"path": str(path), "sha256": file_sha256(path), "n_voxels": int(n), "epochs": len(history),
            "loss_history": [float(v) for v in history], "wall_time_s": wall, "scans": [s.label for s in scans]}
    return path, info
