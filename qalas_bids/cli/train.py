"""``qalas-bids-train``: train one SSL-QALAS model per scanner on a cohort's pooled voxels.

A separate command (not ``qalas-bids ... group``): training reads the *raw* QALAS and B1
data like the participant level, whereas the group level only summarises derivatives.
Each selected run is loaded, masked (head mask, CSF kept) and paired with its B1 map
exactly as the participant level does; the masked voxels of every run of one scanner
(Manufacturer + ManufacturersModelName + DeviceSerialNumber when present) are pooled and
one network is trained self-supervised on them. The models are written to
``<output_dir>/models/cohort_scanner-<key>_model.pt`` (+ a JSON copy of their metadata)
and are used with ``qalas-bids ... --fit-mode pretrained|fine-tune --model FILE``.

The network shipped with the package (``qalas_bids/data/ssl_pretrained_generic.pt``) is
not made by this command: it is protocol-general (the sequence timing is a network input)
and trained on simulated voxels over every protocol of ``PROTOCOL_RANGES``, reproducibly
(seeded, CPU) with ``nice -n 10 python scripts/train_pretrained.py --steps 30000 --hidden
128 --seed 0 --threads 1`` (see docs/methods.md). Cohort models from this command are
per-protocol and are checked against the scan's timing field by field.

Exit status: 0 success, 2 usage or input error.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Sequence

from .. import __version__
from . import validators as v
from .parser import VENDOR_PRESETS

LOGGER = logging.getLogger("qalas_bids")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qalas-bids-train", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Train one SSL-QALAS network per scanner on masked voxels pooled from several "
                    "participants/sessions of a BIDS dataset (for --fit-mode pretrained/fine-tune "
                    "--model).")
    parser.add_argument("bids_dir", type=v.existing_dir, help="root of the input BIDS dataset (read only)")
    parser.add_argument("output_dir", type=v.output_path, help="folder for models/ (created)")
    parser.add_argument("--version", action="version", version=f"qalas-bids {__version__}")
    parser.add_argument("--participant-label", nargs="+", type=v.bids_label("sub"), metavar="LABEL",
                        help="participants whose runs are pooled (default: all)")
    parser.add_argument("--session-label", nargs="+", type=v.bids_label("ses"), metavar="LABEL",
                        help="sessions to pool (default: all)")
    parser.add_argument("--bids-filter-file", dest="bids_filters", type=v.bids_filter_file, metavar="FILE",
                        help="JSON of pybids entities narrowing the queries (as qalas-bids)")
    parser.add_argument("--no-b1", action="store_true", help="train without B1 maps (B1 = 1)")
    parser.add_argument("--b1-flip-angle", type=v.flip_angle_deg, metavar="DEG",
                        help="nominal flip angle of the TurboFLASH B1 maps (default: famp sidecar)")
    parser.add_argument("--vendor-preset", choices=VENDOR_PRESETS, help="QALAS timing preset")
    parser.add_argument("--epochs", type=v.positive_int, metavar="N",
                        help="training epochs (default: about 3000 optimiser steps)")
    parser.add_argument("--batch-size", type=v.positive_int, metavar="N", help="voxels per mini-batch")
    parser.add_argument("--max-voxels-per-scan", type=v.positive_int, metavar="N",
                        help="random subset of each scan's masked voxels (default: all)")
    parser.add_argument("--seed", type=v.non_negative_int, default=0, help="random seed")
    parser.add_argument("--device", type=v.device_spec, default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--omp-nthreads", type=v.positive_int, help="torch CPU threads")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    return parser


def load_cohort_scan(run, *, no_b1: bool = False, flip_angle: float | None = None, bids_dir: Path):
    """Masked voxels of one :class:`~qalas_bids.bids.discovery.QalasRun` as a
    :class:`~qalas_bids.qalas.fitting.cohort.CohortScan` (same mask and B1 preparation as the
    participant level)."""
    import numpy as np

    from ..bids.inputs_check import check_run_inputs
    from ..qalas.fitting.cohort import CohortScan
    from ..qalas.errors import QalasInputError
    from ..bids.sidecars import raw_sources

    if run.b1 is not None and not no_b1:
        from ..bids.b1_read import b1_parameters

        try:
            b1_parameters(run.b1, flip_angle)  # missing FlipAngle etc.: the key and the file
        except QalasInputError as exc:
            raise QalasInputError(f"{run.label}: {exc}") from None
    checked = check_run_inputs(run, use_b1=not no_b1, flip_angle_override=flip_angle)
    mask, data = checked.mask, checked.data
    b1 = checked.b1[mask].astype(np.float64) if checked.b1 is not None else None
    return CohortScan(magnitudes=data[mask].astype(np.float64), b1=b1, timing=run.timing.timing,
                      label=run.label, sources=raw_sources(run.qalas_files, bids_dir),
                      metadata=dict(run.metadata))


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``qalas-bids-train``."""
    opts = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if opts.verbose >= 2 else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s | %(levelname)-7s | %(name)s: %(message)s")
    from ..bids import collect_qalas_runs
    from ..qalas.fitting.cohort import group_by_scanner, train_cohort_model
    from ..qalas.errors import DeviceError, QalasInputError
    from ..qalas.physics.timing import TimingError

    try:
        import torch

        if opts.omp_nthreads:
            torch.set_num_threads(opts.omp_nthreads)
        runs = collect_qalas_runs(opts.bids_dir, participant_labels=opts.participant_label,
                                  session_labels=opts.session_label, bids_filters=opts.bids_filters,
                                  require_b1=not opts.no_b1, vendor_preset=opts.vendor_preset)
        if not runs:
            raise QalasInputError("no QALAS runs selected: check --participant-label/--session-label")
        scans = [load_cohort_scan(r, no_b1=opts.no_b1, flip_angle=opts.b1_flip_angle, bids_dir=opts.bids_dir)
                 for r in runs]
        models_dir = Path(opts.output_dir) / "models"
        for key, group in sorted(group_by_scanner(scans).items()):
            LOGGER.info("scanner %s: %d run(s), %d voxels", key, len(group),
                        sum(s.magnitudes.shape[0] for s in group))
            path, info = train_cohort_model(group, models_dir / f"cohort_scanner-{key}_model.pt",
                                            epochs=opts.epochs, batch_size=opts.batch_size, seed=opts.seed,
                                            device=opts.device, max_voxels_per_scan=opts.max_voxels_per_scan)
            from ..qalas.fitting.cohort import read_model

            _, config = read_model(path)
            path.with_suffix(".json").write_text(json.dumps({**config, "sha256": info["sha256"]}, indent=2) + "\n")
            print(f"qalas-bids-train: {path} ({info['epochs']} epochs, {info['n_voxels']} voxels, "
                  f"{info['wall_time_s']:.0f} s, sha256 {info['sha256'][:12]})")
    except (QalasInputError, DeviceError, TimingError) as exc:
        print(f"qalas-bids-train: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
