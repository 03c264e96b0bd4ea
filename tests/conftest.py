"""Shared pytest set-up: the ``gpu`` tier and its stage-timing table.

Tests marked ``gpu`` need a CUDA GPU; without one they are skipped with the reason. The
tier can be dry-run on the CPU (same code, smaller data) with ``QALAS_GPU_TIER_ON_CPU=1``,
which checks the tier itself, not the GPU. Tests of the tier add rows to the stage-timing
table printed at the end of the session (``make gpu-test``).
"""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

GPU_TIMINGS = pytest.StashKey[list]()
DRY_RUN_ENV = "QALAS_GPU_TIER_ON_CPU"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def gpu_tier_device() -> str | None:
    """``cuda`` on a GPU machine, ``cpu`` for a dry run, ``None`` (skip) otherwise."""
    if cuda_available():
        return "cuda"
    return "cpu" if os.environ.get(DRY_RUN_ENV) == "1" else None


def crop_slab(root: Path, n_slices: int) -> None:
    """Keep a central slab of the QALAS volumes and of the ground-truth maps (same grid)."""
    paths = [*root.glob("sub-*/anat/*_QALAS.nii.gz"),
             *root.glob("derivatives/groundtruth/sub-*/*/*.nii.gz")]
    for path in paths:
        img = nib.load(path)
        z0 = img.shape[2] // 2 - n_slices // 2
        nib.save(img.slicer[:, :, z0:z0 + n_slices], path)


def tissue_bias(bids: Path, out: Path, prefix: str,
                maps: tuple[str, ...] = ("T1map", "T2map", "IEmap")) -> dict[str, float]:
    """Median signed relative error per ``<map>_<tissue>`` for WM and GM (fitted voxels of
    sub-01 against the demo dataset's ground truth)."""
    from qalas_bids.cli.demo_accuracy import _tissue_masks

    truth = bids / "derivatives" / "groundtruth" / "sub-01" / "anat"
    masks = _tissue_masks(truth, prefix)
    bias = {}
    for name in maps:
        est = np.asarray(nib.load(out / "sub-01" / "anat" / f"{prefix}_{name}.nii.gz").dataobj, dtype=float)
        true = np.asarray(nib.load(truth / f"{prefix}_{name}.nii.gz").dataobj, dtype=float)
        for tissue in ("WM", "GM"):
            sel = masks[tissue] & (est > 0)
            assert sel.sum() > 100, f"too few fitted {tissue} voxels"
            bias[f"{name}_{tissue}"] = float(np.median((est[sel] - true[sel]) / true[sel]))
    return bias


def pytest_configure(config):
    config.stash[GPU_TIMINGS] = []


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items or gpu_tier_device() is not None:
        return
    import torch

    skip = pytest.mark.skip(reason=(
        f"needs a CUDA GPU (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
        f"run `make gpu-test` on a GPU machine, or set {DRY_RUN_ENV}=1 to dry-run the tier on the CPU"))
    for item in gpu_items:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def gpu_timings(request) -> list:
    """Rows ``{"case": str, **stage seconds}`` for the end-of-session timing table."""
    return request.config.stash[GPU_TIMINGS]


def _timing_table(rows: list[dict]) -> list[str]:
    columns = ["total", "device check", "preflight", "input checks", "workflow", "fit", "network", "refinement",
               "crlb", "reports"]
    width = max(len(r["case"]) for r in rows)
    lines = [f"{'case':<{width}}  " + "  ".join(f"{c:>10}" for c in columns)]
    for row in rows:
        cells = [f"{row[c]:10.2f}" if isinstance(row.get(c), (int, float)) else f"{'-':>10}" for c in columns]
        lines.append(f"{row['case']:<{width}}  " + "  ".join(cells))
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = config.stash.get(GPU_TIMINGS, [])
    if not rows:
        return
    terminalreporter.section("GPU tier: per-stage timing (seconds)")
    device = rows[0].get("device_name", "")
    if device:
        terminalreporter.write_line(f"device: {device}")
    for line in _timing_table(rows):
        terminalreporter.write_line(line)
