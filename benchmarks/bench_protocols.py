#!/usr/bin/env python
"""Benchmark: the protocol-general pretrained model on random valid QALAS protocols.

For each of ``--n-protocols`` timings drawn by ``sample_protocol`` (seeded), the digital
head is simulated with that timing (``make_digital_brain``, same anatomy, new noise) and
fitted with ``fit_volume(method="pretrained")`` (network + per-voxel refinement, no
uncertainty maps) inside the phantom's head mask (the noise level comes from outside it). Printed per protocol: the timing, the wall
time and the median relative error (%) of T1/T2/PD/IE over pure WM and GM voxels
(fraction > 0.9). Then the time per run against the per-protocol model of 0.1
(tests/data/ssl_model_v0_siemens.pt, without the fluid restart: the pretrained path of 0.1)
on the Siemens preset, both run in this process (``--model``: benchmark another file) (alternating, median of ``--repeats``):
the ratio new / old.

Example: nice -n 10 python benchmarks/bench_protocols.py --threads 2
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from qalas_bids.qalas.fitting.fit_volume import fit_volume
from qalas_bids.qalas.phantom.digital_brain import make_digital_brain
from qalas_bids.qalas.physics.protocols import sample_protocol
from qalas_bids.qalas.physics.timing import get_preset

PARAMS = ("t1", "t2", "pd", "ie")
TISSUES = ("WM", "GM")
OLD_MODEL = Path(__file__).resolve().parents[1] / "tests" / "data" / "ssl_model_v0_siemens.pt"


def head_mask(head):
    """The app's head mask (the noise level comes from outside it; a brain mask would count the
    scalp as background)."""
    if head.head_mask is not None:
        return head.head_mask
    return head.brain_mask


def fit_pretrained(head, threads: int, model_path: str | None = None, fluid_restart: bool = True):
    start = time.perf_counter()
    fit = fit_volume(head.signals, head.b1, head_mask(head), head.timing, method="pretrained", device="cpu",
                     model_path=model_path, ssl_options={"num_threads": threads, "fluid_restart": fluid_restart},
                     with_uncertainty=False,
                     progress=False)
    return fit, time.perf_counter() - start


def median_bias(head, fit) -> dict[tuple[str, str], float]:
    """Median relative error per (tissue, parameter) over voxels with tissue fraction > 0.9."""
    out = {}
    for tissue in TISSUES:
        sel = head.tissue_fractions[tissue] > 0.9
        for p in PARAMS:
            out[tissue, p] = float(np.median(fit.maps[p][sel] / getattr(head, p)[sel] - 1))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--n-protocols", type=int, default=20)
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--snr", type=float, default=60.0)
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--anatomy", default="head", choices=("head", "brain"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="model file to benchmark (default: the shipped one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    cols = " ".join(f"{t}-{p.upper():<3}" for t in TISSUES for p in PARAMS)
    print(f"# {args.resolution:g} mm {args.anatomy}, SNR {args.snr:g}, threads {args.threads}; "
          "median relative error in %")
    print(f"{'#':>2} {'tf':>4} {'esp ms':>6} {'t2p ms':>6} {'tc ms':>5} {'gap':>5} {'TRx':>5} {'tinv':>5} "
          f"{'d56':>5} {'FA':>4} {'wall s':>6} | {cols}")
    worst: dict[tuple[str, str], float] = {}
    for k in range(args.n_protocols):
        timing = sample_protocol(rng)
        head = make_digital_brain(resolution=args.resolution, snr=args.snr, seed=k, anatomy_seed=0,
                                  timing=timing, anatomy=args.anatomy)
        fit, wall = fit_pretrained(head, args.threads, args.model)
        bias = median_bias(head, fit)
        for key, value in bias.items():
            worst[key] = max(worst.get(key, 0.0), abs(value))
        extra = timing.tr_cycle - 5 * timing.gap + timing.trel
        print(f"{k:2d} {timing.tf:4d} {timing.esp * 1e3:6.2f} {timing.t2p * 1e3:6.1f} {timing.tc * 1e3:5.1f} "
              f"{timing.gap:5.3f} {extra:5.3f} {timing.tinv * 1e3:5.1f} {timing.d56 * 1e3:5.1f} "
              f"{timing.flip_angle:4.1f} {wall:6.1f} | "
              + " ".join(f"{bias[key] * 100:+7.2f}" for key in ((t, p) for t in TISSUES for p in PARAMS)), flush=True)
    print("worst |median bias| %: " + " ".join(f"{t}-{p.upper()} {v * 100:.2f}" for (t, p), v in worst.items()))

    head = make_digital_brain(resolution=args.resolution, snr=args.snr, seed=99, anatomy_seed=0,
                              timing=get_preset("siemens"), anatomy=args.anatomy)
    times = {"old": [], "new": [], "fluid": []}
    for _ in range(args.repeats):
        times["old"].append(fit_pretrained(head, args.threads, str(OLD_MODEL), fluid_restart=False)[1])
        times["new"].append(fit_pretrained(head, args.threads, args.model, fluid_restart=False)[1])
        times["fluid"].append(fit_pretrained(head, args.threads, args.model, fluid_restart=True)[1])
    old, new, fluid = (float(np.median(times[k])) for k in ("old", "new", "fluid"))
    print(f"time per pretrained run, Siemens preset, {int(head_mask(head).sum())} voxels: old path "
          f"{old:.2f} s, protocol-general {new:.2f} s (ratio {new / old:.2f}), with the fluid restart "
          f"{fluid:.2f} s (ratio {fluid / old:.2f})")


if __name__ == "__main__":
    main()
