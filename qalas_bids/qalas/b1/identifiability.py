"""Can relative B1+ be estimated from the five QALAS contrasts? An identifiability check.

B1 enters the app's QALAS model (:mod:`.signal_model`) three times: the readout flip
angle scales the sampled signal (``sin(alpha B1)``) and saturates the Look-Locker trains
(``log cos(alpha B1)``), and the T2-prep angle (``pi/2 B1``) mixes T2 and T1 decay in the
preparation. :func:`b1_information` is the per-voxel Fisher information of B1 when the
voxel's T1, T2, PD and IE are free (the Schur complement of the 5x5 Fisher matrix):
``g' (I - J J+) g / sigma^2`` with ``g = dS/dB1`` and ``J`` the four-parameter Jacobian.

Result (docs/methods.md, "B1 without a B1 map"): the 5x5 Jacobian has rank 4 in WM, GM
and CSF, i.e. a B1 change is absorbed by T1, T2 and PD (IE hardly moves) exactly, not only
to first order: a B1 off by 20 % is fitted with a residual below 0.001 sigma at SNR 60.
A smooth field does not help, since every voxel absorbs the field's value on its own.
Estimating B1 therefore needs another constraint (a prior on tissue T1, or more data), and
:func:`polynomial_basis` with :func:`field_crlb` quantify what such a prior would give.
"""
from __future__ import annotations

import numpy as np
import torch

from ..physics.signal_model import qalas_magnitude, voxelwise_jacobian
from ..physics.timing import SequenceTiming

#: Total polynomial degree of a smooth-field model (35 coefficients at 4).
DEFAULT_DEGREE = 4


def polynomial_basis(coords: np.ndarray, degree: int = DEFAULT_DEGREE,
                     bounds: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[np.ndarray, tuple]:
    """Legendre products ``P_a(x) P_b(y) P_c(z)`` with ``a + b + c <= degree``.

    ``coords (N, 3)`` (mm) are mapped to [-1, 1] by ``bounds`` (default: their own min/max).
    Returns ``(phi (N, K), bounds)``; the first column is 1.
    """
    coords = np.asarray(coords, dtype=np.float64)
    lo, hi = bounds if bounds is not None else (coords.min(0), coords.max(0))
    u = 2.0 * (coords - lo) / np.maximum(hi - lo, 1e-6) - 1.0
    legendre = [np.polynomial.legendre.legvander(u[:, a], degree) for a in range(3)]
    cols = [legendre[0][:, i] * legendre[1][:, j] * legendre[2][:, k]
            for i in range(degree + 1) for j in range(degree + 1 - i) for k in range(degree + 1 - i - j)]
    return np.stack(cols, axis=1), (lo, hi)


def _model(q: torch.Tensor, timing: SequenceTiming) -> torch.Tensor:
    """Magnitudes for ``q = (log T1, log T2, log PD, IE, B1)``."""
    return qalas_magnitude(q[:, 0].exp(), q[:, 1].exp(), q[:, 2].exp(), q[:, 3], q[:, 4], timing)


def _projected_information(params: torch.Tensor, b1: torch.Tensor, timing: SequenceTiming,
                           free: tuple[int, ...]) -> torch.Tensor:
    """Per voxel ``g'g`` with ``g = dS/dB1`` projected off the Jacobian columns of the
    voxel's ``free`` parameters (what those parameters cannot absorb)."""
    q = torch.stack([params[:, 0].log(), params[:, 1].log(), params[:, 2].log(), params[:, 3], b1], 1)
    _, jac = voxelwise_jacobian(lambda x: _model(x, timing), q)
    j4, g = jac[:, :, list(free)], jac[:, :, 4]
    jtj = j4.transpose(1, 2) @ j4
    eye = torch.eye(len(free), dtype=jtj.dtype, device=jtj.device)
    reg = 1e-9 * torch.diagonal(jtj, dim1=1, dim2=2).sum(1)[:, None, None] * eye
    coef = torch.linalg.solve(jtj + reg, (j4.transpose(1, 2) @ g.unsqueeze(-1)))
    g_p = g - (j4 @ coef).squeeze(-1)
    return (g_p * g_p).sum(1)


@torch.no_grad()
def b1_information(t1, t2, pd, ie, b1, timing: SequenceTiming, sigma: float,
                   free: tuple[int, ...] = (0, 1, 2, 3)) -> np.ndarray:
    """Per-voxel Fisher information of B1 (1 / CRLB variance) with the parameters ``free``
    (indices into log T1, log T2, log PD, IE) fitted alongside; the others are known."""
    tensors = [torch.as_tensor(np.asarray(a, dtype=np.float64)).reshape(-1) for a in (t1, t2, pd, ie, b1)]
    n = max(t.numel() for t in tensors)
    t1_, t2_, pd_, ie_, b1_ = (t.expand(n) if t.numel() == 1 else t for t in tensors)
    params = torch.stack([t1_, t2_, pd_, ie_], 1)
    return (_projected_information(params, b1_, timing, free) / sigma ** 2).numpy()


def field_crlb(information: np.ndarray, coords: np.ndarray, degree: int = DEFAULT_DEGREE) -> np.ndarray:
    """CRLB SD of a smooth field ``sum_k c_k phi_k`` at ``coords`` given per-voxel B1
    ``information`` (e.g. :func:`b1_information`): ``sqrt(phi' (Phi' W Phi)^-1 phi)``."""
    phi, _ = polynomial_basis(coords, degree)
    fisher = (phi * np.asarray(information, dtype=np.float64)[:, None]).T @ phi
    cov = np.linalg.pinv(fisher, rcond=1e-15)
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", phi, cov, phi), 0.0))


def no_b1_bias(error: float = 0.10, timing: SequenceTiming | None = None,
               tissues: tuple[str, ...] = ("WM", "GM"), steps: int = 60) -> dict[str, dict[str, float]]:
    """Percent bias of T1, T2 and PD fitted with B1 = 1 when the true B1 is ``1 + error``.

    Noiseless QALAS magnitudes of each tissue (literature parameters of the digital brain)
    at B1 ``1 + error`` are refitted (T1, T2, PD, IE free; Levenberg-Marquardt from the
    truth) with B1 = 1. Because B1 is absorbed exactly (module docstring) the refit leaves
    no residual; the parameter changes are the bias a missing B1 map causes.
    """
    from ..fitting.ssl import refine_least_squares
    from ..phantom.digital_brain import TISSUE_PARAMETERS

    timing = timing or SequenceTiming()
    out = {}
    for tissue in tissues:
        p = TISSUE_PARAMETERS[tissue]
        truth = torch.tensor([[p["t1"], p["t2"], p["pd"], p["ie"]]], dtype=torch.float64)
        data = qalas_magnitude(*truth.unbind(1), torch.tensor([1.0 + error], dtype=torch.float64), timing)
        fit, _ = refine_least_squares(truth.clone(), data, torch.tensor([1.0], dtype=torch.float64), timing,
                                      steps=steps, pd_max=10.0)
        out[tissue] = {name: round(100.0 * (float(fit[0, i]) / float(truth[0, i]) - 1.0), 1)
                       for i, name in enumerate(("T1", "T2", "PD"))}
    return out
