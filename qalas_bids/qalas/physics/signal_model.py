"""Vectorised, differentiable 3D-QALAS steady-state signal model (torch).

The model follows the shared physics notes: a cycle of T2 preparation, five turbo-FLASH
readout trains and one inversion. Every operation on the longitudinal magnetisation is
affine, so the whole cycle maps ``M_start -> A * M_start + B`` and the steady state is the
fixed point ``M = B / (1 - A)`` (one division, no loop over cycles).
"""
from __future__ import annotations

import math

import torch

from .timing import SequenceTiming

N_CONTRASTS = 5


class _Affine:
    """Magnetisation as an affine function of the cycle's starting value: ``a*M_start + b``."""

    __slots__ = ("a", "b")

    def __init__(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.a, self.b = a, b

    def recover(self, delay: float, t1: torch.Tensor, m0: torch.Tensor) -> None:
        e = torch.exp(-delay / t1)
        self.a = self.a * e
        self.b = m0 * (1 - e) + self.b * e

    def scale(self, factor: torch.Tensor) -> None:
        self.a = self.a * factor
        self.b = self.b * factor

    def relax_towards(self, target: torch.Tensor, e: torch.Tensor) -> None:
        self.a = self.a * e
        self.b = target * (1 - e) + self.b * e


def _as_tensor(x, like: torch.Tensor | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=torch.float64)


class _Train:
    """Per-voxel quantities shared by every readout train and the T2 preparation."""

    def __init__(self, t1, t2, pd, ie, b1, timing: SequenceTiming) -> None:
        t1 = _as_tensor(t1)
        t2, pd, ie, b1 = (_as_tensor(x, t1) for x in (t2, pd, ie, b1))
        self.t1, self.t2, self.pd, self.ie, b1 = torch.broadcast_tensors(t1, t2, pd, ie, b1)
        alpha = timing.flip_angle_rad * b1
        theta = (math.pi / 2) * b1
        esp, etl = timing.esp, timing.etl
        # Look-Locker readout train in closed form.
        inv_t1_star = 1.0 / self.t1 - torch.log(torch.cos(alpha)) / esp
        # expm1 keeps float32 precision when esp/T1 ~ 1e-3.
        self.m0_star = self.pd * torch.expm1(-esp / self.t1) / torch.expm1(-esp * inv_t1_star)
        self.e_train = torch.exp(-etl * inv_t1_star)
        self.sin_alpha = torch.sin(alpha)
        prep = timing.t2p - timing.tc
        self.t2prep = (torch.sin(theta) ** 2 * torch.exp(-prep / self.t2)
                       + torch.cos(theta) ** 2 * torch.exp(-prep / self.t1))


def qalas_signal(
    t1: torch.Tensor,
    t2: torch.Tensor,
    pd: torch.Tensor,
    ie: torch.Tensor,
    b1: torch.Tensor,
    timing: SequenceTiming,
) -> torch.Tensor:
    """Signed first-echo signals of the five QALAS contrasts in steady state.

    Parameters
    ----------
    t1, t2 : relaxation times in seconds, any broadcastable shape ``(...)``
    pd : proton density / M0 (arbitrary units)
    ie : inversion efficiency (0.5-1)
    b1 : relative transmit field (1 = nominal)
    timing : sequence timing

    Returns
    -------
    torch.Tensor of shape ``(..., 5)``, dtype/device of ``t1``.
    """
    v = _Train(t1, t2, pd, ie, b1, timing)
    t1, pd, ie = v.t1, v.pd, v.ie
    m0_star, e_train, sin_alpha, t2prep = v.m0_star, v.e_train, v.sin_alpha, v.t2prep
    etl = timing.etl

    m = _Affine(torch.ones_like(t1), torch.zeros_like(t1))
    before_readout: list[_Affine] = []

    def readout() -> None:
        before_readout.append(_Affine(m.a, m.b))
        m.relax_towards(m0_star, e_train)

    gap_free = timing.gap - etl
    m.recover(gap_free - timing.t2p, t1, pd)
    m.scale(t2prep)
    m.recover(timing.tc, t1, pd)
    readout()
    m.recover(gap_free - timing.tinv - timing.d56, t1, pd)
    m.scale(-ie)
    m.recover(timing.d56, t1, pd)
    readout()
    for _ in range(3):
        m.recover(gap_free, t1, pd)
        readout()
    m.recover(timing.tr_cycle - 5 * timing.gap + timing.trel, t1, pd)

    m_ss = m.b / (1 - m.a)
    return torch.stack([(r.a * m_ss + r.b) * sin_alpha for r in before_readout], dim=-1)


def voxelwise_jacobian(fn, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Values ``(N, K)`` and Jacobian ``(N, K, P)`` of a voxel-wise ``fn: (N, P) -> (N, K)``.

    Voxels are independent, so the gradient of the summed k-th output is row k of every
    voxel's Jacobian: K reverse-mode passes (several times faster than forward-mode AD in
    torch, and free of its one-off decomposition set-up). Works under ``torch.no_grad``.
    """
    with torch.enable_grad():
        x = params.detach().requires_grad_(True)
        out = fn(x)
        k = out.shape[-1]
        rows = [torch.autograd.grad(out[:, i].sum(), x, retain_graph=i < k - 1)[0] for i in range(k)]
    return out.detach(), torch.stack(rows, dim=1)


def qalas_magnitude(t1, t2, pd, ie, b1, timing: SequenceTiming) -> torch.Tensor:
    """Magnitude ``|S_k|`` of :func:`qalas_signal` (what reconstructed images contain)."""
    return qalas_signal(t1, t2, pd, ie, b1, timing).abs()


def qalas_signal_repeated(t1, t2, pd, ie, b1, timing: SequenceTiming,
                          n_cycles: int = 20) -> torch.Tensor:
    """Reference implementation: play ``n_cycles`` cycles from ``M = M0`` explicitly.

    Only for validating the closed-form steady state; slow and not differentiable-optimal.
    """
    v = _Train(t1, t2, pd, ie, b1, timing)
    t1, pd, ie = v.t1, v.pd, v.ie
    etl = timing.etl

    def rec(m, delay):
        e = torch.exp(-delay / t1)
        return pd * (1 - e) + m * e

    m = pd.clone()
    signals = []
    for _ in range(n_cycles):
        signals = []
        m = rec(m, timing.gap - etl - timing.t2p)
        m = m * v.t2prep
        m = rec(m, timing.tc)
        for k in range(5):
            if k == 1:
                m = rec(m, timing.gap - etl - timing.tinv - timing.d56)
                m = -ie * m
                m = rec(m, timing.d56)
            elif k > 1:
                m = rec(m, timing.gap - etl)
            signals.append(m * v.sin_alpha)
            m = v.m0_star * (1 - v.e_train) + m * v.e_train
        m = rec(m, timing.tr_cycle - 5 * timing.gap + timing.trel)
    return torch.stack(signals, dim=-1)
