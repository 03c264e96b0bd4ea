#!/usr/bin/env python
"""Benchmark: pure-CSF and WM/GM accuracy per condition and fit mode (issue 21 item 4).

CSF T1 3.5/4.0/4.5 s x T2 1.2/1.6/2.0 s, SNR 30/60/120, every fit mode; printed per
condition: median bias, NRMSE and NRMSE / CRLB of T1, T2, PD, IE (see
``qalas_bids.testing.fit_conditions``), then per tissue class (CSF: mean bias and RMS NRMSE
over its conditions). ``--refine-steps 0`` measures the SSL network alone. ``--hcr`` adds,
for T1 and PD, NRMSE over the Hammersley-Chapman-Robbins bound (the lower bound of any
unbiased estimator where the CRLB is out of reach) and that bound over the CRLB.

Example: nice -n 10 python benchmarks/bench_csf.py --n 2000 --threads 2
Two pretrained models, network only: ... --modes pretrained --refine-steps 0 --model A.pt, then B.pt
"""
from __future__ import annotations

import argparse

import torch

from qalas_bids.testing.fit_conditions import MODES, SNRS, condition_table, format_summary, format_table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--n", type=int, default=2000, help="voxels per condition")
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--snrs", type=float, nargs="+", default=list(SNRS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fluid-restart", action="store_true", help="second refinement start for fluid (SSL modes)")
    parser.add_argument("--model", default=None, help="weights for pretrained/fine-tune (default: shipped)")
    parser.add_argument("--refine-steps", type=int, default=8, help="per-voxel refinement steps (SSL modes; 0: off)")
    parser.add_argument("--hcr", nargs="*", default=["t1", "pd"], choices=["t1", "t2", "pd"],
                        help="parameters with the HCR bound per condition (default t1 pd; none: --hcr)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = condition_table(args.modes, args.snrs, n=args.n, seed=args.seed, threads=args.threads,
                           model_path=args.model, fluid_restart=args.fluid_restart, refine_steps=args.refine_steps,
                           hcr=args.hcr)
    print(format_table(rows))
    print(format_summary(rows))


if __name__ == "__main__":
    main()
