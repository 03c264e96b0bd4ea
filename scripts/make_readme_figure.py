"""Draw docs/maps.png from a finished demo run: fitted maps next to the ground truth.

    make demo && .venv/bin/python scripts/make_readme_figure.py demo/bids demo/out docs/maps.png
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

MAPS = [("T1map", "T1 [s]", "magma", (0, 4.5)), ("T2map", "T2 [s]", "viridis", (0, 0.2)),
        ("PDmap", "PD [a.u.]", "gray", None), ("IEmap", "IE", "cividis", (0.75, 1.0))]


def main(bids_dir: str, out_dir: str, png: str) -> None:
    truth_dir = Path(bids_dir) / "derivatives" / "groundtruth"
    fitted = sorted(Path(out_dir).glob("sub-*/**/anat/*_T1map.nii.gz"))
    if not fitted:
        sys.exit(f"no T1map under {out_dir}: run `make demo` first")
    prefix_path = fitted[0]
    prefix = prefix_path.name[: -len("_T1map.nii.gz")]
    rel = prefix_path.parent.relative_to(out_dir)
    load = lambda p: np.asarray(nib.load(str(p)).dataobj, dtype=np.float32)  # noqa: E731
    mask = load(prefix_path.parent / f"{prefix}_desc-brain_mask.nii.gz") > 0
    z = int(np.argmax(mask.sum(axis=(0, 1)))) + 3
    sl = lambda a: np.rot90(np.where(mask, a, np.nan)[:, :, z])  # noqa: E731
    fig, axes = plt.subplots(2, 4, figsize=(11, 5.6), constrained_layout=True)
    for col, (suffix, title, cmap, lim) in enumerate(MAPS):
        fit = load(prefix_path.parent / f"{prefix}_{suffix}.nii.gz")
        true = load(truth_dir / rel / f"{prefix}_{suffix}.nii.gz")
        lo, hi = lim or (0.0, float(np.percentile(true[mask], 99.5)))
        for row, (label, data) in enumerate((("qalas-bids fit", fit), ("ground truth", true))):
            im = axes[row, col].imshow(sl(data), cmap=cmap, vmin=lo, vmax=hi)
            axes[row, col].set_title(f"{title}: {label}", fontsize=9)
            axes[row, col].set_axis_off()
        fig.colorbar(im, ax=axes[:, col], shrink=0.6)
    fig.suptitle(f"{prefix}: SSL-QALAS scan-specific fit of the demo digital brain (top) "
                 "vs its ground truth (bottom)", fontsize=10)
    fig.savefig(png, dpi=80)
    print("wrote", png)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
