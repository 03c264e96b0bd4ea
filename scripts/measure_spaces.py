"""Accuracy of a finished ``--output-spaces`` run on the demo (``qalas-bids-demo-data --with-smriprep``).

    python scripts/measure_spaces.py DEMO_BIDS OUT_DIR [--derivatives]

Prints the QALAS -> T1w RMS error over the true brain (true motion in the ground truth), the
template-space WM Dice (T1 < 1.0 s in the brain mask vs the shipped WM probability > 0.5) of
the fitted map and of the true map through the written transform,
with ``--derivatives`` the QALAS -> template error against the known sMRIPrep-like transform,
and the per-region median errors of the TissueHemi table against the ground-truth maps
resampled by the same transform over the same reliable voxels (regions >= 200 voxels), with,
for T1, the error of an unbiased estimator at the CRLB (the truth plus Gaussian noise of the
fitted CRLB SD): the part of the error that comes from taking the median of a noisy map over
a region whose true values are skewed by partial volume.
"""
from __future__ import annotations

import argparse
import csv
import json

import nibabel as nib
import numpy as np

from qalas_bids.bids.templates import SHIPPED_DIR, SHIPPED_TEMPLATE
from qalas_bids.qalas.spaces import registration as reg
from qalas_bids.qalas.tissue.classes import reliable_voxels
from qalas_bids.qalas.tissue.regions import read_label_table, region_rows
from qalas_bids.testing.space_metrics import oracle_map, template_wm_dice

PREFIX = "sub-01/ses-01/anat/sub-01_ses-01_"


def load(path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, np.float64)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("demo")
    parser.add_argument("out")
    parser.add_argument("--derivatives", action="store_true")
    args = parser.parse_args()
    gt = f"{args.demo}/derivatives/groundtruth/{PREFIX}"
    an = f"{args.out}/{PREFIX}run-1_"
    tpl_dir = SHIPPED_DIR / f"tpl-{SHIPPED_TEMPLATE}"
    stem = f"tpl-{SHIPPED_TEMPLATE}_"
    motion = np.array(json.load(open(gt + "desc-T1wmotion_simulation.json"))["QalasToT1wWorld"])
    labels = nib.load(gt + "run-1_desc-tissue_dseg.nii.gz")
    brain = np.isin(np.asarray(labels.dataobj), [1, 2, 3])
    x = (labels.affine @ np.vstack([np.argwhere(brain).T, np.ones(brain.sum())]))[:3].T
    y = x @ motion[:3, :3].T + motion[:3, 3]
    rigid = reg.read_transform(an + "from-QALAS_to-T1w_mode-image_xfm.txt")
    d = reg.transform_points(rigid, y) - x
    print(f"QALAS->T1w RMS error over the brain: {np.sqrt((d ** 2).sum(1).mean()):.4f} mm")
    tpl = nib.load(an + "space-MNI152NLin2009cAsym_res-2_T1map.nii.gz")
    dice = template_wm_dice(an, gt + "run-1_")
    print(f"template WM Dice: fitted map {dice['fitted']:.3f}, true map through the transform {dice['true']:.3f}, "
          f"unbiased estimator at the CRLB {dice['oracle']:.3f}")
    tx = reg.read_transform(an + "from-QALAS_to-MNI152NLin2009cAsym_mode-image_xfm.h5")
    if args.derivatives:
        known = np.array(json.load(open(gt + "desc-templatexfm_simulation.json"))["TemplateToQalasWorld"])
        mask = load(tpl_dir / f"{stem}res-02_desc-brain_mask.nii.gz") > 0
        p = (tpl.affine @ np.vstack([np.argwhere(mask).T, np.ones(mask.sum())]))[:3].T
        d = reg.transform_points(tx, p) - (p @ known[:3, :3].T + known[:3, 3])
        print(f"QALAS->template error vs the known sMRIPrep transform: {np.sqrt((d ** 2).sum(1).mean()):.4f} mm")
    ref = nib.load(an + "T1map.nii.gz")
    fit = {k: load(an + n + ".nii.gz") for k, n in
           [("t1", "T1map"), ("t2", "T2map"), ("ie", "IEmap"), ("c", "desc-crlb_T1map"), ("r", "desc-residual_QALAS")]}
    rel = reliable_voxels(load(an + "desc-brain_mask.nii.gz") > 0, fit["t1"], fit["t2"], fit["ie"], fit["c"], fit["r"])[0]

    def move(a, nearest=False):
        return reg.resample_array(a.astype(np.uint8 if nearest else np.float32), ref.affine, tx, tpl.shape,
                                  tpl.affine, nearest=nearest)

    truth = {k: move(load(gt + f"run-1_{n}.nii.gz")) for k, n in
             [("t1", "T1map"), ("t2", "T2map"), ("pd", "PDmap"), ("ie", "IEmap")]}
    atlas = load(tpl_dir / f"{stem}res-02_atlas-TissueHemi_dseg.nii.gz").astype(int)
    names = read_label_table((tpl_dir / f"{stem}atlas-TissueHemi_dseg.tsv").read_text())
    use = move(rel, True) > 0
    rows_true = region_rows(atlas, names, truth, use)
    # an unbiased estimator at the CRLB (truth + Gaussian noise of the fitted CRLB SD): what
    # the region median of a noisy map does to a skewed (partial-volume) distribution
    oracle = oracle_map(load(gt + "run-1_T1map.nii.gz"), fit["c"])
    rows_oracle = region_rows(atlas, names, {**truth, "t1": move(oracle)}, use)
    rows_fit = list(csv.DictReader(open(an + "space-MNI152NLin2009cAsym_res-2_atlas-TissueHemi_stat-summary_qmri.tsv"),
                                   delimiter="\t"))
    print("region, reliable voxels, median error vs truth (%): T1 T2 PD IE  [PD: fitted PD is in scanner units]"
          " | T1 of an unbiased estimator at the CRLB")
    for t, f, o in zip(rows_true, rows_fit, rows_oracle):
        if t["reliable_voxels"] >= 200:
            print(t["name"], t["reliable_voxels"], " ".join(
                f"{100 * (float(f[c + '_median']) / t[c + '_median'] - 1):+.2f}" for c in ("T1_s", "T2_s", "PD", "IE")),
                f"| {100 * (o['T1_s_median'] / t['T1_s_median'] - 1):+.2f}")


if __name__ == "__main__":
    main()
