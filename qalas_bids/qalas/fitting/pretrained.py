"""Save, locate, load and validate SSL-QALAS network weights.

A model file is a small ``torch.save`` dictionary loadable with ``weights_only=True``::

    {"state_dict": {...tensors...}, "config": {...JSON-able...}}

``config`` holds ``format``/``format_version``, ``network`` (architecture,
:class:`~qalas_bids.qalas.fitting.network.NetworkConfig`), ``timing`` (the sequence timing the
weights were trained for, seconds), ``input_normalisation``, ``ranges``,
``software_version``, ``training`` (provenance) and ``loss_history``.
The shipped prior is ``qalas_bids/data/ssl_pretrained_generic.pt`` (a JSON copy of its
config sits next to it): a *protocol-general* network (``config["protocol_general"]``,
``network.timing_ranges``) that takes the normalised timing as input and serves every
timing inside its ranges. User-trained cohort and ``--save-model`` models use the same
format and are per-protocol (checked against their ``timing`` within 2 %); files written
before protocol-general models (no ``timing_ranges``) load unchanged.
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
from .network import NetworkConfig, QalasNet, timing_features
from ..physics.protocols import out_of_range
from ..physics.timing import SequenceTiming

LOGGER = logging.getLogger("qalas_bids")

MODEL_FORMAT = "qalas-bids-ssl-model"
MODEL_FORMAT_VERSION = 1
#: The one shipped model: protocol-general (timing is a network input), trained over
#: :data:`~..physics.protocols.PROTOCOL_RANGES` by ``scripts/train_pretrained.py``.
DEFAULT_MODEL_NAME = "ssl_pretrained_generic.pt"
#: Relative tolerance on each timing field before a per-protocol model counts as trained
#: for another protocol.
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
        """The protocol it was trained for (protocol-general models: a reference protocol)."""
        return SequenceTiming(**self.config["timing"])

    @property
    def protocol_general(self) -> bool:
        return is_protocol_general(self.config)

    def timing_input(self, timing: SequenceTiming) -> torch.Tensor | None:
        """The network's timing features for ``timing`` (``None``: no timing inputs)."""
        ranges = self.net.config.timing_ranges
        return timing_features(timing, ranges).float() if ranges else None


def default_model_path() -> Path:
    """Path of the shipped protocol-general weights (inside the installed package)."""
    return Path(str(resources.files("qalas_bids") / "data" / DEFAULT_MODEL_NAME))


def is_protocol_general(config: dict[str, Any]) -> bool:
    """Whether a model config is for any timing inside its ranges (not for one protocol)."""
    return bool(config.get("protocol_general")) and bool((config.get("network") or {}).get("timing_ranges"))


def read_config(path: str | Path) -> dict[str, Any]:
    """A model's config, from its JSON copy when there is one (no torch.load needed)."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    return torch.load(path, map_location="cpu", weights_only=True)["config"]


def timing_mismatch(timing: SequenceTiming, config: dict[str, Any]) -> str | None:
    """Why a model with ``config`` does not fit a scan with ``timing`` (``None``: it does).

    Protocol-general models: the fields outside their trained timing ranges; per-protocol
    models: the fields more than :data:`TIMING_RTOL` away from the protocol they were
    trained for.
    """
    if is_protocol_general(config):
        ranges = {k: tuple(v) for k, v in config["network"]["timing_ranges"].items()}
        out = out_of_range(timing, ranges=ranges)
        if not out:
            return None
        return "outside the timing ranges it was trained for: " + ", ".join(
            f"{k} {value:g} (trained {lo:g}-{hi:g})" for k, (value, (lo, hi)) in sorted(out.items()))
    diff = timing.differs_from(SequenceTiming(**config["timing"]), rtol=TIMING_RTOL)
    if not diff:
        return None
    return "trained for another QALAS timing (" + ", ".join(
        f"{k}: scan {a:g} vs model {b:g}" for k, (a, b) in sorted(diff.items())) + ")"


def check_pretrained_timing(timing: SequenceTiming, path: str | Path | None = None) -> None:
    """Refuse (:class:`QalasInputError`) a scan whose timing the model at ``path`` (default:
    the shipped one) was not trained for, naming the fields and the ways out."""
    path = Path(path) if path is not None else default_model_path()
    problem = timing_mismatch(timing, read_config(path))
    if problem:
        raise QalasInputError(
            f"the QALAS timing of this scan is {problem}, so --fit-mode pretrained with {path.name} "
            "would be biased. Use --pretrained-fallback (fine-tunes the model on this scan when "
            "needed), --fit-mode fine-tune or scan-specific, or a model trained for this protocol "
            "(--model, see qalas-bids-train)")


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
    """Load weights saved by :func:`save_model` (``None`` = the shipped protocol-general model).

    When the model was not trained for ``expected_timing`` (the scan's timing; see
    :func:`timing_mismatch`), raises :class:`QalasInputError` naming the fields, unless
    ``force`` (then the mismatch is recorded in ``LoadedModel.warnings``). Never uses the
    network.
    """
    path = Path(path) if path is not None else default_model_path()
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
        problem = timing_mismatch(expected_timing, config)
        if problem:
            message = f"SSL model {path.name} is {problem}; its maps would be biased"
            if not force:
                raise QalasInputError(message + ". Use --fit-mode fine-tune or scan-specific, a model "
                                      "trained for this protocol, or force it (--force-model).")
            loaded.warnings.append(message + " (used anyway because forced)")
            LOGGER.warning(loaded.warnings[-1])
    return loaded
