"""Digital brain: a realistic 3D-QALAS test object with exact ground truth.

Anatomy
    Tissue probability maps of the MNI152 (ICBM 2009a) template that ship *inside* the
    nilearn package (no download): grey matter (GM), white matter (WM) and the brain
    mask; cerebrospinal fluid is ``CSF = brain - GM - WM`` (clipped to >= 0; includes
    ventricles and the extra-axial CSF). The 1 mm maps are cropped to the brain bounding
    box plus ``margin_mm`` and resampled (nibabel, trilinear) to the requested isotropic
    resolution; linear interpolation of the fractions gives partial-volume voxels at the
    edges.

Parameters (3 T literature values; times in seconds)
    ======  =====  ======  ====  ====
    tissue  T1     T2      PD    IE
    ======  =====  ======  ====  ====
    WM      0.85   0.075   0.69  0.88
    GM      1.35   0.095   0.80  0.88
    CSF     4.2    1.8     1.00  0.98
    ======  =====  ======  ====  ====

    Per voxel the *parameters* are mixed (not the signals), which keeps one exact ground
    truth per voxel: T1 and T2 are fraction-weighted *geometric* means over the tissues
    present (``log T = sum(f_i log T_i) / sum(f_i)``: between the arithmetic mean, where
    5 % CSF would raise a GM voxel's T2 by 30 %, and the fast-exchange mean of the rates,
    where 20 % GM would cut a CSF voxel's T2 to 0.6 s), IE is the fraction-weighted mean
    and PD the fraction-weighted *sum* (partial volume with the background, whose PD is 0,
    lowers PD). Each map is then multiplied by ``1 + 0.03 * g`` where ``g`` is a
    smooth (Gaussian-filtered, ~12 mm) unit-variance random field of ``anatomy_seed``,
    so that maps are not piecewise constant.

B1+
    Smooth analytic field of world position: ``b1 = b1_scale * (1.05 - 0.25 * r**2)``
    with ``r`` the ellipsoidal distance from the brain centre normalised by the brain's
    semi-axes (1.05 in the centre, 0.8 at the brain surface), floored at 0.6 outside.
    :meth:`DigitalBrain.b1_at` evaluates it at any world coordinate (used to write B1
    maps on other grids). ``b1_pattern="asymmetric"`` gives instead a stronger, left-right
    and anterior-posterior asymmetric field spanning 0.7-1.3 over the brain
    (:func:`make_asymmetric_b1_field`).

Signals and noise
    Magnitudes from :func:`qalas_bids.qalas.physics.signal_model.qalas_magnitude` (float64).
    Rician noise: ``|s + n1 + i n2|`` with ``n1, n2 ~ N(0, sigma^2)``.
    **SNR definition**: ``SNR = mean noiseless magnitude of contrast 5 (index 4) in WM
    voxels (WM fraction > 0.8) / sigma``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable

import nibabel as nib
import numpy as np
import torch
from nibabel.processing import resample_from_to
from scipy import ndimage

from ..errors import QalasInputError
from .head_anatomy import GRID_MARGIN_MM, HEAD_LABELS, HEAD_TISSUE_PARAMETERS, head_fractions
from ..physics.signal_model import qalas_magnitude
from ..physics.timing import SequenceTiming

#: Literature 3 T values per tissue: T1 (s), T2 (s), PD (a.u.), IE.
TISSUE_PARAMETERS: dict[str, dict[str, float]] = {
    "WM": {"t1": 0.85, "t2": 0.075, "pd": 0.69, "ie": 0.88},
    "GM": {"t1": 1.35, "t2": 0.095, "pd": 0.80, "ie": 0.88},
    "CSF": {"t1": 4.2, "t2": 1.8, "pd": 1.0, "ie": 0.98},
}
#: Label values of the tissue segmentation (BIDS dseg): 0 is background.
TISSUE_LABELS: dict[str, int] = {"CSF": 1, "GM": 2, "WM": 3}
#: Parameters and labels of every tissue, the head's included (:mod:`.head_anatomy`).
ALL_TISSUE_PARAMETERS = {**TISSUE_PARAMETERS, **HEAD_TISSUE_PARAMETERS}
ALL_LABELS = {**TISSUE_LABELS, **HEAD_LABELS}
#: Anatomies of :func:`make_digital_brain`.
ANATOMIES = ("brain", "head")
#: B1 field patterns of :func:`make_digital_brain`.
B1_PATTERNS = ("default", "asymmetric")
#: Relative amplitude of the smooth spatial variation of T1/T2/PD/IE.
SPATIAL_VARIATION = 0.03
#: Smoothing (mm, Gaussian sigma) of the random spatial-variation fields.
VARIATION_SMOOTHING_MM = 12.0
#: B1 in the brain centre and at the brain surface (before ``b1_scale``).
B1_CENTRE, B1_SURFACE, B1_FLOOR = 1.05, 0.80, 0.6
#: WM fraction above which a voxel counts as WM for the SNR definition.
SNR_WM_FRACTION = 0.8

_TISSUES = ("WM", "GM", "CSF")


@dataclass
class DigitalBrain:
    """Ground-truth maps, B1 and simulated QALAS magnitudes of the digital brain.

    ``t1``/``t2`` in seconds, ``pd`` unitless (0 in the background), ``ie`` and ``b1``
    unitless; all 3D float64 on the grid ``affine`` (RAS mm). ``noiseless`` and
    ``signals`` are ``(X, Y, Z, 5)`` magnitudes; ``sigma`` is the Rician noise level in
    the same units and ``snr`` the requested SNR (see the module docstring).
    """

    t1: np.ndarray
    t2: np.ndarray
    pd: np.ndarray
    ie: np.ndarray
    b1: np.ndarray
    tissue_fractions: dict[str, np.ndarray]
    labels: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    timing: SequenceTiming
    noiseless: np.ndarray
    signals: np.ndarray
    sigma: float
    snr: float
    seed: int = 0
    b1_scale: float = 1.0
    b1_field: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)
    head_mask: np.ndarray | None = None  # every class (skull and sinuses too) >= 0.5
    anatomy: str = "brain"
    receive: np.ndarray | None = None  # receive-coil sensitivity (1 = uniform)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.t1.shape)  # type: ignore[return-value]

    def tissue_mask(self, name: str, min_fraction: float = 0.8) -> np.ndarray:
        """Voxels whose fraction of tissue ``name`` (WM, GM or CSF) exceeds ``min_fraction``."""
        key = name.upper() if name.upper() in self.tissue_fractions else name.capitalize()
        if key not in self.tissue_fractions:
            raise KeyError(f"unknown tissue {name!r}; choose one of {sorted(self.tissue_fractions)}")
        return self.tissue_fractions[key] > min_fraction

    def b1_at(self, world_xyz: np.ndarray) -> np.ndarray:
        """True B1 at world (RAS mm) coordinates ``(..., 3)`` (same field as ``self.b1``)."""
        assert self.b1_field is not None
        return self.b1_field(np.asarray(world_xyz, dtype=float))

    def to_nifti(self, data: np.ndarray, dtype=np.float32) -> nib.Nifti1Image:
        """Wrap an array on this grid in a NIfTI image (qform/sform = ``affine``)."""
        img = nib.Nifti1Image(np.asarray(data, dtype=dtype), self.affine)
        img.header.set_xyzt_units("mm", "sec")
        img.set_qform(self.affine, code=1)
        img.set_sform(self.affine, code=1)
        return img


def add_rician_noise(signals: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of ``signals`` plus complex Gaussian noise of std ``sigma`` per channel."""
    signals = np.asarray(signals, dtype=np.float64)
    if sigma < 0 or not np.isfinite(sigma):
        raise QalasInputError(f"noise sigma must be a finite number >= 0, got {sigma!r}")
    real = signals + rng.normal(0.0, sigma, signals.shape)
    imag = rng.normal(0.0, sigma, signals.shape)
    return np.hypot(real, imag)


