"""Save, locate, load and validate SSL-QALAS network weights.

A model file is a small ``torch.save`` dictionary loadable with ``weights_only=True``::

    {"state_dict": {...tensors...}, "config": {...JSON-able...}}

``config`` holds ``format``/``format_version``, ``network`` (architecture,
:class:`~qalas_bids.qalas.fitting.network.NetworkConfig`), ``timing`` (the sequence timing the
weights were trained for, seconds), ``input_normalisation``, ``ranges``,
``software_version``, ``training`` (provenance) and ``loss_history``.
The shipped priors live in ``qalas_bids/data/ssl_pretrained_<vendor>.pt``, one per vendor
timing preset (a JSON copy of each config sits next to it); ``pretrained`` picks the one
trained for the scan's timing. User-trained cohort models use the same format.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ... import __version__
from ..errors import QalasInputError
from .network import NetworkConfig, QalasNet
from ..physics.timing import SequenceTiming

LOGGER = logging.getLogger("qalas_bids")

MODEL_FORMAT = "qalas-bids-ssl-model"
MODEL_FORMAT_VERSION = 1
DEFAULT_MODEL_NAME = "ssl_pretrained_siemens.pt"
#: Relative tolerance on each timing field before a model counts as trained for another
#: protocol.
TIMING_RTOL = 0.02


@dataclass
class LoadedModel:
    """A network ready to run, with where it came from."""

    net: QalasNet
    config: dict[str, Any]
    path: str
    sha256: str
    warnings: list[str] = field(default_factory=list)

    @property
    def timing(self) -> SequenceTiming:
        return SequenceTiming(**self.config["timing"])


def default_model_path() -> Path:
    """Path of the shipped pretrained weights (inside the installed package)."""
    return Path(str(resources.files("qalas_bids") / "data" / DEFAULT_MODEL_NAME))


def shipped_models() -> list[Path]:
    """The shipped pretrained models (one per vendor timing preset), Siemens first."""
    folder = default_model_path().parent
    return sorted(folder.glob("ssl_pretrained_*.pt"), key=lambda p: (p.name != DEFAULT_MODEL_NAME, p.name))


def _model_timing(path: Path) -> SequenceTiming:
    """Timing a model was trained for, from its JSON copy (no torch.load needed)."""
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return SequenceTiming(**json.loads(sidecar.read_text())["timing"])
    return SequenceTiming(**torch.load(path, map_location="cpu", weights_only=True)["config"]["timing"])


def select_pretrained_model(timing: SequenceTiming, *, strict: bool = True) -> Path:
    """The shipped model trained for ``timing`` (every field within :data:`TIMING_RTOL`).

    ``strict=False`` (fine-tune, forced models) returns the closest one when none matches.
    Raises :class:`QalasInputError` naming the shipped protocols and the fix otherwise.
    """
    candidates = []
    for path in shipped_models():
        model_timing = _model_timing(path)
        diff = timing.differs_from(model_timing, rtol=TIMING_RTOL)
        distance = sum(abs(a - b) / max(abs(b), 1e-12) for a, b in diff.values())
        candidates.append((len(diff), distance, path, diff, model_timing.vendor))
    if not candidates:
        raise QalasInputError("no shipped SSL model found: reinstall qalas-bids (the weights are package data)")
    n_diff, _, best, diff, _ = min(candidates, key=lambda c: (c[0], c[1]))
    if n_diff == 0 or not strict:
        return best
    shipped = ", ".join(f"{c[4]} ({c[2].name})" for c in candidates)
    detail = ", ".join(f"{k}: scan {a:g} vs model {b:g}" for k, (a, b) in sorted(diff.items()))
    raise QalasInputError(
        f"no shipped pretrained model was trained for this scan's QALAS timing (vendor preset "
        f"{timing.vendor}; shipped: {shipped}; closest {best.name} differs in {detail}). Use "
        "--fit-mode fine-tune (adapts the closest model to this scan) or scan-specific, or a model "
        "trained for this protocol (--model, see qalas-bids-train)")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so only plain types reach the file (weights_only-safe)."""
    return json.loads(json.dumps(value))


def save_model(path: str | Path, net: QalasNet, config: dict[str, Any]) -> Path:
    """Write ``net`` and its ``config`` (must include ``timing``) to ``path``.

    Fills ``format``, ``format_version``, ``network`` and ``software_version`` when
    missing. Returns the path. Raises ``ValueError`` if the config has no timing.
    """
    if "timing" not in config:
        raise ValueError("model config needs the 'timing' dict the weights were trained for")
    full = dict(config)
    full.setdefault("format", MODEL_FORMAT)
    full.setdefault("format_version", MODEL_FORMAT_VERSION)
    full["network"] = net.config.as_dict()
    full.setdefault("software_version", __version__)
    full = _jsonable(full)
    state = {k: v.detach().cpu().to(torch.float32).clone() for k, v in net.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": state, "config": full}, tmp)
    tmp.replace(path)
    return path


def load_model(path: str | Path | None = None, expected_timing: SequenceTiming | None = None,
               force: bool = False, device: torch.device | str = "cpu") -> LoadedModel:
    """Load weights saved by :func:`save_model` (``None`` = the shipped model for
    ``expected_timing``, see :func:`select_pretrained_model`; the Siemens one without it).

    When ``expected_timing`` (the scan's timing) differs from the model's by more than
    2 % in any field, raises :class:`QalasInputError` naming the fields, unless ``force``
    (then the mismatch is recorded in ``LoadedModel.warnings``). Never uses the network.
    """
    if path is None:
        path = (select_pretrained_model(expected_timing, strict=not force) if expected_timing is not None
                else default_model_path())
    path = Path(path)
    if not path.is_file():
        raise QalasInputError(f"SSL model file not found: {path}. Pass an existing --model file "
                              "or reinstall qalas-bids (the shipped weights are package data).")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted, not a torch file, or unsafe pickle
        raise QalasInputError(f"cannot read SSL model file {path}: {exc}") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        raise QalasInputError(f"{path} is not a qalas-bids model file (missing state_dict/config)")
    config = blob["config"]
    if config.get("format") != MODEL_FORMAT or int(config.get("format_version", 0)) > MODEL_FORMAT_VERSION:
        raise QalasInputError(
            f"{path}: unsupported model format {config.get('format')!r} version "
            f"{config.get('format_version')!r} (this qalas-bids reads {MODEL_FORMAT} <= "
            f"{MODEL_FORMAT_VERSION}); upgrade qalas-bids or retrain the model")
    net = QalasNet(NetworkConfig.from_dict(config.get("network", {})))
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise QalasInputError(f"{path}: weights do not match the stored architecture: {exc}") from exc
    net.to(device).eval()
    loaded = LoadedModel(net=net, config=config, path=str(path), sha256=file_sha256(path))
    if expected_timing is not None:
        model_timing = SequenceTiming(**config["timing"])
        diff = expected_timing.differs_from(model_timing, rtol=TIMING_RTOL)
        if diff:
            detail = ", ".join(f"{k}: scan {a} vs model {b}" for k, (a, b) in sorted(diff.items()))
            message = (f"SSL model {path.name} was trained for another QALAS timing ({detail}); "
                       "its maps would be biased")
            if not force:
                raise QalasInputError(message + ". Use --fit-mode fine-tune or scan-specific, a model "
                                      "trained for this protocol, or force it (--force-model).")
            loaded.warnings.append(message + " (used anyway because forced)")
            LOGGER.warning(loaded.warnings[-1])
    return loaded
