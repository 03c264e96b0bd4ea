"""Whole-volume fit benchmark for machines without nibabel/nilearn (e.g. a bare GPU node).

Two steps:

1. ``export`` (here, with the full environment): build the digital brain and store its masked
   voxels compactly (float16 signals, packed mask) in an ``.npz`` small enough to copy.
2. ``run`` (on the target machine, needs only numpy/scipy/torch): rebuild the 4D volume
   (Rayleigh noise of the stored sigma outside the head, as in the phantom), call
   :func:`qalas_bids.qalas.fitting.fit_volume.fit_volume` for each mode with uncertainty on, and
   print wall time, time ratio to the dictionary baseline (run in the same process), and
   per-tissue median relative error (bias) and NRMSE vs the ground truth.

    python benchmarks/bench_volume_device.py export .bench/brain1mm.npz --resolution 1 --snr 60
    python benchmarks/bench_volume_device.py run .bench/brain1mm.npz --device cuda
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

TISSUES = {"WM": 3, "GM": 2, "CSF": 1}


def export(path: str, resolution: float, snr: float, seed: int) -> None:
    from qalas_bids.qalas.phantom.digital_brain import make_digital_brain

    brain = make_digital_brain(resolution=resolution, snr=snr, seed=seed)
    mask = brain.brain_mask
    pure = np.zeros(mask.shape, dtype=np.int8)
    for name, label in TISSUES.items():
        pure[brain.tissue_mask(name, 0.8)] = label
    np.savez_compressed(
        path, shape=np.array(mask.shape), mask=np.packbits(mask.ravel()),
        signals=brain.signals[mask].astype(np.float16), b1=brain.b1[mask].astype(np.float16),
        t1=brain.t1[mask].astype(np.float32), t2=brain.t2[mask].astype(np.float32),
        pd=brain.pd[mask].astype(np.float32), ie=brain.ie[mask].astype(np.float32),
        tissue=pure[mask], sigma=brain.sigma, snr=snr, resolution=resolution)
    print(f"wrote {path}: {int(mask.sum())} masked voxels of {mask.shape}")


def run(path: str, device: str, modes: list[str], seed: int, uncertainty: bool = True,
        refine_steps: int | None = None) -> None:
    from qalas_bids.qalas.fitting.fit_volume import fit_volume
    from qalas_bids.qalas.physics.timing import PRESETS

    d = np.load(path)
    shape = tuple(int(s) for s in d["shape"])
    mask = np.unpackbits(d["mask"])[: int(np.prod(shape))].astype(bool).reshape(shape)
    rng = np.random.default_rng(seed)
    sigma = float(d["sigma"])
    noise = sigma * np.hypot(rng.standard_normal(shape + (5,)), rng.standard_normal(shape + (5,)))
    qalas = noise.astype(np.float32)
    qalas[mask] = d["signals"].astype(np.float32)
    b1 = np.ones(shape, dtype=np.float32)
    b1[mask] = d["b1"].astype(np.float32)
    truth = {k: d[k].astype(np.float64) for k in ("t1", "t2", "pd", "ie")}
    tissue = d["tissue"]
    print(f"# {path}: {int(mask.sum())} voxels, {shape}, {float(d['resolution'])} mm, SNR {float(d['snr'])}")
    print(f"# torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    print(f"{'mode':<14}{'wall s':>8}{'x dict':>8}  tissue " + "".join(f"{p + ' bias/NRMSE %':>22}" for p in truth))
    base = None
    for mode in modes:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        ssl_options = {} if refine_steps is None or mode == "dictionary" else {"refine_steps": refine_steps}
        fit = fit_volume(qalas, b1, mask, PRESETS["siemens"], method=mode, device=device, seed=seed,
                         progress=False, with_uncertainty=uncertainty, ssl_options=ssl_options)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        base = wall if mode == "dictionary" else base
        ratio = f"{wall / base:8.2f}" if base else f"{'-':>8}"
        for name, label in TISSUES.items():
            sel = tissue == label
            cells = []
            for p, true in truth.items():
                est = fit.maps[p][mask][sel].astype(np.float64)
                err = est - true[sel]
                bias = 100 * np.median(err / true[sel])
                nrmse = 100 * np.linalg.norm(err) / np.linalg.norm(true[sel])
                cells.append(f"{bias:+9.2f} /{nrmse:7.2f}    ")
            print(f"{mode:<14}{wall:8.1f}{ratio}  {name:<6} " + "".join(f"{c:>22}" for c in cells))
        gpu = (f", GPU peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
               if torch.cuda.is_available() else "")
        refine = fit.info.get("refinement") or {}
        noise = (f"noise sigma {fit.info['noise_sigma']:.3g} (true {sigma:.3g})" if "noise_sigma" in fit.info
                 else "no uncertainty maps")
        print(f"#   {mode}: epochs {fit.info.get('epochs')}, training {fit.info.get('training_time_s', 0):.1f} s, "
              f"refinement {refine.get('time_s', 0):.1f} s, {noise}{gpu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export")
    e.add_argument("path")
    e.add_argument("--resolution", type=float, default=1.0)
    e.add_argument("--snr", type=float, default=60.0)
    e.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("run")
    r.add_argument("path")
    r.add_argument("--device", default="auto")
    r.add_argument("--modes", nargs="+", default=["dictionary", "scan-specific", "pretrained", "fine-tune"])
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--no-uncertainty", action="store_true", help="skip CRLB/residual/noise maps")
    r.add_argument("--refine-steps", type=int, default=None, help="SSL per-voxel refinement steps")
    args = parser.parse_args()
    if args.command == "export":
        export(args.path, args.resolution, args.snr, args.seed)
    else:
        run(args.path, args.device, args.modes, args.seed, not args.no_uncertainty, args.refine_steps)


if __name__ == "__main__":
    main()
