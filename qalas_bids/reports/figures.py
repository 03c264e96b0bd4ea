"""Report figures (PNG, 100 dpi): map mosaics, overlays, histograms, loss curve.

Mosaics and plots use matplotlib's object API (no pyplot state, any backend); the overlays
that must respect two different grids (B1 before/after resampling, mask outline) use
nilearn, which places images by their affines (world coordinates).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import nibabel as nib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
#: (colour map, lower, upper) per map; None = 1st/99th percentile inside the mask.
MAP_DISPLAY = {
    "T1map": ("magma", 0.0, 4.5),
    "T2map": ("viridis", 0.0, 0.3),
    "PDmap": ("gray", 0.0, None),
    "IEmap": ("cividis", 0.5, 1.0),
}


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, facecolor="white", bbox_inches="tight", pad_inches=0.05)
    return path


class FigureBatch:
    """Figures queued while a report is assembled, then drawn together.

    With ``workers > 1`` they are drawn in that many processes forked from this one (the
    arrays are shared by the fork, only the paths come back), otherwise one after the other.
    ``add(func, path, *args)`` returns ``path`` at once; :meth:`draw` writes the files.
    """

    def __init__(self, workers: int = 1) -> None:
        self.workers = max(1, int(workers))
        self.jobs: list[tuple] = []

    def add(self, func: Callable[..., Path], path: str | Path, *args, **kwargs) -> Path:
        self.jobs.append((func, Path(path), args, kwargs))
        return Path(path)

    def draw(self) -> list[Path]:
        from ..utils.parallel import fork_map

        jobs, self.jobs = self.jobs, []
        if self.workers > 1 and len(jobs) > 1:
            from nilearn import plotting  # noqa: F401  (imported once, before the fork)

        def draw_one(index: int) -> Path:
            func, path, args, kwargs = jobs[index]
            return func(path, *args, **kwargs)

        return fork_map(draw_one, len(jobs), self.workers)


def canonical_data(img: nib.Nifti1Image) -> np.ndarray:
    """Voxel data reoriented to RAS+ (first 3D volume) for display."""
    img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data[..., 0] if data.ndim == 4 else data


def slice_indices(mask: np.ndarray, n: int = 6) -> list[int]:
    """``n`` axial slices evenly spread over the mask's extent (whole volume if empty)."""
    z = np.nonzero(mask.any(axis=(0, 1)))[0]
    lo, hi = (z.min(), z.max()) if z.size else (0, mask.shape[2] - 1)
    return sorted({int(round(v)) for v in np.linspace(lo + 0.15 * (hi - lo), hi - 0.1 * (hi - lo), n)})


