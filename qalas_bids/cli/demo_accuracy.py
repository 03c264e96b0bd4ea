"""Compare qalas-bids outputs of the demo dataset with its ground truth.

Usage: ``python -m qalas_bids.cli.demo_accuracy BIDS_DIR OUT_DIR``

For every ground-truth run in ``BIDS_DIR/derivatives/groundtruth`` it loads the app's
``OUT_DIR/sub-*/[ses-*/]anat/<prefix>_{T1map,T2map,PDmap,IEmap}.nii.gz`` and prints, per
tissue (voxels whose tissue fraction > 0.8, from the ground-truth probseg maps, or the
dseg label when those are absent):

* median signed relative error (bias) ``median((est - true) / true)``,
* NRMSE ``||est - true||_2 / ||true||_2``,

over the voxels the app fitted (non-zero), plus the coverage (fraction of brain voxels
fitted). PD is also reported after one least-squares global scale (the app may report PD
in other units). Exit code 0 on success, 1 when outputs are missing, 2 for bad usage.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

MAPS = ("T1map", "T2map", "PDmap", "IEmap")
TISSUES = {"WM": 3, "GM": 2, "CSF": 1}
PURE_FRACTION = 0.8


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).get_fdata(dtype=np.float64))


def _tissue_masks(anat_dir: Path, prefix: str) -> dict[str, np.ndarray]:
    masks = {}
    dseg = _load(anat_dir / f"{prefix}_desc-tissue_dseg.nii.gz")
    for name, label in TISSUES.items():
        probseg = anat_dir / f"{prefix}_label-{name}_probseg.nii.gz"
        masks[name] = _load(probseg) > PURE_FRACTION if probseg.exists() else dseg == label
    masks["brain"] = np.isin(dseg, list(TISSUES.values()))  # the head classes (scalp, eyes...) are 4-8
    return masks


def _metrics(est: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    """Median signed relative error (bias) and NRMSE (reported separately, never merged)."""
    rel = (est - true) / np.maximum(np.abs(true), 1e-12)
    nrmse = float(np.linalg.norm(est - true) / max(np.linalg.norm(true), 1e-12))
    return float(np.median(rel)), nrmse


def compare_run(truth_anat: Path, out_anat: Path, prefix: str) -> list[str]:
    """Lines of the accuracy table of one run (raises FileNotFoundError for missing maps)."""
    missing = [f"{out_anat / f'{prefix}_{m}.nii.gz'}" for m in MAPS
               if not (out_anat / f"{prefix}_{m}.nii.gz").exists()]
    if missing:
        raise FileNotFoundError("missing app outputs:\n    " + "\n    ".join(missing))
    masks = _tissue_masks(truth_anat, prefix)
    lines = [f"{prefix}", f"  {'map':<8}{'tissue':<7}{'voxels':>8}{'median bias':>16}{'NRMSE':>9}"]
    for name in MAPS:
        est = _load(out_anat / f"{prefix}_{name}.nii.gz")
        true = _load(truth_anat / f"{prefix}_{name}.nii.gz")
        if est.shape != true.shape:
            raise ValueError(f"{out_anat / f'{prefix}_{name}.nii.gz'} has shape {est.shape}, "
                             f"the ground truth {true.shape}: outputs must be on the QALAS grid")
        fitted = masks["brain"] & (est > 0) & np.isfinite(est)
        if name == "PDmap":
            coverage = fitted.sum() / max(masks["brain"].sum(), 1)
            lines.append(f"  coverage: {100 * coverage:.1f} % of the brain voxels have a fitted value")
            scale = float(np.sum(est[fitted] * true[fitted]) / max(np.sum(est[fitted] ** 2), 1e-12))
        for tissue in TISSUES:
            sel = masks[tissue] & fitted
            if not sel.any():
                lines.append(f"  {name:<8}{tissue:<7}{0:>8}{'n/a':>16}{'n/a':>9}")
                continue
            med, nrmse = _metrics(est[sel], true[sel])
            lines.append(f"  {name:<8}{tissue:<7}{int(sel.sum()):>8}{100 * med:>+15.2f}%{100 * nrmse:>8.2f}%")
            if name == "PDmap" and abs(scale - 1) > 0.02:
                med_s, nrmse_s = _metrics(est[sel] * scale, true[sel])
                lines.append(f"  {'PD*k':<8}{tissue:<7}{int(sel.sum()):>8}{100 * med_s:>+15.2f}%"
                             f"{100 * nrmse_s:>8.2f}%   (global scale k={scale:.4g})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qalas_bids.cli.demo_accuracy",
        description="Accuracy of the qalas-bids maps of the demo dataset against its ground truth.")
    parser.add_argument("bids_dir", type=Path, help="demo BIDS dataset (qalas-bids-demo-data)")
    parser.add_argument("out_dir", type=Path, help="qalas-bids output directory")
    args = parser.parse_args(argv)
    truth_root = args.bids_dir / "derivatives" / "groundtruth"
    if not truth_root.is_dir():
        parser.error(f"{truth_root} not found: BIDS_DIR must be a dataset written by "
                     "qalas-bids-demo-data")
    if not args.out_dir.is_dir():
        print(f"error: output directory {args.out_dir} does not exist: run "
              f"'qalas-bids {args.bids_dir} {args.out_dir} participant' first", file=sys.stderr)
        return 1
    runs = sorted(truth_root.glob("sub-*/**/anat/*_T1map.nii.gz"))
    if not runs:
        parser.error(f"no ground-truth maps under {truth_root}")
    status = 0
    print(f"Accuracy against the ground truth ({truth_root}); tissues = fraction > {PURE_FRACTION}")
    for truth_t1 in runs:
        prefix = truth_t1.name[: -len("_T1map.nii.gz")]
        rel_anat = truth_t1.parent.relative_to(truth_root)
        out_anat = args.out_dir / rel_anat
        try:
            print("\n".join(compare_run(truth_t1.parent, out_anat, prefix)))
        except (FileNotFoundError, ValueError) as exc:
            print(f"{prefix}: {exc}\n  (did 'qalas-bids {args.bids_dir} {args.out_dir} participant' "
                  "finish without errors? see its log)", file=sys.stderr)
            status = 1
    print("\nOutputs:")
    for sub_dir in sorted(p for p in args.out_dir.glob("sub-*") if p.is_dir()):
        report = args.out_dir / f"{sub_dir.name}.html"
        print(f"  maps:   {sub_dir.resolve()}")
        print(f"  report: {report.resolve()}" + ("" if report.exists() else "  (missing)"))
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
