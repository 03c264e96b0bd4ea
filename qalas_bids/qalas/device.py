"""Compute-device selection (``auto``, ``cpu``, ``cuda``, ``cuda:N``)."""
from __future__ import annotations

import logging
import re

import torch

from .errors import DeviceError

LOGGER = logging.getLogger("qalas_bids")
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a user device spec into a :class:`torch.device`.

    ``auto`` picks CUDA device 0 when available and falls back to the CPU (logged at INFO);
    ``cuda``/``cuda:N`` without a matching GPU raise :class:`DeviceError` with a hint.
    """
    spec = (spec or "auto").strip().lower()
    if not _SPEC.match(spec):
        raise DeviceError(f"invalid device {spec!r}: use auto, cpu, cuda or cuda:N")
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto":
        if available:
            return torch.device("cuda:0")
        LOGGER.info("No CUDA GPU found: fitting on the CPU (slower, same results).")
        return torch.device("cpu")
    if not available:
        raise DeviceError(
            f"--device {spec} requested but no CUDA GPU is visible to torch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}). "
            "Use --device cpu or auto; in containers pass --gpus all (Docker) or --nv (Apptainer)."
        )
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"--device {spec}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1}).")
    return torch.device(f"cuda:{index}")