def mosaic(
    path: str | Path,
    rows: Sequence[tuple[str, np.ndarray, str, float, float, str]],
    mask: np.ndarray,
    n_slices: int = 6,
) -> Path:
    """Rows of axial slices (RAS data), one colour bar per row in physical units.

    ``rows`` items: ``(title, data, cmap, vmin, vmax, units)``.
    """
    slices = slice_indices(mask, n_slices)
    # One image per row: the slices side by side with a blank gap (one axes, not six).
    strips = [np.concatenate([part for z in slices for part in (
        data[:, :, z], np.full((2, data.shape[1]), np.nan, dtype=np.float32))][:-1], axis=0)
        for _, data, *_ in rows]
    width = 1.55 * strips[0].shape[0] / strips[0].shape[1]  # inches at 1.55 in per row
    fig = Figure(figsize=(width + 0.9, 1.75 * len(rows)))
    grid = fig.add_gridspec(len(rows), 2, width_ratios=[width, 0.12], wspace=0.03, hspace=0.15)
    for r, ((title, data, cmap, vmin, vmax, units), strip) in enumerate(zip(rows, strips)):
        ax = fig.add_subplot(grid[r, 0])
        image = ax.imshow(strip.T, origin="lower", cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=8, loc="left")
        bar = fig.colorbar(image, cax=fig.add_subplot(grid[r, 1]))
        bar.set_label(units, fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return _save(fig, Path(path))


def display_range(name: str, data: np.ndarray, mask: np.ndarray) -> tuple[str, float, float]:
    """Colour map and limits of a map (fixed physical ranges, PD from its percentiles)."""
    cmap, lo, hi = MAP_DISPLAY.get(name, ("gray", None, None))
    values = data[mask & np.isfinite(data)]
    if lo is None:
        lo = float(np.percentile(values, 1)) if values.size else 0.0
    if hi is None:
        hi = float(np.percentile(values, 99)) if values.size else 1.0
    return cmap, lo, max(hi, lo + 1e-6)


def _anat(background: nib.Nifti1Image, ax, dim: float = -0.5, **kwargs):
    """nilearn anatomical display on ``ax`` (no annotations, cross or colour bar; ``dim``)."""
    from nilearn import plotting

    return plotting.plot_anat(background, axes=ax, annotate=False, draw_cross=False, dim=dim,
                              colorbar=False, **kwargs)


def b1_registration(path: str | Path, background: nib.Nifti1Image, b1_qalas: nib.Nifti1Image,
                    b1_raw: nib.Nifti1Image | None = None) -> Path:
    """B1 over the QALAS image, before (raw grid) and after resampling, placed by affines."""
    panels = ([("B1 (raw grid, before resampling)", b1_raw)] if b1_raw is not None else []) + [
        ("B1 resampled to QALAS (relative)", b1_qalas)]
    fig = Figure(figsize=(9, 2.6 * len(panels)))
    FigureCanvasAgg(fig)
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        display = _anat(background, ax, display_mode="ortho", title=title)
        data = np.asarray(img.dataobj, dtype=np.float32)
        is_qalas_grid = img is b1_qalas
        img = nib.Nifti1Image(data, img.affine)  # raw famp maps are often int16
        finite = data[np.isfinite(data) & (data > 0)]
        lo, hi = ((0.65, 1.35) if is_qalas_grid else
                  (float(np.percentile(finite, 2)), float(np.percentile(finite, 98))) if finite.size else (0, 1))
        display.add_overlay(img, cmap="coolwarm", vmin=lo, vmax=hi, transparency=0.45, colorbar=True)
        display.add_contours(img, levels=[float(np.mean([lo, hi]))], colors="k", linewidths=0.6)
    return _save(fig, Path(path))


def b1_motion_overlay(path: str | Path, background: nib.Nifti1Image, magnitude: nib.Nifti1Image,
                      matrix: Sequence[Sequence[float]]) -> Path:
    """Outline of the B1 map's magnitude over QALAS, at its header position (before) and
    after the rigid registration (``matrix``: 4x4 RAS, QALAS world -> B1 world)."""
    data = np.asarray(magnitude.dataobj, dtype=np.float32)
    level = float(np.percentile(data, 99)) * 0.25
    placed = {"B1 magnitude at its header position (before registration)": magnitude.affine,
              "after rigid registration": np.linalg.inv(np.asarray(matrix, dtype=float)) @ magnitude.affine}
    fig = Figure(figsize=(9, 5.2))
    FigureCanvasAgg(fig)
    for i, (title, affine) in enumerate(placed.items()):
        ax = fig.add_subplot(2, 1, i + 1)
        display = _anat(background, ax, display_mode="ortho", title=title)
        display.add_contours(nib.Nifti1Image(data, affine), levels=[level], colors="r", linewidths=0.8)
    return _save(fig, Path(path))


def axial_cuts(mask: nib.Nifti1Image, n: int = 6) -> list[float]:
    """World z (mm) of ``n`` axial slices spread over the mask (:func:`slice_indices`), for
    nilearn's ``cut_coords`` (so it does not search the image for them)."""
    canonical = nib.as_closest_canonical(mask)
    z = slice_indices(np.asarray(canonical.dataobj) > 0, n)
    return [float((canonical.affine @ [0, 0, k, 1])[2]) for k in z]


def mask_outline(path: str | Path, background: nib.Nifti1Image, mask: nib.Nifti1Image,
                 head_mask: nib.Nifti1Image | None = None) -> Path:
    """Brain mask outline (red) and head mask outline (blue) over the QALAS image."""
    fig = Figure(figsize=(9, 2.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    display = _anat(background, ax, display_mode="z", cut_coords=axial_cuts(mask))
    if head_mask is not None:
        display.add_contours(head_mask, levels=[0.5], colors="b", linewidths=0.8)
    display.add_contours(mask, levels=[0.5], colors="r", linewidths=0.8)
    return _save(fig, Path(path))


def registration_overlay(path: str | Path, moving: nib.Nifti1Image, target: nib.Nifti1Image,
                         support: nib.Nifti1Image) -> Path:
    """Edges of the registration target (red, nilearn's edge map) over the moving image
    resampled into the target's space (fMRIPrep-style check): six axial slices spread over
    ``support`` (the brain mask in that space) and an orthogonal view at its centre."""
    fig = Figure(figsize=(9, 5.2))
    FigureCanvasAgg(fig)
    target = nib.squeeze_image(target)  # a (x, y, z, 1) T1w
    target = nib.Nifti1Image(np.nan_to_num(np.asarray(target.dataobj, dtype=np.float32)), target.affine)
    for i, kwargs in enumerate(({"display_mode": "z", "cut_coords": axial_cuts(support, 8)[1:-1]},
                                {"display_mode": "ortho", "cut_coords": _centre(support)})):
        display = _anat(moving, fig.add_subplot(2, 1, i + 1), dim=0.0, **kwargs)
        if np.any(target.dataobj):  # nilearn divides by the maximum
            display.add_edges(target, color="r")
    return _save(fig, Path(path))


def _centre(mask: nib.Nifti1Image) -> tuple[float, float, float]:
    """World coordinates (mm) of the centre of mass of a mask (image centre when empty)."""
    data = np.asarray(mask.dataobj) > 0
    ijk = np.argwhere(data).mean(axis=0) if data.any() else (np.asarray(data.shape) - 1) / 2
    return tuple(float(v) for v in nib.affines.apply_affine(mask.affine, ijk))


def fit_flags(path: str | Path, background: nib.Nifti1Image, flags: nib.Nifti1Image,
              mask: nib.Nifti1Image) -> Path:
    """Voxels at a parameter bound (yellow) and with a high residual (magenta) over the image
    (axial slices spread over ``mask``)."""
    from matplotlib.colors import ListedColormap

    fig = Figure(figsize=(9, 2.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    display = _anat(background, ax, display_mode="z", cut_coords=axial_cuts(mask))
    data = np.asarray(flags.dataobj, dtype=np.float32)
    if (data > 0).any():
        masked = np.ma.masked_equal(data, 0)  # 1 at a bound, 2 high residual, 3 both
        display.add_overlay(nib.Nifti1Image(masked.filled(np.nan), flags.affine),
                            cmap=ListedColormap(["gold", "magenta", "red"]), vmin=0.5, vmax=3.5,
                            transparency=0.8)
    return _save(fig, Path(path))


def tissue_histograms(path: str | Path, maps: dict[str, np.ndarray], labels: np.ndarray,
                      tissue_labels: dict[str, int]) -> Path:
    """Histograms of T1 and T2 (s) per tissue class."""
    colours = {"WM": "tab:blue", "GM": "tab:orange", "CSF": "tab:green"}
    keys = [k for k in ("T1map", "T2map") if k in maps]
    fig = Figure(figsize=(4.2 * len(keys), 2.8))
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        hi = 5.0 if key == "T1map" else 0.5
        for tissue, value in tissue_labels.items():
            vals = maps[key][labels == value]
            if vals.size:
                ax.hist(np.clip(vals, 0, hi), bins=80, range=(0, hi), histtype="step",
                        color=colours.get(tissue), label=f"{tissue} (n={vals.size})", density=True)
        ax.set_xlabel(f"{key[:2]} (s)")
        ax.set_yticks([])
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, Path(path))


def loss_curve(path: str | Path, loss_history: Sequence[float]) -> Path:
    """Training loss per epoch (log scale)."""
    fig = Figure(figsize=(5, 2.6))
    ax = fig.add_subplot(1, 1, 1)
    loss = np.asarray(loss_history, dtype=float)
    ax.plot(np.arange(1, loss.size + 1), loss, lw=1.2)
    if (loss > 0).all():
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, Path(path))
