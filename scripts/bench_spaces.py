"""Time and accuracy of the output-space steps on the digital head (no fit: true maps).

    nice -n 10 python scripts/bench_spaces.py --resolution 1 --threads 2

Prints the QALAS -> T1w rigid time and RMS error over the brain (moved T1w of the demo),
the QALAS -> MNI152NLin2009cAsym affine + B-spline time and the WM Dice (T1 < 1.0 s in the
brain vs the shipped WM probability > 0.5), and the time to resample 14 images per space.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from qalas_bids.bids.templates import SHIPPED_DIR, SHIPPED_TEMPLATE
from qalas_bids.demo.anatomical import write_moved_t1w
from qalas_bids.qalas.phantom.digital_brain import make_digital_brain
from qalas_bids.qalas.spaces import registration as reg
from qalas_bids.qalas.spaces.to_spaces import qalas_to_t1w, qalas_to_template, registration_contrast
from qalas_bids.testing.space_metrics import shipped_wm, wm_dice


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--resolution", type=float, default=1.0)
    parser.add_argument("--template-res", default="1")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    reg.set_threads(args.threads)
    brain = make_digital_brain(resolution=args.resolution, snr=30.0, anatomy="head")
    head = brain.pd > 0
    contrast = registration_contrast(brain.t1, brain.pd, head)
    results = {"resolution_mm": args.resolution, "threads": args.threads, "shape": list(brain.t1.shape)}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_moved_t1w(Path(tmp), "sub-01", brain, brain.affine, Path(tmp), seed=0)
        motion = np.array(json.loads((Path(tmp) / "sub-01_desc-T1wmotion_simulation.json").read_text())
                          ["QalasToT1wWorld"])
        t1w = nib.load(path)
        start = time.perf_counter()
        rigid = qalas_to_t1w(contrast, brain.affine, np.asarray(t1w.dataobj, np.float32), t1w.affine)
        results["rigid_s"] = round(time.perf_counter() - start, 1)
    x = (brain.affine @ np.vstack([np.argwhere(brain.brain_mask).T, np.ones(brain.brain_mask.sum())]))[:3].T
    y = x @ motion[:3, :3].T + motion[:3, 3]
    results["rigid_rms_mm"] = float(np.sqrt(((reg.transform_points(rigid.transform, y) - x) ** 2).sum(1).mean()))
    start = time.perf_counter()
    for _ in range(14):
        reg.resample_array(brain.t1.astype(np.float32), brain.affine, rigid.transform, t1w.shape, t1w.affine)
    results["resample_14_t1w_s"] = round(time.perf_counter() - start, 1)
    folder = SHIPPED_DIR / f"tpl-{SHIPPED_TEMPLATE}"
    stem = f"tpl-{SHIPPED_TEMPLATE}_res-0{args.template_res}_"
    tpl = nib.load(folder / f"{stem}desc-brain_T1w.nii.gz")
    mask = np.asarray(nib.load(folder / f"{stem}desc-brain_mask.nii.gz").dataobj)
    wm = shipped_wm(int(args.template_res))
    start = time.perf_counter()
    result = qalas_to_template(np.where(brain.brain_mask, contrast, 0), brain.affine,
                               np.asarray(tpl.dataobj, np.float32), mask, tpl.affine)
    results["template_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    dense = reg.dense_transform(result.transform, tpl.shape, tpl.affine)
    results["dense_field_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    t1 = reg.resample_array(brain.t1.astype(np.float32), brain.affine, dense, tpl.shape, tpl.affine)
    inside = reg.resample_array(brain.brain_mask.astype(np.uint8), brain.affine, dense, tpl.shape,
                                tpl.affine, nearest=True) > 0
    results["resample_two_template_s"] = round(time.perf_counter() - start, 1)
    results["wm_dice"] = wm_dice(t1, inside, wm)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
