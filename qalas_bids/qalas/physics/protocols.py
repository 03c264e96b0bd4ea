"""The space of 3D-QALAS protocols the app is built and tested for: ranges and a sampler.

Sites change echo spacing, turbo factor, flip angle and the readout spacing with matrix,
bandwidth and acceleration, and vendors differ in the T2-prep and inversion blocks. These
ranges span the three vendor presets of :mod:`.timing` (Siemens, Philips, GE; from the HBCD
cross-vendor sidecars and the shared physics notes) with margin:

=============  ==============  ============================================================
field          range           where it comes from
=============  ==============  ============================================================
tf             96 - 160        presets 128 (GE acquires 130, 2 dummies); matrices 160-256
                               with partial Fourier / acceleration give 96-160 echoes
esp (s)        0.0040 - 0.0075 presets 5.6-5.8 ms; bandwidth 150-400 Hz/px moves it +-1.5 ms
t2p (s)        0.080 - 0.120   presets 92.8 (GE), 107 (Philips), 109.7 (Siemens) ms
tc (s)         0.002 - 0.012   presets 2.34 (GE), 6.22 (Philips), 9.7 (Siemens) ms
gap (s)        0.60 - 1.00     0.9 s standard; GE protocols with 0.6-0.667 s seen
tr_cycle (s)   5 gap + 0-0.6   the presets play no extra relaxation (tr_cycle = 5 gap)
tinv (s)       0.010 - 0.020   presets 12.8 (Siemens), 13.1 (Philips), 16.2 (GE) ms
d56 (s)        0.080 - 0.110   presets 89.4 (GE), 93.6 (Siemens), 107 (Philips) ms
trel (s)       0               no vendor plays it
flip_angle     3 - 6 deg       4 deg in every preset
=============  ==============  ============================================================

A sampled protocol must also be playable (:meth:`.timing.SequenceTiming.validate`: the
echo train fits between the T2 preparation / inversion and the next readout); draws that
are not are rejected and drawn again.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from .timing import SequenceTiming, TimingError

#: Closed ranges of each timing field (seconds; degrees for the flip angle; ``tf`` integer).
#: ``tr_cycle`` is given as the extra relaxation ``tr_cycle - 5 * gap``.
PROTOCOL_RANGES: Mapping[str, tuple[float, float]] = {
    "tf": (96, 160),
    "esp": (0.0040, 0.0075),
    "t2p": (0.080, 0.120),
    "tc": (0.002, 0.012),
    "gap": (0.60, 1.00),
    "tr_extra": (0.0, 0.6),
    "tinv": (0.010, 0.020),
    "d56": (0.080, 0.110),
    "flip_angle": (3.0, 6.0),
}


def sample_protocol(rng: np.random.Generator, *, vendor: str = "custom", max_tries: int = 1000) -> SequenceTiming:
    """One playable protocol drawn uniformly from :data:`PROTOCOL_RANGES` (rejection sampling)."""
    for _ in range(max_tries):
        draw = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in PROTOCOL_RANGES.items()}
        tf = int(round(draw.pop("tf")))
        extra = draw.pop("tr_extra")
        try:
            return SequenceTiming(tf=tf, tr_cycle=5 * draw["gap"] + extra, trel=0.0, vendor=vendor, **draw)
        except TimingError:
            continue
    raise RuntimeError(f"no playable protocol in {max_tries} draws from PROTOCOL_RANGES")


def protocol_values(timing) -> dict:
    """The fields of :data:`PROTOCOL_RANGES` of ``timing`` (``tr_extra = tr_cycle - 5 gap +
    trel``, the only way ``tr_cycle`` and ``trel`` enter the signal). Works for a
    :class:`SequenceTiming` and for any object with the same attributes as tensors."""
    values = {name: getattr(timing, name) for name in PROTOCOL_RANGES if name != "tr_extra"}
    values["tr_extra"] = timing.tr_cycle - 5 * timing.gap + timing.trel
    return values


def out_of_range(timing: SequenceTiming, rtol: float = 1e-6,
                 ranges: Mapping[str, tuple[float, float]] | None = None) -> dict[str, tuple[float, tuple[float, float]]]:
    """Fields of ``timing`` outside ``ranges`` (default :data:`PROTOCOL_RANGES`):
    ``{field: (value, (lo, hi))}``."""
    values = protocol_values(timing)
    out = {}
    for name, (lo, hi) in (ranges or PROTOCOL_RANGES).items():
        value = float(values[name])
        slack = rtol * max(abs(lo), abs(hi), 1.0)
        if not (lo - slack <= value <= hi + slack) or not math.isfinite(value):
            out[name] = (value, (lo, hi))
    return out


class ProtocolBatch:
    """Timings of many protocols as ``(N,)`` float64 tensors, one per voxel, with the
    attributes the signal model reads (``etl``, ``flip_angle_rad``, ...): the signal model
    broadcasts them against the voxel parameters, so a batch mixes protocols."""

    FIELDS = ("tf", "esp", "t2p", "tc", "gap", "tr_cycle", "tinv", "d56", "trel", "flip_angle")

    def __init__(self, timings: list[SequenceTiming]) -> None:
        import torch

        for name in self.FIELDS:
            setattr(self, name, torch.tensor([float(getattr(t, name)) for t in timings], dtype=torch.float64))

    def take(self, index) -> "ProtocolBatch":
        """The protocols at ``index`` (a tensor of indices) as a new batch."""
        out = object.__new__(ProtocolBatch)
        for name in self.FIELDS:
            setattr(out, name, getattr(self, name)[index])
        return out

    @property
    def etl(self):
        return self.tf * self.esp

    @property
    def flip_angle_rad(self):
        return self.flip_angle * (math.pi / 180.0)
