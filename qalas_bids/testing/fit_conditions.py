"""Per-condition accuracy of every fit mode on simulated voxel sets (CSF and WM/GM).

One voxel set per SNR holds ``n`` voxels of each pure-CSF condition (T1 x T2 grid) plus
``n`` WM and ``n`` GM voxels (the digital brain's tissue values, :data:`TISSUE_PARAMETERS`),
B1 uniform in [0.85, 1.15], Rician noise with ``sigma`` = mean noiseless WM contrast-5
magnitude / SNR (the digital brain's SNR definition), then the noise-floor correction with
the true ``sigma`` (what ``fit_volume`` applies with the background estimate). Every mode
fits the whole set (CSF is fitted among tissue, as in a scan). Per condition and
parameter: the median relative error (bias), the NRMSE (RMS error / truth) and the
NRMSE over the CRLB (RMS of the CRLB SD at the truth / truth); optionally (``hcr=``) the
NRMSE over the Hammersley-Chapman-Robbins bound of the condition at B1 = 1
(:mod:`qalas_bids.qalas.fitting.unbiased_bound`: what no unbiased estimator can beat where
the CRLB is out of reach) and that bound over the CRLB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from ..qalas.fitting.unbiased_bound import hcr_std
from ..qalas.fitting.uncertainty import correct_noise_floor, crlb_std
from ..qalas.phantom.digital_brain import TISSUE_PARAMETERS, add_rician_noise
from ..qalas.physics.signal_model import qalas_magnitude
from ..qalas.physics.timing import SequenceTiming

PARAMS = ("t1", "t2", "pd", "ie")
CSF_T1_S = (3.5, 4.0, 4.5)
CSF_T2_S = (1.2, 1.6, 2.0)
SNRS = (30.0, 60.0, 120.0)
MODES = ("pretrained", "fine-tune", "scan-specific", "dictionary")


@dataclass(frozen=True)
class Row:
    """Accuracy of one mode on one condition: per parameter bias, NRMSE, NRMSE / CRLB;
    for the parameters asked for, NRMSE / HCR bound (``ratio_hcr``) and HCR / CRLB
    (``hcr_over_crlb``) at B1 = 1."""

    mode: str
    snr: float
    condition: str
    bias: dict
    nrmse: dict
    ratio: dict
    ratio_hcr: dict = field(default_factory=dict)
    hcr_over_crlb: dict = field(default_factory=dict)


def condition_parameters(t1s: Iterable[float] = CSF_T1_S, t2s: Iterable[float] = CSF_T2_S) -> list[tuple[str, dict]]:
    """``(name, {t1, t2, pd, ie})`` of every pure-CSF condition of the grid, then WM and GM."""
    csf = TISSUE_PARAMETERS["CSF"]
    rows = [(f"CSF T1 {t1:g} T2 {t2:g}", {**csf, "t1": t1, "t2": t2}) for t1 in t1s for t2 in t2s]
    return rows + [(name, dict(TISSUE_PARAMETERS[name])) for name in ("WM", "GM")]


def noise_sigma(snr: float, timing: SequenceTiming | None = None) -> float:
    """The voxel sets' noise sigma: mean noiseless WM contrast-5 magnitude (B1 = 1) / ``snr``."""
    wm = {k: torch.tensor(float(v)) for k, v in TISSUE_PARAMETERS["WM"].items() if k in PARAMS}
    clean = qalas_magnitude(wm["t1"], wm["t2"], wm["pd"], wm["ie"], torch.tensor(1.0), timing or SequenceTiming())
    return float(clean[..., 4]) / snr


def voxel_set(snr: float, n: int, seed: int = 0, t1s: Iterable[float] = CSF_T1_S,
              t2s: Iterable[float] = CSF_T2_S):
    """``(magnitudes (N, 5) noise-floor corrected, truth {t1, t2, pd, ie, b1}, conditions (N,), sigma)``."""
    rng = np.random.default_rng(seed)
    rows = condition_parameters(t1s, t2s)
    truth = {k: np.concatenate([np.full(n, float(p[k])) for _, p in rows]) for k in PARAMS}
    truth["b1"] = rng.uniform(0.85, 1.15, truth["t1"].size)
    conditions = np.repeat([name for name, _ in rows], n)
    t = {k: torch.as_tensor(v) for k, v in truth.items()}
    clean = qalas_magnitude(t["t1"], t["t2"], t["pd"], t["ie"], t["b1"], SequenceTiming()).numpy()
    sigma = noise_sigma(snr)
    noisy = add_rician_noise(clean, sigma, rng)
    return correct_noise_floor(noisy, sigma), truth, conditions, sigma


def fit_mode(mode: str, mags: np.ndarray, b1: np.ndarray, timing: SequenceTiming, seed: int = 0,
             threads: int | None = None, model_path: str | None = None,
             fluid_restart: bool = False, refine_steps: int = 8) -> dict[str, np.ndarray]:
    """Fitted T1/T2/PD/IE of one mode (SSL modes with ``refine_steps`` per-voxel refinement
    steps; 0 = the network output)."""
    if mode == "dictionary":
        from ..qalas.fitting.dictionary import fit_dictionary
        fit = fit_dictionary(mags, b1, timing, device="cpu", progress=False)
    else:
        from ..qalas.fitting.ssl import fit_ssl
        fit = fit_ssl(mags, b1, timing, mode=mode, device="cpu", seed=seed, progress=False, num_threads=threads,
                      model_path=model_path, fluid_restart=fluid_restart, refine_steps=refine_steps)
    return {p: np.asarray(getattr(fit, p), dtype=np.float64) for p in PARAMS}


