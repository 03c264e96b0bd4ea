"""Compute-device selection (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

Two entry points:

- :func:`resolve_device` turns a spec into a :class:`torch.device` inside the process that
  computes (it may initialise CUDA there);
- :func:`probe_device` answers the same question for a *parent* process that will later
  fork workers (nipype's MultiProc): it asks a short child process, so CUDA is never
  initialised in the parent. A parent with CUDA initialised cannot fork CUDA workers
  ("Cannot re-initialize CUDA in forked subprocess").
"""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field

import torch

from ..errors import DeviceError

LOGGER = logging.getLogger("qalas_bids")
_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
PROBE_TIMEOUT_S = 180.0


def _normalise(spec: str | None) -> str:
    spec = (spec or "auto").strip().lower()
    if not _SPEC.match(spec):
        raise DeviceError(f"invalid device {spec!r}: use auto, cpu, cuda or cuda:N")
    return spec


def _no_gpu_message(spec: str) -> str:
    return (f"--device {spec} requested but no CUDA GPU is visible to torch "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}). "
            "Use --device cpu or auto; in containers pass --gpus all (Docker), "
            "--device nvidia.com/gpu=all (podman) or --nv (Apptainer); on SLURM ask for a GPU "
            "with --gres=gpu:1.")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a user device spec into a :class:`torch.device` (initialises CUDA if used).

    ``auto`` picks CUDA device 0 when available and falls back to the CPU (logged at INFO);
    ``cuda``/``cuda:N`` without a matching GPU raise :class:`DeviceError` with a hint.
    """
    spec = _normalise(spec)
    if spec == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    if spec == "auto":
        if available:
            return torch.device("cuda:0")
        LOGGER.info("No CUDA GPU found: fitting on the CPU (slower, same results).")
        return torch.device("cpu")
    if not available:
        raise DeviceError(_no_gpu_message(spec))
    index = int(spec.split(":")[1]) if ":" in spec else 0
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(f"--device {spec}: only {count} CUDA device(s) visible (cuda:0..cuda:{count - 1}).")
    return torch.device(f"cuda:{index}")


@dataclass(frozen=True)
class DeviceInfo:
    """Outcome of :func:`probe_device`: the resolved device and what the GPU is."""

    device: str
    name: str = "CPU"
    memory_gib: float | None = None
    n_gpus: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def is_cuda(self) -> bool:
        return self.device.startswith("cuda")

    def describe(self) -> str:
        if not self.is_cuda:
            return "cpu"
        mem = f", {self.memory_gib:.0f} GiB" if self.memory_gib else ""
        return f"{self.device} ({self.name}{mem}; {self.n_gpus} GPU(s) visible)"


def _probe_in_this_process(spec: str) -> dict:
    """Resolve ``spec`` here and touch the GPU once (run in the probe child)."""
    dev = resolve_device(spec)
    out = {"device": str(dev), "name": "CPU", "memory_gib": None, "n_gpus": 0}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        torch.zeros(1, device=dev).add_(1).item()  # a broken driver fails here, not mid-fit
        out.update(name=props.name, memory_gib=props.total_memory / 2**30,
                   n_gpus=torch.cuda.device_count())
    return out


def _probe_main() -> None:  # entry of the child process started by probe_device
    spec = sys.argv[1] if len(sys.argv) > 1 else "auto"
    try:
        result = {"ok": True, **_probe_in_this_process(spec)}
    except DeviceError as exc:
        result = {"ok": False, "error": str(exc)}
    except Exception as exc:  # a broken driver or CUDA runtime: report it, do not crash
        result = {"ok": False, "error": f"--device {spec}: the GPU could not be used "
                                        f"({type(exc).__name__}: {exc}). Use --device cpu, or fix "
                                        "the NVIDIA driver / container GPU options."}
    print("QALAS_DEVICE_PROBE " + json.dumps(result), flush=True)


def probe_device(spec: str = "auto", *, timeout: float = PROBE_TIMEOUT_S) -> DeviceInfo:
    """Resolve ``spec`` without initialising CUDA in this process.

    ``cpu`` and CPU-only torch builds are answered here; otherwise a child Python process
    resolves the device and allocates one element on it. Raises :class:`DeviceError`
    (with a hint) when a requested GPU is missing or unusable.
    """
    spec = _normalise(spec)
    if spec == "cpu":
        return DeviceInfo("cpu")
    if not torch.backends.cuda.is_built():  # CPU-only torch: no CUDA to poison
        if spec == "auto":
            LOGGER.info("No CUDA GPU found (CPU-only torch build): fitting on the CPU.")
            return DeviceInfo("cpu", notes=["CPU-only torch build"])
        raise DeviceError(_no_gpu_message(spec))
    code = "from qalas_bids.qalas.fitting.device import _probe_main; _probe_main()"
    try:
        proc = subprocess.run([sys.executable, "-c", code, spec], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise DeviceError(f"--device {spec}: checking the GPU took more than {timeout:.0f} s "
                          "(a hung driver?): use --device cpu or check nvidia-smi") from exc
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("QALAS_DEVICE_PROBE ")), None)
    if line is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise DeviceError(f"--device {spec}: the device check failed (exit {proc.returncode}): "
                          + " | ".join(tail))
    result = json.loads(line.split(" ", 1)[1])
    if not result.pop("ok"):
        raise DeviceError(result["error"])
    if result["device"] == "cpu" and spec == "auto":
        LOGGER.info("No CUDA GPU found: fitting on the CPU (slower, same results).")
    return DeviceInfo(**result)
