"""``qalas-bids-demo-data``: write the digital-brain demo BIDS dataset (with ground truth).

Example::

    qalas-bids-demo-data demo/bids --subjects 01 02 --resolution 2 --snr 30

Refuses to write into a non-empty directory unless ``--overwrite`` is given; even then it
only (re)writes the demo files and never deletes anything.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from qalas_bids.cli.validators import bids_label, positive_float, positive_int
from qalas_bids.qalas.errors import QalasInputError


_SUBJECT, _SESSION = bids_label("sub"), bids_label("ses")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qalas-bids-demo-data",
        description="Write a synthetic 3D-QALAS BIDS dataset (digital brain, HBCD-style naming, "
                    "TurboFLASH B1 map) with its exact ground truth in derivatives/groundtruth/.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to create (must be empty or absent)")
    parser.add_argument("--subjects", nargs="+", type=_SUBJECT, default=["01"], metavar="LABEL",
                        help="subject labels (default: 01)")
    parser.add_argument("--sessions", nargs="*", type=_SESSION, default=["01"], metavar="LABEL",
                        help="session labels (default: 01; give the flag without labels for "
                             "no session level)")
    parser.add_argument("--runs", nargs="+", type=positive_int, default=[1], metavar="N",
                        help="run indices (default: 1)")
    parser.add_argument("--resolution", type=float, choices=[1.0, 2.0], default=2.0,
                        help="isotropic voxel size in mm (default: 2)")
    parser.add_argument("--snr", type=positive_float, default=30.0,
                        help="SNR = mean WM signal of contrast 5 / noise sigma (default: 30)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--layout", choices=["3d", "4d"], default="3d",
                        help="five 3D inv-<n> files (HBCD, default) or one 4D file")
    parser.add_argument("--vendor", choices=["siemens", "ge", "philips"], default="siemens",
                        help="timing preset and Manufacturer written to the sidecars")
    parser.add_argument("--anatomy", choices=["head", "brain"], default="head",
                        help="head (default): brain plus scalp, fat, skull, air sinuses and eyes, as a "
                             "real scan has; brain: the brain alone (smaller, faster)")
    parser.add_argument("--no-b1", action="store_true", help="do not write the B1 field map")
    parser.add_argument("--with-t1w", action="store_true",
                        help="also write a T1w per session: the digital head rigidly moved (16 deg, "
                             "16 mm) on a 1.5 mm grid with an MPRAGE-like contrast (true motion in "
                             "derivatives/groundtruth), for --output-spaces T1w")
    parser.add_argument("--with-smriprep", action="store_true",
                        help="also write derivatives/smriprep (implies --with-t1w): desc-preproc_T1w, "
                             "desc-brain_mask and a known from-T1w_to-MNI152NLin2009cAsym transform, "
                             "for --derivatives smriprep=<bids>/derivatives/smriprep")
    parser.add_argument("--b1-kind", choices=["tfl", "afi", "dam"], default="tfl",
                        help="B1 map written: Siemens TurboFLASH TB1TFL (default), AFI TB1AFI "
                             "(acq-tr1/acq-tr2, 60 deg, TR 20/100 ms, as GE/Philips write it) or "
                             "double angle TB1DAM (flip-1/flip-2, 60/120 deg, TR 8 s)")
    parser.add_argument("--b1-field", choices=["default", "asymmetric"], default="default",
                        help="true B1 field: default (centre-bright, 0.8-1.05) or asymmetric "
                             "(stronger, 0.7-1.3 over the brain)")
    parser.add_argument("--b1-motion", nargs=2, type=float, metavar=("DEGREES", "MM"),
                        help="move the head between QALAS and the B1 map by this rotation and "
                             "shift (the truth is only in derivatives/groundtruth)")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing into a non-empty directory (files are overwritten, "
                             "nothing is deleted)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    out: Path = args.out_dir
    if out.exists() and not out.is_dir():
        parser.error(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        parser.error(f"{out} is not empty; choose a new directory or pass --overwrite "
                     "(existing files with the same names are replaced, nothing is deleted)")

    from qalas_bids.demo.dataset import write_demo_dataset  # heavy imports after parsing

    try:
        root = write_demo_dataset(
            out, subjects=args.subjects, sessions=args.sessions, runs=args.runs,
            resolution=args.resolution, snr=args.snr, seed=args.seed, qalas_layout=args.layout,
            with_b1=not args.no_b1, vendor=args.vendor, anatomy=args.anatomy,
            with_t1w=args.with_t1w, with_smriprep=args.with_smriprep,
            b1_kind=args.b1_kind, b1_pattern=args.b1_field,
            b1_motion=tuple(args.b1_motion) if args.b1_motion else None)
    except QalasInputError as exc:
        print(f"qalas-bids-demo-data: error: {exc}", file=sys.stderr)
        return 2
    raw = sorted(p for p in root.rglob("*") if p.is_file() and "derivatives" not in p.parts)
    truth = root / "derivatives" / "groundtruth"
    print(f"Wrote the demo BIDS dataset to {root.resolve()} ({len(raw)} files):")
    for path in raw:
        if path.suffix in (".gz",) or path.parent == root:
            print(f"  {path.relative_to(root)}")
    print(f"Ground truth (T1/T2/PD/IE maps, tissue labels, B1): {truth.resolve()}")
    print(f"Subjects {', '.join(args.subjects)}; resolution {args.resolution:g} mm; "
          f"SNR {args.snr:g}; seed {args.seed}; layout {args.layout}; "
          f"B1 map {'no' if args.no_b1 else 'yes'}")
    print(f"Next: qalas-bids {root} <output_dir> participant")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
