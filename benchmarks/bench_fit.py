#!/usr/bin/env python
"""Benchmark: dictionary matching vs SSL-QALAS modes on the digital brain.

For each resolution and SNR, one digital brain is simulated (``make_digital_brain``) and
every mode fits the same masked voxels in this process (``fit_volume``, uncertainty maps
off so the wall time is the fit alone). Printed per mode: voxels, wall time, time ratio
to the dictionary baseline, and per tissue (voxels with >= 80 % WM, GM or CSF) the median
relative error (bias, %) and NRMSE (%, RMS error / mean truth) of T1/T2/PD/IE, next to
the CRLB (%, RMS of the CRLB std at the true parameters and the true noise sigma / mean
truth): an unbiased estimator cannot have NRMSE below it.

Modes: dictionary, scan-specific, pretrained, fine-tune; append ``-raw`` to an SSL mode
to skip the per-voxel least-squares refinement (network output only).

Example: python benchmarks/bench_fit.py --resolutions 2 --snrs 30 60 120 --device cpu --threads 2
"""
from __future__ import annotations

import argparse
import logging
import resource
import time

import numpy as np
import torch

from qalas_bids.qalas.fitting.fit_volume import fit_volume
from qalas_bids.qalas.phantom.digital_brain import make_digital_brain

PARAMS = ("t1", "t2", "pd", "ie")
TISSUES = ("WM", "GM", "CSF")


def crlb_at_truth(t1, t2, pd, ie, b1, timing, sigma) -> dict[str, np.ndarray]:
    """CRLB std at the true parameters (qalas_bids.qalas.fitting.uncertainty; a small autograd
    fallback while that module is missing)."""
    try:
        from qalas_bids.qalas.fitting.uncertainty import crlb_std
    except ImportError:
        crlb_std = _crlb_fallback
    if crlb_std is _crlb_fallback:
        return crlb_std(t1, t2, pd, ie, b1, timing, sigma)
    return crlb_std(t1, t2, pd, ie, b1, timing, sigma, device="cpu")  # truth yardstick, CPU


def _crlb_fallback(t1, t2, pd, ie, b1, timing, sigma):
    from qalas_bids.qalas.physics.signal_model import qalas_magnitude
    p = torch.tensor(np.stack([t1, t2, pd, ie], 1), dtype=torch.float64, requires_grad=True)
    out = qalas_magnitude(p[:, 0], p[:, 1], p[:, 2], p[:, 3], torch.as_tensor(b1, dtype=torch.float64), timing)
    jac = torch.stack([torch.autograd.grad(out[:, k].sum(), p, retain_graph=True)[0] for k in range(5)], 1)
    fisher = jac.transpose(1, 2) @ jac / sigma ** 2
    inv = torch.linalg.inv(fisher)
    std = torch.sqrt(torch.diagonal(inv, dim1=1, dim2=2)).detach().numpy()
    return {k: std[:, i] for i, k in enumerate(PARAMS)}


def run_mode(mode: str, brain, mask, args) -> tuple[dict[str, np.ndarray], float, dict]:
    method, raw = (mode[:-4], True) if mode.endswith("-raw") else (mode, False)
    ssl_options = {"num_threads": args.threads}
    if raw:
        ssl_options["refine_steps"] = 0
    elif args.refine_steps is not None:
        ssl_options["refine_steps"] = args.refine_steps
    if args.epochs is not None and method in ("scan-specific", "fine-tune"):
        ssl_options["epochs"] = args.epochs
    if method == "dictionary":
        ssl_options = None
    start = time.perf_counter()
    fit = fit_volume(brain.signals, brain.b1, mask, brain.timing, method=method, device=args.device,
                     seed=args.seed, ssl_options=ssl_options, with_uncertainty=False,
                     progress=args.verbose)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return fit.maps, time.perf_counter() - start, fit.info


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Dictionary vs SSL-QALAS on the digital brain")
    parser.add_argument("--resolutions", type=float, nargs="+", default=[2.0])
    parser.add_argument("--snrs", type=float, nargs="+", default=[30.0, 60.0, 120.0])
    parser.add_argument("--modes", nargs="+",
                        default=["dictionary", "scan-specific", "pretrained", "fine-tune"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override SSL epochs")
    parser.add_argument("--refine-steps", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="log training progress")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    for res in args.resolutions:
        for snr in args.snrs:
            brain = make_digital_brain(resolution=res, snr=snr, seed=args.seed)
            mask = brain.brain_mask
            sel = {t: brain.tissue_mask(t, 0.8)[mask] for t in TISSUES}
            truth = {k: getattr(brain, k)[mask] for k in PARAMS}
            crlb = crlb_at_truth(truth["t1"], truth["t2"], truth["pd"], truth["ie"], brain.b1[mask],
                                 brain.timing, brain.sigma)
            print(f"\n## {res:g} mm, SNR {snr:g}: {int(mask.sum())} masked voxels "
                  f"(WM {sel['WM'].sum()}, GM {sel['GM'].sum()}, CSF {sel['CSF'].sum()})")
            head = f"{'mode':<18}{'tissue':<5}{'wall s':>8}{'x dict':>7}{'ep':>4} | " + " | ".join(
                f"{p.upper():^20}" for p in PARAMS)
            print(head + "\n" + " " * 42 + "| " + " | ".join(f"{'bias':>6}{'NRMSE':>7}{'CRLB':>7}" for _ in PARAMS))
            base_time = None
            for mode in args.modes:
                maps, wall, info = run_mode(mode, brain, mask, args)
                if mode == "dictionary":
                    base_time = wall
                ratio = f"{wall / base_time:7.2f}" if base_time else f"{'-':>7}"
                for t in TISSUES:
                    s = sel[t]
                    cells = []
                    for p in PARAMS:
                        est, tru = maps[p][mask][s].astype(np.float64), truth[p][s]
                        bias = np.median(est / tru - 1) * 100
                        nrmse = np.sqrt(np.mean((est - tru) ** 2)) / np.mean(tru) * 100
                        c = np.sqrt(np.mean(np.square(crlb[p][s]))) / np.mean(tru) * 100
                        cells.append(f"{bias:+6.2f}{nrmse:7.2f}{c:7.2f}")
                    print(f"{mode:<18}{t:<5}{wall:8.1f}{ratio}{info.get('epochs', 0):4d} | " + " | ".join(cells))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"\n# peak RSS {rss:.2f} GiB")


if __name__ == "__main__":
    main()