#: Extra 1 mm template kept above and below a ``z_slab`` while the head tissues are built
#: (their distance transforms then see the brain beyond the slab).
SLAB_PAD_MM = 20.0


@functools.lru_cache(maxsize=16)
def _template_fractions(resolution: float, margin_mm: float, anatomy: str = "brain",
                        z_slab: tuple[float, float] | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(tissue fractions, affine) of the MNI152 templates shipped with nilearn.

    ``anatomy="brain"``: WM, GM, CSF. ``"head"``: also the scalp, fat, eyes, skull and
    sinuses of :mod:`.head_anatomy`, built on a 1 mm grid and resampled like the brain.
    ``z_slab``: world z range (mm) of an axial slab; only that part is computed (fast
    small volumes for tests), the head tissues from the slab plus :data:`SLAB_PAD_MM`.
    """
    from nilearn import datasets  # local import: nilearn is slow to import

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    brain_img = datasets.load_mni152_brain_mask(resolution=1)
    brain = brain_img.get_fdata() > 0
    if anatomy == "head":
        margin_mm = max(margin_mm, GRID_MARGIN_MM)
    # Crop (1 mm grid) to the brain bounding box plus the margin.
    idx = np.argwhere(brain | (gm_img.get_fdata() + wm_img.get_fdata() > 0.05))
    lo, hi = idx.min(0), idx.max(0) + 1
    src_affine = brain_img.affine
    world_lo = nib.affines.apply_affine(src_affine, lo) - margin_mm
    world_hi = nib.affines.apply_affine(src_affine, hi - 1) + margin_mm

    def grid(step: float, pad: float = 0.0) -> tuple[tuple[int, ...], np.ndarray]:
        lo_, hi_ = world_lo.copy(), world_hi.copy()
        if z_slab is not None:
            lo_[2], hi_[2] = z_slab[0] - pad, z_slab[1] + pad
        shape = tuple(int(np.ceil(n)) + 1 for n in (hi_ - lo_) / step)
        affine = np.diag([step, step, step, 1.0])
        affine[:3, 3] = lo_
        return shape, affine

    def resample(data: np.ndarray, src: np.ndarray, target) -> np.ndarray:
        img = nib.Nifti1Image(data.astype(np.float32), src)
        out = resample_from_to(img, target, order=1, mode="constant", cval=0.0)
        return np.clip(np.asarray(out.dataobj, dtype=np.float64), 0.0, 1.0)

    def brain_fractions(target) -> dict[str, np.ndarray]:
        gm = resample(gm_img.get_fdata(), src_affine, target)
        wm = resample(wm_img.get_fdata(), src_affine, target)
        total = np.maximum(resample(brain.astype(np.float32), src_affine, target), np.clip(gm + wm, 0, 1))
        over = gm + wm > 1.0
        scale = np.where(over, 1.0 / np.maximum(gm + wm, 1e-12), 1.0)
        gm, wm = gm * scale, wm * scale
        return {"WM": wm, "GM": gm, "CSF": np.clip(total - gm - wm, 0.0, 1.0)}

    shape, affine = grid(resolution)
    if anatomy == "brain":
        fractions = brain_fractions((shape, affine))
    else:
        fine_grid = grid(1.0, SLAB_PAD_MM)
        fine = brain_fractions(fine_grid)
        total = fine["WM"] + fine["GM"] + fine["CSF"]
        head = head_fractions(total, _world_grid(fine_grid[0], fine_grid[1]))
        fine["CSF"] = fine["CSF"] + head.pop("CSF")
        fine.update(head)
        fractions = fine if resolution == 1.0 and z_slab is None else {
            name: resample(frac, fine_grid[1], (shape, affine)) for name, frac in fine.items()}
    for arr in fractions.values():
        arr[arr < 1e-3] = 0.0
        arr.setflags(write=False)
    affine.setflags(write=False)
    return fractions, affine


def _smooth_field(shape: tuple[int, ...], resolution: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance, zero-mean smooth random field (Gaussian-filtered white noise).

    Drawn on a 4 mm grid and interpolated (trilinear) to ``shape``: the field is smooth on
    a 12 mm scale, so the coarse grid loses nothing and is much faster at 1 mm.
    """
    step = max(1, int(round(4.0 / resolution)))
    coarse_shape = tuple(-(-n // step) + 1 for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape),
                                     VARIATION_SMOOTHING_MM / (resolution * step), mode="reflect")
    field_ = ndimage.zoom(coarse, step, order=1)[tuple(slice(0, n) for n in shape)]
    field_ -= field_.mean()
    return np.clip(field_ / max(field_.std(), 1e-12), -3.0, 3.0)


def make_b1_field(centre_mm: np.ndarray, semi_axes_mm: np.ndarray,
                  b1_scale: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """Smooth B1 field of world position: ``b1_scale*(1.05 - 0.25 r^2)``, floored at 0.6."""
    centre = np.asarray(centre_mm, dtype=float)
    axes = np.asarray(semi_axes_mm, dtype=float)

    def b1(world_xyz: np.ndarray) -> np.ndarray:
        r2 = (((np.asarray(world_xyz, dtype=float) - centre) / axes) ** 2).sum(-1)
        return b1_scale * np.maximum(B1_CENTRE - (B1_CENTRE - B1_SURFACE) * r2, B1_FLOOR)

    return b1


def make_asymmetric_b1_field(centre_mm: np.ndarray, semi_axes_mm: np.ndarray,
                             b1_scale: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """Strong asymmetric B1 field: ``b1_scale * (1 + 0.3 tanh(u))`` with ``u`` a smooth
    function of the normalised position (left-right and anterior-posterior gradients, a
    centre brightening), so the brain spans about 0.7-1.3 with every 0.1 band populated."""
    centre = np.asarray(centre_mm, dtype=float)
    axes = np.asarray(semi_axes_mm, dtype=float)

    def b1(world_xyz: np.ndarray) -> np.ndarray:
        x, y, z = np.moveaxis((np.asarray(world_xyz, dtype=float) - centre) / axes, -1, 0)
        u = 1.4 * x + 0.7 * y - 0.4 * z + 0.9 * (0.55 - (x * x + y * y + z * z))
        return b1_scale * (1.0 + 0.3 * np.tanh(u))

    return b1


def _world_grid(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World (mm) coordinates ``(X, Y, Z, 3)`` of every voxel of a grid."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    world = np.empty(tuple(shape) + (3,))
    for row in range(3):
        world[..., row] = sum(affine[row, col] * grid[col] for col in range(3)) + affine[row, 3]
    return world


def make_digital_brain(
    resolution: float = 2.0,
    snr: float = 30.0,
    seed: int = 0,
    timing: SequenceTiming | None = None,
    b1_scale: float = 1.0,
    *,
    anatomy_seed: int | None = None,
    margin_mm: float = 12.0,
    anatomy: str = "brain",
    receive_amplitude: float = 0.0,
    z_slab: tuple[float, float] | None = None,
    b1_pattern: str = "default",
    b1_field_factory: Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]] | None = None,
) -> DigitalBrain:
    """Simulate a 3D-QALAS acquisition of the digital brain (see the module docstring).

    Parameters
    ----------
    resolution : isotropic voxel size in mm (0.8-4; 1 and 2 are the usual choices)
    snr : SNR as defined in the module docstring (> 0; ``inf`` gives no noise)
    seed : seed of the noise (and of the spatial variation unless ``anatomy_seed`` is given)
    timing : sequence timing (default: Siemens preset)
    b1_scale : global factor applied to the B1 field
    anatomy_seed : seed of the smooth parameter variation (default ``seed``); keep it fixed
        to get repeated scans of the same "subject" with independent noise
    margin_mm : background margin around the brain bounding box (mm)
    anatomy : ``"brain"`` (brain only) or ``"head"`` (adds scalp, fat, skull, sinuses and
        eyes, :mod:`.head_anatomy`; the margin grows to hold them)
    receive_amplitude : receive-coil inhomogeneity: every contrast is multiplied by
        ``1 + a * g`` with ``g`` running linearly from -1 (anterior) to +1 (posterior) over the
        head (0 <= a < 0.5). It scales all five contrasts alike, so T1/T2/IE are unaffected and
        the fitted PD is ``pd * receive`` (``DigitalBrain.receive``)
    z_slab : world z range (mm, MNI152) of an axial slab to simulate instead of the whole
        brain (small volumes for tests; the brain centre/axes of the B1 field are then the slab's)
    b1_pattern : ``"default"`` (centre-bright, 0.8-1.05) or ``"asymmetric"`` (0.7-1.3,
        :func:`make_asymmetric_b1_field`)
    b1_field_factory : ``factory(centre_mm, semi_axes_mm) -> field(world_xyz)`` of another
        B1 field (default: the ``b1_pattern`` field with ``b1_scale``)
    """
    if b1_pattern not in B1_PATTERNS:
        raise QalasInputError(f"b1_pattern must be one of {B1_PATTERNS}, got {b1_pattern!r}")
    if not (0.0 <= receive_amplitude < 0.5):
        raise QalasInputError(f"receive_amplitude must be in [0, 0.5), got {receive_amplitude!r}")
    if anatomy not in ANATOMIES:
        raise QalasInputError(f"anatomy must be one of {ANATOMIES}, got {anatomy!r}")
    if not (0.5 <= float(resolution) <= 6.0):
        raise QalasInputError(f"resolution must be between 0.5 and 6 mm, got {resolution!r}")
    if not (snr > 0):
        raise QalasInputError(f"snr must be > 0, got {snr!r}")
    if not (0.5 <= b1_scale <= 1.5):
        raise QalasInputError(f"b1_scale must be in [0.5, 1.5], got {b1_scale!r}")
    timing = timing or SequenceTiming()
    slab = None if z_slab is None else (float(z_slab[0]), float(z_slab[1]))
    fractions, affine = _template_fractions(float(resolution), float(margin_mm), anatomy, slab)
    fractions = {k: v.copy() for k, v in fractions.items()}
    affine = affine.copy()
    shape = fractions["WM"].shape
    signal_tissues = [t for t in fractions if t in ALL_TISSUE_PARAMETERS]
    total = sum(fractions[t] for t in signal_tissues)
    tissue = total > 0

    anat_rng = np.random.default_rng(seed if anatomy_seed is None else anatomy_seed)
    maps = _mixed_maps(fractions, signal_tissues, tissue, total, resolution, anat_rng)
    labels, head_mask, brain_mask = _label_volumes(fractions, anatomy)

    world = _world_grid(shape, affine)
    brain_idx = np.argwhere(brain_mask)
    corners = nib.affines.apply_affine(affine, np.array([brain_idx.min(0), brain_idx.max(0)]))
    lo, hi = corners.min(0), corners.max(0)
    default_field = make_asymmetric_b1_field if b1_pattern == "asymmetric" else make_b1_field
    make_field = b1_field_factory or functools.partial(default_field, b1_scale=b1_scale)
    b1_field = make_field((lo + hi) / 2, (hi - lo) / 2)
    b1 = b1_field(world)

    noiseless = np.zeros(shape + (5,), dtype=np.float64)
    with torch.no_grad():
        sel = tissue
        noiseless[sel] = qalas_magnitude(
            torch.from_numpy(maps["t1"][sel]),
            torch.from_numpy(maps["t2"][sel]), torch.from_numpy(maps["pd"][sel]),
            torch.from_numpy(maps["ie"][sel]), torch.from_numpy(b1[sel]), timing,
        ).numpy()
    receive = _receive_field(world, head_mask, affine, receive_amplitude)
    noiseless *= receive[..., None]
    wm = fractions["WM"] > SNR_WM_FRACTION
    sigma = float(noiseless[wm, 4].mean() / snr) if np.isfinite(snr) else 0.0
    noise_rng = np.random.default_rng([seed, 1])
    signals = add_rician_noise(noiseless, sigma, noise_rng) if sigma > 0 else noiseless.copy()

    # T1/T2/IE have no meaning in the background; keep them 0 there (PD is 0 too).
    return DigitalBrain(
        t1=maps["t1"], t2=maps["t2"], pd=maps["pd"], ie=maps["ie"], b1=b1,
        tissue_fractions=fractions, labels=labels, brain_mask=brain_mask, affine=affine,
        timing=timing, noiseless=noiseless, signals=signals, sigma=sigma, snr=float(snr),
        seed=int(seed), b1_scale=float(b1_scale), b1_field=b1_field, head_mask=head_mask,
        anatomy=anatomy, receive=receive,
    )


def _mixed_maps(fractions: dict[str, np.ndarray], signal_tissues: list[str], tissue: np.ndarray,
                total: np.ndarray, resolution: float, anat_rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Ground-truth T1/T2 (s), PD and IE of partial-volume voxels (module docstring), with
    the smooth spatial variation; 0 outside ``tissue``."""
    shape = total.shape
    maps: dict[str, np.ndarray] = {}
    weights = np.where(tissue, total, 1.0)
    for name in ("t1", "t2", "pd", "ie"):
        if name in ("t1", "t2"):  # fraction-weighted geometric mean
            log_t = sum(fractions[t] * np.log(ALL_TISSUE_PARAMETERS[t][name]) for t in signal_tissues)
            mixed = np.exp(log_t / weights)
        else:  # IE: fraction-weighted mean; PD: fraction-weighted sum
            mixed = sum(fractions[t] * ALL_TISSUE_PARAMETERS[t][name] for t in signal_tissues)
            mixed = mixed / weights if name == "ie" else mixed
        variation = 1.0 + SPATIAL_VARIATION * _smooth_field(shape, resolution, anat_rng)
        maps[name] = np.where(tissue, mixed * variation, 0.0)
    maps["ie"] = np.clip(maps["ie"], 0.5, 1.0)
    return maps


def _label_volumes(fractions: dict[str, np.ndarray], anatomy: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels int8 (largest fraction wins; the brain's inside the intracranial volume),
    head mask, brain mask) from the tissue fractions."""
    shape = fractions["WM"].shape
    labels = np.zeros(shape, dtype=np.int8)
    names = list(fractions)
    stacked = np.stack([fractions[t] for t in names], axis=-1)
    head_mask = stacked.sum(-1) >= 0.5
    codes = np.array([ALL_LABELS[t] for t in names], dtype=np.int8)
    labels[head_mask] = codes[np.argmax(stacked[head_mask], axis=-1)]
    brain_mask = fractions["WM"] + fractions["GM"] + fractions["CSF"] >= 0.5
    if anatomy == "head":  # the brain label wins inside the intracranial volume
        brain_stack = np.stack([fractions[t] for t in ("CSF", "GM", "WM")], axis=-1)
        labels[brain_mask] = (np.argmax(brain_stack[brain_mask], axis=-1) + 1).astype(np.int8)
    return labels, head_mask, brain_mask


def _receive_field(world: np.ndarray, head_mask: np.ndarray, affine: np.ndarray, amplitude: float) -> np.ndarray:
    """Receive sensitivity ``1 + a * g``, ``g`` linear from -1 (anterior) to +1 (posterior)."""
    support = np.argwhere(head_mask)
    y_lo, y_hi = (nib.affines.apply_affine(affine, support[[support[:, 1].argmin(), support[:, 1].argmax()]])[:, 1])
    receive = 1.0 + amplitude * np.clip(1.0 - 2.0 * (world[..., 1] - y_lo) / max(y_hi - y_lo, 1e-6),
                                        -1.0, 1.0)
    return receive


def simulate_tissue_voxels(
    n_per_tissue: int,
    snr: float,
    seed: int = 0,
    timing: SequenceTiming | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Small voxel sample set for unit tests (no image, no anatomy).

    ``n_per_tissue`` voxels of each of WM, GM and CSF, every parameter jittered by a
    uniform ±5 %, B1 uniform in [0.8, 1.15], Rician noise with ``sigma`` = mean noiseless
    WM contrast-5 magnitude / ``snr`` (the same SNR definition as the digital brain).

    Returns ``(magnitudes (N, 5) float64, truth {t1, t2, pd, ie, b1: (N,)}, labels (N,)
    int8)`` with labels 1 CSF, 2 GM, 3 WM.
    """
    if int(n_per_tissue) < 1:
        raise QalasInputError(f"n_per_tissue must be >= 1, got {n_per_tissue!r}")
    if not (snr > 0):
        raise QalasInputError(f"snr must be > 0, got {snr!r}")
    timing = timing or SequenceTiming()
    rng = np.random.default_rng(seed)
    n = int(n_per_tissue)
    truth: dict[str, list[np.ndarray]] = {k: [] for k in ("t1", "t2", "pd", "ie", "b1")}
    labels = []
    for name in _TISSUES:
        for key, value in TISSUE_PARAMETERS[name].items():
            truth[key].append(value * rng.uniform(0.95, 1.05, n))
        truth["b1"].append(rng.uniform(0.8, 1.15, n))
        labels.append(np.full(n, TISSUE_LABELS[name], dtype=np.int8))
    out = {k: np.concatenate(v) for k, v in truth.items()}
    out["ie"] = np.clip(out["ie"], 0.5, 1.0)
    with torch.no_grad():
        noiseless = qalas_magnitude(*(torch.from_numpy(out[k]) for k in ("t1", "t2", "pd", "ie", "b1")),
                                    timing).numpy()
    label_arr = np.concatenate(labels)
    sigma = float(noiseless[label_arr == TISSUE_LABELS["WM"], 4].mean() / snr) if np.isfinite(snr) else 0.0
    magnitudes = add_rician_noise(noiseless, sigma, rng) if sigma > 0 else noiseless
    return magnitudes, out, label_arr
