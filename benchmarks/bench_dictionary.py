"""Benchmark of dictionary matching on the digital brain.

Prints, per resolution: brain voxels, build/match wall time, peak memory, agreement of the
default coarse-to-fine search with the exhaustive search on a sample, and per tissue
(WM, GM, CSF: fraction > 0.8) and SNR the median relative error (bias) and the NRMSE
(RMS error / mean truth) of T1, T2, PD and IE against the ground truth.

Example::

    python benchmarks/bench_dictionary.py --resolutions 2 --snrs 30 60 120 --device cpu
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import time

import numpy as np
import torch

from qalas_bids.qalas.fitting.device import resolve_device
from qalas_bids.qalas.fitting.dictionary import fit_dictionary
from qalas_bids.qalas.fitting.results import PARAMETERS
from qalas_bids.qalas.physics.signal_model import qalas_magnitude
from qalas_bids.qalas.physics.timing import PRESETS

TISSUES = ("WM", "GM", "CSF")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _brute_agreement(mags: np.ndarray, b1: np.ndarray, timing, device: str, n_sample: int,
                     rng: np.random.Generator) -> dict[str, float]:
    """Coarse-to-fine vs exhaustive search on voxels of the 2 most populated B1 bins."""
    bins = np.clip(np.floor((np.clip(b1, 0.65, 1.35) - 0.65) / 0.007).astype(int), 0, 99)
    top = np.argsort(np.bincount(bins, minlength=100))[-2:]
    candidates = np.flatnonzero(np.isin(bins, top))
    sel = rng.choice(candidates, size=min(n_sample, candidates.size), replace=False)
    fast = fit_dictionary(mags[sel], b1[sel], timing, device=device, progress=False)
    brute = fit_dictionary(mags[sel], b1[sel], timing, device=device, grid="paper", progress=False)
    same = (fast.t1 == brute.t1) & (fast.t2 == brute.t2) & (fast.ie == brute.ie)
    return {"n": int(sel.size), "identical": float(same.mean()),
            "median_abs_dt1_s": float(np.median(np.abs(fast.t1 - brute.t1))),
            "brute_s": brute.info["wall_time_s"]["total"]}


#: Tissue values of the synthetic (no-phantom) mode: T1, T2 (s), PD, IE.
SYNTHETIC = {"WM": (0.85, 0.075, 0.69, 0.88), "GM": (1.35, 0.095, 0.80, 0.88), "CSF": (4.2, 1.8, 1.0, 0.98)}


def _synthetic_brain(n: int, snr: float, seed: int = 0):
    """Stand-in for the digital brain without nibabel/nilearn: n tissue voxels, +-5 %
    parameter spread, B1 0.75-1.2, SNR = WM contrast 5 / sigma."""
    from types import SimpleNamespace
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    params = np.array([SYNTHETIC[t] for t in TISSUES])[labels] * rng.uniform(0.95, 1.05, (n, 4))
    params[:, 3] = np.minimum(params[:, 3], 1.0)
    b1 = rng.uniform(0.75, 1.2, n)
    as_t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    clean = qalas_magnitude(*[as_t(params[:, j]) for j in range(4)], as_t(b1), PRESETS["siemens"]).numpy()
    wm_s5 = float(qalas_magnitude(*[as_t(v) for v in SYNTHETIC["WM"]], 1.0, PRESETS["siemens"])[4])
    fractions = {t: (labels == k).astype(float)[:, None, None] for k, t in enumerate(TISSUES)}
    shape3 = (n, 1, 1)
    return SimpleNamespace(
        shape=shape3, brain_mask=np.ones(shape3, bool), timing=PRESETS["siemens"],
        t1=params[:, 0].reshape(shape3), t2=params[:, 1].reshape(shape3), pd=params[:, 2].reshape(shape3),
        ie=params[:, 3].reshape(shape3), b1=b1.reshape(shape3), noiseless=clean.reshape(shape3 + (5,)),
        sigma=wm_s5 / snr, snr=snr, tissue_mask=lambda name, f=0.8: fractions[name] > f)


def _add_rician_noise(signals: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.abs(signals + sigma * rng.standard_normal(signals.shape)
                  + 1j * sigma * rng.standard_normal(signals.shape))


def run(resolution: float, snrs: list[float], device: str, brute_sample: int, synthetic: int = 0) -> None:
    t0 = time.perf_counter()
    if synthetic:
        brain = _synthetic_brain(synthetic, snrs[0])
        resolution = float("nan")
    else:
        from qalas_bids.qalas.phantom.digital_brain import make_digital_brain
        brain = make_digital_brain(resolution=resolution, snr=snrs[0], seed=0)
    mask = brain.brain_mask
    print(f"\n## {'Synthetic tissue voxels' if synthetic else 'Digital brain'} {resolution:g} mm: grid {brain.shape}, {int(mask.sum())} brain voxels "
          f"(phantom built in {time.perf_counter() - t0:.1f} s)")
    truth = {name: getattr(brain, name)[mask] for name in PARAMETERS}
    b1 = brain.b1[mask]
    tissue = {name: brain.tissue_mask(name, 0.8)[mask] for name in TISSUES}
    rng = np.random.default_rng(1)
    header = "| SNR | tissue | n | " + " | ".join(f"{p} bias % | {p} NRMSE %" for p in PARAMETERS) + " |"
    rows = []
    timings = []
    for snr in snrs:
        sigma = brain.sigma * brain.snr / snr
        mags = _add_rician_noise(brain.noiseless[mask], sigma, rng)
        dev = resolve_device(device)
        if dev.type == "cuda":
            torch.zeros(1, device=dev)  # initialise CUDA before touching its statistics
            torch.cuda.reset_peak_memory_stats(dev)
        fit = fit_dictionary(mags, b1, brain.timing, device=device, progress=False)
        wall = fit.info["wall_time_s"]
        gpu_peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else 0.0
        timings.append((snr, wall["build"], wall["match"], wall["total"], _peak_rss_mb(), gpu_peak))
        for name in TISSUES:
            sel = tissue[name]
            cells = []
            for p in PARAMETERS:
                est, ref = getattr(fit, p)[sel].astype(np.float64), truth[p][sel]
                bias = 100 * np.median(est / ref - 1)
                nrmse = 100 * np.sqrt(np.mean((est - ref) ** 2)) / np.mean(ref)
                cells.append(f"{bias:+.1f} | {nrmse:.1f}")
            rows.append(f"| {snr:g} | {name} | {int(sel.sum())} | " + " | ".join(cells) + " |")
        if brute_sample and snr == snrs[0]:
            agree = _brute_agreement(mags, b1, brain.timing, device, brute_sample, rng)
            print(f"coarse-to-fine vs exhaustive paper grid (SNR {snr:g}, {agree['n']} voxels in 2 B1 bins): "
                  f"identical atoms {100 * agree['identical']:.1f} %, median |dT1| "
                  f"{1000 * agree['median_abs_dt1_s']:.1f} ms (exhaustive took {agree['brute_s']:.1f} s)")
    print(f"device {fit.info['device']}, torch threads {torch.get_num_threads()}, "
          f"{fit.info['n_atoms']} atoms per B1 bin (paper grid, T2 > T1 dropped)")
    print("| SNR | build s | match s | total s | peak RSS MB | peak GPU MB |")
    print("|---|---|---|---|---|---|")
    for snr, build, match, total, rss, gpu in timings:
        print(f"| {snr:g} | {build:.2f} | {match:.2f} | {total:.2f} | {rss:.0f} | {gpu:.0f} |")
    print(header)
    print("|" + "---|" * (3 + 2 * len(PARAMETERS)))
    print("\n".join(rows))
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=float, nargs="+", default=[2.0])
    parser.add_argument("--snrs", type=float, nargs="+", default=[30.0, 60.0, 120.0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--brute-sample", type=int, default=0,
                        help="voxels for the exhaustive-search agreement check (0: skip)")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="use N simulated WM/GM/CSF voxels instead of the digital brain")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    for resolution in ([0.0] if args.synthetic else args.resolutions):
        run(resolution, args.snrs, args.device, args.brute_sample, args.synthetic)


if __name__ == "__main__":
    main()
