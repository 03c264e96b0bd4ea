"""The SSL-QALAS per-voxel network (an MLP equivalent to the paper's 1x1-conv blocks).

Each voxel is mapped independently: inputs are the five QALAS magnitudes divided by one
volume scale (see :func:`robust_scale`) and, optionally, the relative B1; outputs are
T1 (s), T2 (s), PD (in units of the volume scale) and IE, each squashed by a sigmoid into
its physical range. Normalisation is per voxel only (``LayerNorm`` over the 64 channels of
one voxel), so a voxel's maps never depend on other voxels.

A *protocol-general* network (``NetworkConfig.timing_inputs``) also takes the sequence
timing as input: the nine fields of :data:`~..physics.protocols.PROTOCOL_RANGES` (``tf``,
``esp``, ``t2p``, ``tc``, ``gap``, ``tr_extra = tr_cycle - 5 gap + trel``, ``tinv``,
``d56``, ``flip_angle``), each mapped linearly from its training range onto [-1, 1] and
appended to every voxel as constant channels (:func:`timing_features`). The ranges used
are stored in the config, so a model keeps its own normalisation when the ranges change.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..physics.bounds import IE_RANGE, T1_RANGE_S, T2_RANGE_S
from ..physics.protocols import PROTOCOL_RANGES, protocol_values

#: Upper bounds of the sigmoid heads (:mod:`.bounds`). T1/T2 in seconds.
T1_MAX = T1_RANGE_S[1]
T2_MAX = T2_RANGE_S[1]
IE_MIN, IE_MAX = IE_RANGE
#: PD bound in units of the volume scale. The paper bounds PD by 1/sin(4 deg) for its own
#: image normalisation; with ours (99th percentile of contrast 5, which for tissue is
#: 0.25-0.8 x PD x sin(alpha)) the same bound is 4/sin(4 deg), i.e. tissue up to about four
#: times brighter than the reference still fits.
PD_MAX = 4.0 / math.sin(math.radians(4.0))


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of :class:`QalasNet` (stored with saved weights)."""

    use_b1_input: bool = True
    hidden: int = 64
    n_blocks: int = 5
    negative_slope: float = 0.01
    t1_max: float = T1_MAX
    t2_max: float = T2_MAX
    pd_max: float = PD_MAX
    ie_min: float = IE_MIN
    ie_max: float = IE_MAX
    #: ``{field: [lo, hi]}`` of the timing inputs (``None`` = no timing inputs: a network
    #: for one protocol, as every model saved before protocol-general ones).
    timing_ranges: dict | None = None

    @property
    def timing_inputs(self) -> bool:
        return bool(self.timing_ranges)

    @property
    def n_inputs(self) -> int:
        return 5 + int(self.use_b1_input) + (len(self.timing_ranges) if self.timing_ranges else 0)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "NetworkConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class QalasNet(nn.Module):
    """Per-voxel MLP: ``n_blocks`` blocks (Linear, LayerNorm, LeakyReLU; the last block is
    the linear head) with sigmoid-bounded outputs.

    ``forward(x)`` takes ``(N, 5)`` normalised magnitudes, with B1 appended when
    ``config.use_b1_input`` and the timing features (:func:`timing_features`) after it when
    ``config.timing_inputs``, and returns ``(N, 4)`` = T1 [s], T2 [s], PD [scale units], IE.
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        c = self.config
        n_in = c.n_inputs
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(c.n_blocks - 1):
            layers += [nn.Linear(width, c.hidden), nn.LayerNorm(c.hidden),
                       nn.LeakyReLU(c.negative_slope)]
            width = c.hidden
        layers.append(nn.Linear(width, 4))
        self.body = nn.Sequential(*layers)
        low = torch.tensor([0.0, 0.0, 0.0, c.ie_min])
        span = torch.tensor([c.t1_max, c.t2_max, c.pd_max, c.ie_max - c.ie_min])
        self.register_buffer("low", low, persistent=False)
        self.register_buffer("span", span, persistent=False)
        with torch.no_grad():  # start near typical tissue rather than mid-range
            self.body[-1].bias.copy_(torch.tensor([-2.2, -3.9, -1.0, 1.0]))  # T1 ~1 s, T2 ~0.1 s

    @property
    def n_inputs(self) -> int:
        return self.config.n_inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.low + self.span * torch.sigmoid(self.body(x))

    def logits_to_params(self, logits: torch.Tensor) -> torch.Tensor:
        return self.low + self.span * torch.sigmoid(logits)


def default_timing_ranges() -> dict[str, list[float]]:
    """The timing-input ranges of a new protocol-general network (:data:`PROTOCOL_RANGES`)."""
    return {k: [float(lo), float(hi)] for k, (lo, hi) in PROTOCOL_RANGES.items()}


def timing_features(timing, ranges: dict) -> torch.Tensor:
    """Timing fields of ``timing`` mapped from ``ranges`` onto [-1, 1]: ``(9,)`` for a
    :class:`~..physics.timing.SequenceTiming`, ``(N, 9)`` for a timing whose fields are
    ``(N,)`` tensors (training batches with one protocol per voxel)."""
    values = protocol_values(timing)
    cols = []
    for name, (lo, hi) in ranges.items():
        v = torch.as_tensor(values[name], dtype=torch.float64)
        cols.append(2.0 * (v - lo) / (hi - lo) - 1.0)
    return torch.stack(cols, dim=-1)


def network_inputs(magnitudes: torch.Tensor, b1: torch.Tensor, scale: float,
                   use_b1_input: bool, timing_input: torch.Tensor | None = None) -> torch.Tensor:
    """Network input ``(N, 5|6[+9])``: magnitudes / ``scale``, optionally B1, optionally the
    timing features ``timing_input`` (``(9,)`` repeated for every voxel, or ``(N, 9)``)."""
    x = magnitudes / scale
    parts = [x]
    if use_b1_input:
        parts.append(b1.reshape(-1, 1).to(x.dtype))
    if timing_input is not None:
        t = timing_input.to(dtype=x.dtype, device=x.device)
        parts.append(t.expand(x.shape[0], -1) if t.ndim == 1 else t)
    return torch.cat(parts, dim=1) if len(parts) > 1 else x


def robust_scale(magnitudes: np.ndarray, percentile: float = 99.0) -> float:
    """Volume scale used to normalise inputs: the ``percentile`` of contrast 5 (the
    brightest, most T1-relaxed contrast) over the masked voxels ``magnitudes (N, 5)``.

    Robust to a few hot voxels; the same scale is applied to every voxel (no cross-voxel
    normalisation inside the network). Raises ``ValueError`` when it is not positive.
    """
    value = float(np.percentile(np.asarray(magnitudes)[:, 4], percentile))
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"robust scale of contrast 5 is {value}: the masked images are empty or zero")
    return value


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
