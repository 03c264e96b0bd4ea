#!/usr/bin/env python
"""Accuracy of the fitted maps with every B1 map kind, moved and unmoved (issue 22).

For each case it writes the digital brain (2 mm, SNR 60, asymmetric B1 field 0.7-1.3)
with one kind of B1 map, runs the app end to end (``qalas-bids ... participant``,
scan-specific by default), and prints per 0.1-wide band of the *true* B1 the WM and GM
median signed error of T1 and T2 against the ground truth (voxels with tissue fraction >
0.8), the worst band, the registration's motion and the B1 QC warnings of the sidecar.

Cases: ``tfl`` (reference), ``afi``, ``dam``, ``tb1map`` (the TFL map as a percent
TB1map), and the AFI and TFL maps moved by 8 deg / 8 mm, each with ``--b1-registration
header`` and ``rigid``.

Usage: nice -n 10 python benchmarks/bench_b1_kinds.py [--cases afi dam ...] [--fit-mode M]
       [--out /tmp/bench_b1] (about 1-2 min per case on 2 cores);
       ``--registration-only``: RMS placement error (mm) of header vs rigid per kind, moved
       and unmoved, without fits (about 1 min).
"""
from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from qalas_bids.demo.dataset import write_demo_dataset

BANDS = np.round(np.arange(0.7, 1.31, 0.1), 2)
#: case -> (B1 kind written by the demo, head motion (deg, mm) or None, --b1-registration)
CASES = {
    "tfl": ("tfl", None, "rigid"),
    "afi": ("afi", None, "rigid"),
    "dam": ("dam", None, "rigid"),
    "tb1map": ("tb1map", None, "header"),
    "afi-header": ("afi", None, "header"),
    "afi-moved-header": ("afi", (8.0, 8.0), "header"),
    "afi-moved-rigid": ("afi", (8.0, 8.0), "rigid"),
    "tfl-moved-header": ("tfl", (8.0, 8.0), "header"),
    "tfl-moved-rigid": ("tfl", (8.0, 8.0), "rigid"),
}


def _tfl_to_tb1map(root: Path) -> None:
    """Replace the demo's TurboFLASH pair by a ready TB1map in percent (as a site might)."""
    for famp in root.glob("sub-*/ses-*/fmap/*_acq-famp_*TB1TFL.nii.gz"):
        img = nib.load(str(famp))
        meta = json.loads(famp.with_name(famp.name.replace(".nii.gz", ".json")).read_text())
        percent = np.asarray(img.dataobj, dtype=np.float32) / (10.0 * meta["FlipAngle"]) * 100.0
        name = famp.name.replace("_acq-famp", "").replace("TB1TFL", "TB1map")
        nib.save(nib.Nifti1Image(percent, img.affine), str(famp.with_name(name)))
        side = {k: v for k, v in meta.items() if k not in ("FlipAngle", "ImageType")}
        famp.with_name(name.replace(".nii.gz", ".json")).write_text(json.dumps({**side, "Units": "percent"}))
    for path in root.glob("sub-*/ses-*/fmap/*TB1TFL.*"):
        path.unlink()


def band_errors(truth_root: Path, out_root: Path) -> dict:
    """Median signed error (%) of T1/T2 per tissue and true-B1 band."""
    gt = truth_root / "derivatives" / "groundtruth" / "sub-01" / "ses-01"
    prefix = "sub-01_ses-01_run-1"
    load = lambda p: np.asarray(nib.load(str(p)).dataobj, dtype=np.float64)  # noqa: E731
    b1 = load(gt / "fmap" / f"{prefix}_space-QALAS_TB1map.nii.gz")
    out = {}
    for tissue in ("WM", "GM"):
        pure = load(gt / "anat" / f"{prefix}_label-{tissue}_probseg.nii.gz") > 0.8
        for name in ("T1map", "T2map"):
            true = load(gt / "anat" / f"{prefix}_{name}.nii.gz")
            est = load(out_root / "sub-01" / "ses-01" / "anat" / f"{prefix}_{name}.nii.gz")
            rows = {}
            for lo in BANDS[:-1]:
                sel = pure & (b1 >= lo) & (b1 < lo + 0.1) & (est > 0)
                if sel.sum() >= 50:
                    rows[f"{lo:.1f}-{lo + 0.1:.1f}"] = round(100 * float(np.median(est[sel] / true[sel] - 1)), 2)
            out[f"{tissue} {name[:2]}"] = rows
    return out


