#!/usr/bin/env python
"""Identifiability of relative B1+ from the five QALAS contrasts (docs/methods.md).

Prints (1) the per-voxel Cramér-Rao SD of B1 for WM, GM and CSF at B1 0.7/1.0/1.3 and SNR
30/60/120 with T1, T2, PD, IE free, with IE known, and with T1 known; (2) how well a
B1 error is absorbed: the best residual (in noise SDs at SNR 60) after refitting T1, T2,
PD and IE with B1 off by 5, 10 and 20 %; (3) the CRLB of a smooth (degree-4 polynomial)
field over the 2 mm digital brain at SNR 60 under the same three assumptions.
Usage: python scripts/b1_identifiability.py (about 20 s on 2 cores).
"""
from __future__ import annotations

import numpy as np
import torch

from qalas_bids.qalas.b1.identifiability import b1_information, field_crlb
from qalas_bids.qalas.phantom.digital_brain import TISSUE_PARAMETERS, make_digital_brain
from qalas_bids.qalas.physics.signal_model import qalas_magnitude
from qalas_bids.qalas.fitting.ssl import refine_least_squares
from qalas_bids.qalas.physics.timing import SequenceTiming

CASES = {"all four free": (0, 1, 2, 3), "IE known": (0, 1, 2), "T1 known": (1, 2, 3)}


def _percent(information: float) -> str:
    return "inf" if information <= 0 else f"{100 / np.sqrt(information):.3g} %"


def main() -> None:
    timing = SequenceTiming()
    wm = TISSUE_PARAMETERS["WM"]
    ref = float(qalas_magnitude(*(torch.tensor([wm[k]], dtype=torch.float64) for k in ("t1", "t2", "pd", "ie")),
                                torch.tensor([1.0], dtype=torch.float64), timing)[0, 4])
    print("1. Per-voxel CRLB SD of B1")
    for case, free in CASES.items():
        for snr in (30, 60, 120):
            cells = [f"{t}@{b1}: {_percent(b1_information(p['t1'], p['t2'], p['pd'], p['ie'], b1, timing, ref / snr, free)[0])}"
                     for t, p in TISSUE_PARAMETERS.items() for b1 in (0.7, 1.0, 1.3)]
            print(f"  {case:<14} SNR {snr:>3}: " + ", ".join(cells))
    print("2. B1 error absorbed by refitting T1, T2, PD, IE (SNR 60 noise SD units)")
    for t, p in TISSUE_PARAMETERS.items():
        truth = torch.tensor([[p["t1"], p["t2"], p["pd"], p["ie"]]], dtype=torch.float64)
        clean = qalas_magnitude(*truth.unbind(1), torch.tensor([1.0], dtype=torch.float64), timing)
        for err in (0.05, 0.10, 0.20):
            b1 = torch.tensor([1.0 + err], dtype=torch.float64)
            fit, _ = refine_least_squares(truth.clone(), clean, b1, timing, steps=60, pd_max=10.0)
            res = float((qalas_magnitude(*fit.unbind(1), b1, timing) - clean).norm()) / (ref / 60)
            print(f"  {t:<4} B1 off by {err:+.0%}: residual {res:.4f} SD; T1 {float(fit[0, 0]) / p['t1'] - 1:+.1%}, "
                  f"T2 {float(fit[0, 1]) / p['t2'] - 1:+.1%}, PD {float(fit[0, 2]) / p['pd'] - 1:+.1%}, "
                  f"IE {float(fit[0, 3]) - p['ie']:+.3f}")
    print("3. Smooth field (Legendre, total degree 4, 35 coefficients), 2 mm digital brain, SNR 60")
    brain = make_digital_brain(resolution=2.0, snr=60)
    m = brain.brain_mask
    coords = np.argwhere(m) * 2.0
    for case, free in CASES.items():
        info = b1_information(brain.t1[m], brain.t2[m], brain.pd[m], brain.ie[m], brain.b1[m], timing,
                              brain.sigma, free)
        sd = field_crlb(info, coords)
        print(f"  {case:<14}: field CRLB median {100 * np.median(sd):.3g} %, max {100 * sd.max():.3g} %")


if __name__ == "__main__":
    main()