def condition_table(modes: Iterable[str] = MODES, snrs: Iterable[float] = SNRS, n: int = 400, seed: int = 0,
                    threads: int | None = None, model_path: str | None = None,
                    fluid_restart: bool = False, refine_steps: int = 8, hcr: Iterable[str] = ()) -> list[Row]:
    """:class:`Row` per mode, SNR and condition (CSF grid, WM, GM); ``model_path`` for the
    pretrained/fine-tune modes (default: the shipped model); ``refine_steps`` for the SSL
    modes (0: the network alone); ``hcr``: parameters (``t1``, ``t2``, ``pd``) whose HCR
    bound is computed per condition (a few seconds each)."""
    timing = SequenceTiming()
    snrs = [float(v) for v in snrs]
    sigmas = np.array([noise_sigma(v, timing) for v in snrs])
    bounds = {(name, p): hcr_std({**theta, "b1": 1.0}, timing, sigmas, p) for name, theta in condition_parameters()
              for p in hcr}
    rows = []
    for i_snr, snr in enumerate(snrs):
        mags, truth, conditions, sigma = voxel_set(snr, n, seed)
        crlb = crlb_std(truth["t1"], truth["t2"], truth["pd"], truth["ie"], truth["b1"], timing, sigma,
                        device="cpu")
        for mode in modes:
            est = fit_mode(mode, mags, truth["b1"], timing, seed, threads,
                           model_path if mode in ("pretrained", "fine-tune") else None,
                           fluid_restart=fluid_restart and mode != "dictionary", refine_steps=refine_steps)
            for cond in dict.fromkeys(conditions):
                sel = conditions == cond
                bias, nrmse, ratio, ratio_hcr, hcr_over_crlb = {}, {}, {}, {}, {}
                for p in PARAMS:
                    tru = truth[p][sel]
                    bias[p] = float(np.median(est[p][sel] / tru - 1))
                    nrmse[p] = float(np.sqrt(np.mean(np.square(est[p][sel] / tru - 1))))
                    bound = float(np.sqrt(np.mean(np.square(crlb[p][sel].astype(np.float64) / tru))))
                    ratio[p] = nrmse[p] / bound
                    if (cond, p) in bounds:
                        b = bounds[(cond, p)]
                        ratio_hcr[p] = nrmse[p] / float(b.std[i_snr] / tru[0])
                        hcr_over_crlb[p] = float(b.std[i_snr] / b.crlb[i_snr])
                rows.append(Row(mode, snr, str(cond), bias, nrmse, ratio, ratio_hcr, hcr_over_crlb))
    return rows


def format_table(rows: list[Row]) -> str:
    """Plain-text table: bias %, NRMSE %, NRMSE/CRLB per parameter; with HCR bounds also
    NRMSE/HCR and HCR/CRLB."""
    with_hcr = [p for p in PARAMS if any(p in r.ratio_hcr for r in rows)]
    head = f"{'mode':<14}{'SNR':>5} {'condition':<22}| " + " | ".join(
        f"{p.upper() + ' bias  NRMSE  /CRLB':<24}" + ("  /HCR HCR/CRLB" if p in with_hcr else "") for p in PARAMS)
    lines = [head]
    for r in rows:
        cells = " | ".join(f"{r.bias[p] * 100:+6.2f}% {r.nrmse[p] * 100:6.2f}% {r.ratio[p]:5.2f}x  "
                           + (f"{r.ratio_hcr[p]:5.2f}x {r.hcr_over_crlb[p]:6.2f}x " if p in r.ratio_hcr else
                              " " * 15 if p in with_hcr else "") for p in PARAMS)
        lines.append(f"{r.mode:<14}{r.snr:5.0f} {r.condition:<22}| {cells}")
    return "\n".join(lines)


def format_summary(rows: list[Row]) -> str:
    """Per mode, SNR and tissue class (WM, GM, CSF = mean bias and RMS NRMSE over the CSF
    conditions): bias / NRMSE in % of T1, T2, PD, IE."""
    lines = [f"{'mode':<14}{'SNR':>5} {'class':<6}| " + " | ".join(f"{p.upper()} bias / NRMSE" for p in PARAMS)]
    for mode, snr in dict.fromkeys((r.mode, r.snr) for r in rows):
        for tissue in ("WM", "GM", "CSF"):
            sel = [r for r in rows if (r.mode, r.snr) == (mode, snr) and r.condition.split()[0] == tissue]
            cells = " | ".join(f"{np.mean([r.bias[p] for r in sel]) * 100:+6.2f}% "
                               f"{np.sqrt(np.mean([r.nrmse[p] ** 2 for r in sel])) * 100:5.1f}%" for p in PARAMS)
            lines.append(f"{mode:<14}{snr:5.0f} {tissue:<6}| {cells}")
    return "\n".join(lines)
