"""Cohort benchmark (SSL-QALAS Table S3 analogue) on the digital brain.

Subject A (anatomy/noise seed 1, B1 x1.0) is fitted scan-specific and its network saved;
subject B (seed 2, B1 x1.1, other anatomy) is fitted (1) scan-specific, (2) pretrained with
A's model, (3) fine-tuned from A's model. Prints wall time, NRMSE and bias vs ground truth
in WM+GM (voxels >= 80 % one tissue), and the NRMSE between each model and B's scan-specific
maps. Rows "+LM" use the default per-voxel refinement, "net" the pure network output.

    .venv/bin/python benchmarks/bench_cohort.py [--resolution 2] [--slices 10] [--epochs 60]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from qalas_bids.qalas.phantom.digital_brain import make_digital_brain
from qalas_bids.qalas.fitting.ssl import fit_ssl

KEYS = ("t1", "t2", "pd", "ie")


def subject(seed: int, b1_scale: float, resolution: float, slices: int, snr: float):
    brain = make_digital_brain(resolution, snr=snr, seed=seed, anatomy_seed=seed, b1_scale=b1_scale)
    z0 = brain.shape[2] // 2 - slices // 2
    mask = brain.brain_mask.copy()
    mask[:, :, :z0] = False
    mask[:, :, z0 + slices:] = False
    return brain, mask, (brain.tissue_mask("WM") | brain.tissue_mask("GM"))[mask]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=float, default=3.0)
    ap.add_argument("--slices", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--snr", type=float, default=30.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kw = dict(device=args.device, progress=False, num_threads=args.threads)
    a, mask_a, _ = subject(1, 1.0, args.resolution, args.slices, args.snr)
    b, mask_b, sel = subject(2, 1.1, args.resolution, args.slices, args.snr)
    data = (b.signals[mask_b], b.b1[mask_b], b.timing)
    truth = {k: getattr(b, k)[mask_b][sel] for k in KEYS}
    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "subject_A_model.pt")
        t0 = time.perf_counter()
        fit_ssl(a.signals[mask_a], a.b1[mask_a], a.timing, epochs=args.epochs, save_model_path=model, **kw)
        print(f"subject A: {int(mask_a.sum())} voxels, scan-specific training {time.perf_counter() - t0:.1f} s")
        fits = {}
        for refine in (8, 0):
            tag = "+LM" if refine else "net"
            for name, opts in (("scan-specific", dict(epochs=args.epochs)),
                               ("pretrained(A)", dict(mode="pretrained", model_path=model)),
                               ("fine-tune(A)", dict(mode="fine-tune", model_path=model, epochs=args.epochs))):
                t0 = time.perf_counter()
                res = fit_ssl(*data, refine_steps=refine, **opts, **kw)
                fits[f"{name} {tag}"] = (res, time.perf_counter() - t0)
    print(f"subject B: {int(mask_b.sum())} voxels ({int(sel.sum())} WM+GM), SNR {args.snr:g}, B1 x1.1")
    head = f"{'model':22s} {'time s':>7s} {'epochs':>6s} " + " ".join(
        f"{k + ' nrmse':>9s} {k + ' bias%':>9s} {k + ' vsSS':>8s}" for k in KEYS)
    print(head)
    for label, (res, wall) in fits.items():
        ref = fits["scan-specific " + label.split()[-1]][0]
        cells = []
        for k in KEYS:
            v = getattr(res, k)[sel].astype(float)
            t = truth[k]
            nrmse = np.sqrt(np.mean((v - t) ** 2)) / np.mean(t)
            bias = 100 * (np.median(v) / np.median(t) - 1)
            vs = np.sqrt(np.mean((v - getattr(ref, k)[sel]) ** 2)) / np.mean(getattr(ref, k)[sel])
            cells.append(f"{nrmse:9.4f} {bias:9.2f} {vs:8.4f}")
        print(f"{label:22s} {wall:7.1f} {res.info['epochs']:6d} " + " ".join(cells))


if __name__ == "__main__":
    main()
