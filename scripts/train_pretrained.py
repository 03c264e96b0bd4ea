#!/usr/bin/env python
"""Train the shipped protocol-general SSL-QALAS prior (qalas_bids/data/ssl_pretrained_generic.pt).

Supervised on simulated voxels (the ground truth is known, so this is the fastest way to
get a good amortised initialiser): parameters are drawn from broad, realistic ranges, each
voxel gets its own protocol drawn uniformly from PROTOCOL_RANGES
(qalas/physics/protocols.py, ``sample_protocol``; a pool of --protocols draws, seeded),
they pass through the QALAS signal model with that protocol, are corrupted by Rician
noise at a random SNR and normalised exactly like a scan (see below). The network takes
the normalised timing as nine extra inputs (qalas/fitting/network.py, timing_features).
``--vendor siemens|ge|philips`` instead trains a network for that one preset (the
per-protocol models shipped before 0.2; no timing inputs). Loss: squared error
of (log T1, log T2, log PD, IE / 0.2). Caveat: a supervised network returns something close
to the posterior mean under this training distribution, so at low SNR its estimates lean
towards the middle of these ranges; ``fit_ssl``'s per-voxel refinement and the
``fine-tune`` mode remove that dependence on the training prior.

Training distribution (seconds):
  T1 log-uniform 0.2-10; T2 log-uniform 0.02-min(5, T1) (the app's ranges, qalas/bounds.py);
  IE uniform 0.5-1;
  B1 uniform 0.65-1.35; PD / input scale log-uniform 3-50 (a scan normalised by the 99th
  percentile of contrast 5 has WM ~17, CSF ~25); SNR log-uniform 20-200 with
  sigma = input scale / SNR (the app's SNR definition: WM contrast-5 / sigma); the
  magnitudes are then noise-floor corrected, sqrt(max(M^2 - 2 sigma^2, 0)), as the app does.

Reproducible: fixed seed, one CPU thread, fresh samples every step. The shipped file was made by
  nice -n 10 python scripts/train_pretrained.py --steps 30000 --hidden 128 --seed 0 --threads 1
(about 13 min on one free CPU core, up to 25 min on a shared one).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from qalas_bids import __version__
from qalas_bids.qalas.physics.bounds import T1_RANGE_S, T2_RANGE_S
import numpy as np

from qalas_bids.qalas.fitting.network import (NetworkConfig, QalasNet, default_timing_ranges, network_inputs,
                                              timing_features)
from qalas_bids.qalas.fitting.pretrained import save_model
from qalas_bids.qalas.physics.signal_model import qalas_magnitude
from qalas_bids.qalas.fitting.ssl import SCALE_PERCENTILE
from qalas_bids.qalas.physics.protocols import ProtocolBatch, sample_protocol
from qalas_bids.qalas.physics.timing import get_preset

RANGES = {"t1": (0.2, T1_RANGE_S[1]), "t2": (0.02, T2_RANGE_S[1]), "ie": (0.5, 1.0), "b1": (0.65, 1.35),
          "pd_over_scale": (3.0, 50.0), "snr": (20.0, 200.0)}


def _loguniform(lo, hi, n, gen):
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.rand(n, generator=gen, dtype=torch.float64))


def sample_batch(n: int, timing, gen: torch.Generator):
    """Simulated normalised magnitudes (N, 5), B1 (N,), truth (N, 4) = T1, T2, PD/scale, IE."""
    t1 = _loguniform(*RANGES["t1"], n, gen)
    t2_hi = torch.clamp(t1, max=RANGES["t2"][1])
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    t2 = torch.exp(math.log(RANGES["t2"][0]) + (torch.log(t2_hi) - math.log(RANGES["t2"][0])) * u)
    ie = RANGES["ie"][0] + (RANGES["ie"][1] - RANGES["ie"][0]) * torch.rand(n, generator=gen, dtype=torch.float64)
    b1 = RANGES["b1"][0] + (RANGES["b1"][1] - RANGES["b1"][0]) * torch.rand(n, generator=gen, dtype=torch.float64)
    pd = _loguniform(*RANGES["pd_over_scale"], n, gen)
    if isinstance(timing, ProtocolBatch):  # one protocol per voxel
        timing = timing.take(torch.randint(0, timing.tf.numel(), (n,), generator=gen))
    clean = qalas_magnitude(t1, t2, pd, ie, b1, timing)
    sigma = (1.0 / _loguniform(*RANGES["snr"], n, gen)).unsqueeze(1)
    noisy = torch.hypot(clean + sigma * torch.randn(clean.shape, generator=gen, dtype=torch.float64),
                        sigma * torch.randn(clean.shape, generator=gen, dtype=torch.float64))
    # The app fits noise-floor-corrected magnitudes (qalas.uncertainty.correct_noise_floor).
    noisy = torch.sqrt((noisy.square() - 2.0 * sigma.square()).clamp_min(0.0))
    truth = torch.stack([t1, t2, pd, ie], dim=1)
    return noisy.float(), b1.float(), truth.float(), timing


def supervised_loss(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    logs = (pred[:, :3].log() - truth[:, :3].log()).square().mean(0)
    ie = ((pred[:, 3] - truth[:, 3]) / 0.2).square().mean()
    return logs.sum() + ie


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vendor", default=None, help="train for this one preset (default: every protocol)")
    parser.add_argument("--protocols", type=int, default=50000, help="size of the pool of random protocols")
    parser.add_argument("--hidden", type=int, default=128, help="channels per block")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "qalas_bids" / "data"
                                             / "ssl_pretrained_generic.pt"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    if args.vendor:
        timing, ranges = get_preset(args.vendor), None
    else:
        rng = np.random.default_rng(args.seed)
        timing = ProtocolBatch([sample_protocol(rng) for _ in range(args.protocols)])
        ranges = default_timing_ranges()
    net = QalasNet(NetworkConfig(use_b1_input=True, hidden=args.hidden, timing_ranges=ranges))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps, eta_min=args.lr * 0.01)
    history, running, start = [], 0.0, time.perf_counter()
    for step in range(1, args.steps + 1):
        mags, b1, truth, voxel_timing = sample_batch(args.batch_size, timing, gen)
        extra = timing_features(voxel_timing, ranges).float() if ranges else None
        loss = supervised_loss(net(network_inputs(mags, b1, 1.0, True, extra)), truth)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if step % 500 == 0:
            history.append(running / 500)
            running = 0.0
            print(f"step {step}/{args.steps} loss {history[-1]:.4f} ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    reference = get_preset(args.vendor or "siemens")
    config = {
        "timing": reference.as_dict(),  # the protocol it was trained for (generic: a reference)
        "protocol_general": ranges is not None,
        "input_normalisation": {"method": "percentile", "percentile": SCALE_PERCENTILE, "contrast": 5,
                                "pd_units": "input scale (PD = output x scale)", "b1_input": True},
        "ranges": RANGES,
        "software_version": __version__,
        "training": {"kind": "supervised on simulated voxels", "script": "scripts/train_pretrained.py",
                     "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                     "schedule": "cosine to lr/100", "seed": args.seed, "threads": args.threads,
                     "noise": "Rician, sigma = scale / SNR, then noise-floor corrected",
                     "protocols": (f"{args.protocols} draws of sample_protocol (seed {args.seed}), one per voxel"
                                   if ranges else f"{args.vendor} preset"),
                     "loss": "MSE of log T1, log T2, log PD, IE/0.2",
                     "wall_time_s": round(time.perf_counter() - start, 1), "torch": torch.__version__},
        "loss_history": history,
        "loss_history_every_steps": 500,
    }
    out = save_model(args.out, net, config)
    blob = torch.load(out, weights_only=True)
    Path(out).with_suffix(".json").write_text(json.dumps(blob["config"], indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} kB) and {Path(out).with_suffix('.json').name}")


if __name__ == "__main__":
    main()