def run_case(case: str, base: Path, fit_mode: str, extra: list[str]) -> dict:
    kind, motion, registration = CASES[case]
    root, out, work = base / case / "bids", base / case / "out", base / case / "work"
    shutil.rmtree(base / case, ignore_errors=True)
    write_demo_dataset(root, resolution=2.0, snr=60.0, anatomy="brain", b1_pattern="asymmetric",
                       b1_kind="tfl" if kind == "tb1map" else kind, b1_motion=motion)
    if kind == "tb1map":
        _tfl_to_tb1map(root)
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "qalas_bids.cli.run", str(root), str(out), "participant", "-w", str(work),
           "--fit-mode", fit_mode, "--b1-registration", registration, "--skip-bids-validation",
           "--nprocs", "2", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        return {"case": case, "error": proc.stderr[-2000:], "rc": proc.returncode}
    side = json.loads(Path(glob.glob(str(out / "sub-01/ses-01/anat/*run-1_T1map.json"))[0]).read_text())
    summary = side.get("B1Summary", {})
    bands = band_errors(root, out)
    worst = max(abs(v) for rows in bands.values() for v in rows.values())
    return {"case": case, "seconds": round(seconds, 1), "bands": bands, "worst_abs_percent": worst,
            "registration": {k: summary.get("Registration", {}).get(k) for k in ("MotionMM", "RotationDegrees")},
            "b1_qc_warnings": [w for w in side.get("Warnings", []) if w.startswith("B1 QC")],
            "conversion": summary.get("Conversion")}


def registration_accuracy(base: Path) -> list[dict]:
    """RMS error (mm, over the head) of the B1 placement, header vs rigid, per kind, unmoved
    and moved by 8 deg / 8 mm, with the rigid registration's time; no fit."""
    from qalas_bids.bids import collect_qalas_runs
    from qalas_bids.bids.b1_read import b1_parameters, relative_b1_native
    from qalas_bids.bids.inputs_check import FIXED_CONTRAST, load_qalas_run
    from qalas_bids.qalas.b1.coregister import register_rigid
    from qalas_bids.qalas.tissue.masking import compute_head_mask

    rows = []
    for kind in ("tfl", "afi", "dam"):
        for motion in (None, (8.0, 8.0)):
            root = base / f"reg-{kind}-{'moved' if motion else 'still'}"
            shutil.rmtree(root, ignore_errors=True)
            write_demo_dataset(root, resolution=2.0, snr=60.0, anatomy="brain", b1_pattern="asymmetric",
                               b1_kind=kind, b1_motion=motion)
            sim = json.loads(next(root.glob("derivatives/groundtruth/**/*_simulation.json")).read_text())
            true = np.array(sim.get("B1HeadMotionQALASToB1RAS", np.eye(4).tolist()))
            (run,) = collect_qalas_runs(root)
            data, ref = load_qalas_run(run)
            mask = compute_head_mask(data)
            points = nib.affines.apply_affine(ref.affine, np.argwhere(mask)[::20])
            native = relative_b1_native(run.b1, b1_parameters(run.b1))
            fixed = nib.Nifti1Image(data[..., FIXED_CONTRAST[kind]], ref.affine)
            result = register_rigid(native["magnitude"], fixed, mask)

            def rms(matrix):
                d = nib.affines.apply_affine(matrix, points) - nib.affines.apply_affine(true, points)
                return round(float(np.sqrt((d ** 2).sum(1).mean())), 2)

            rows.append({"kind": kind, "moved": bool(motion), "header_rms_mm": rms(np.eye(4)),
                         "rigid_rms_mm": rms(result.matrix), "rigid_seconds": round(result.seconds, 2),
                         "rigid_motion_mm_deg": [round(result.translation_mm, 2), round(result.rotation_deg, 2)]})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--fit-mode", default="scan-specific")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_b1_kinds"))
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more CLI options")
    parser.add_argument("--registration-only", action="store_true",
                        help="measure only the placement error of header vs rigid (no fits)")
    args = parser.parse_args()
    if args.registration_only:
        args.out.mkdir(parents=True, exist_ok=True)
        rows = registration_accuracy(args.out)
        (args.out / "registration.json").write_text(json.dumps(rows, indent=1))
        return
    results = []
    for case in args.cases:
        res = run_case(case, args.out, args.fit_mode, args.extra)
        results.append(res)
        if "error" in res:
            print(f"{case}: FAILED rc {res['rc']}\n{res['error']}", flush=True)
            continue
        print(f"\n== {case}: {res['seconds']} s, worst band |median error| {res['worst_abs_percent']} %, "
              f"registration {res['registration']}, B1 QC warnings {len(res['b1_qc_warnings'])}", flush=True)
        for key, rows in res["bands"].items():
            print(f"  {key}: " + "  ".join(f"{b} {v:+.2f}" for b, v in rows.items()), flush=True)
        for warning in res["b1_qc_warnings"]:
            print(f"  warning: {warning[:150]}", flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
