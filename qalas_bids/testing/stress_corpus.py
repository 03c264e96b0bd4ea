"""Stress corpus: randomised *valid* QALAS + B1 datasets, and implausible ones.

Each case is small (an axial slab of the digital brain or head, :mod:`qalas_bids.qalas.phantom`)
so that one is simulated, written and pre-checked in well under a second. Valid cases span
(``VALID_RANGES``; the test asserts that no pre-work gate refuses one of them):

=================  ==================================================================
property           drawn from
=================  ==================================================================
protocol           :func:`qalas_bids.qalas.physics.protocols.sample_protocol` (Siemens,
                   GE, Philips ranges with margin: ``PROTOCOL_RANGES``)
anatomy            digital brain (brain only) or head (scalp, fat, skull, sinuses, eyes)
resolution         1 mm (7 slices) or 2 mm (10 slices) axial slab of the MNI152 brain
SNR                20 - 150 (log-uniform; WM contrast 5 / sigma)
layout             five 3D files or one 4D file
B1 field           quadratic (centre-bright), polynomial (random linear + quadratic),
                   radial (centre-dark ring), asymmetric (left-right and front-back
                   gradients), hot spot (off-centre Gaussian); scaled 0.8 - 1.2 and
                   clipped to 0.6 - 1.4 (the relative B1 of 3 T heads)
B1 kind            TurboFLASH famp (nominal angle 60 - 90 deg, noise 1 - 4 %, with its anat magnitude)
                   or a ready relative map (TB1map, zeros outside its mask)
outside the map's  famp 0 or noise (uniform 0 - 2x nominal) where its own magnitude has
own mask           no signal (skull, air, scalp edge)
B1 grid            voxels 1 - 6 mm (anisotropic), rotated up to 15 deg about a random
                   axis, axes permuted (axial / coronal / sagittal order), shifted up to
                   +-10 mm; covering the head, or (30 %) only the brain's bounding box
                   -3 to +6 mm (partial coverage: scalp cut, the brain still covered)
=================  ==================================================================

Implausible cases (``IMPLAUSIBLE_KINDS``) must each be refused or flagged: an anatomical
image given as the B1 map, volumes out of readout order (cyclic shift), a B1 grid shifted
by 40 - 70 mm (misregistered), NaNs in the B1 map or the QALAS images, a famp scaled by
0.3 - 0.5 or 2.5 - 4 (wrong units or nominal angle), an empty B1 map, a B1 map covering
half the brain, a relative map in percent read as a fraction.

Only the core, ``utils`` and ``bids`` are used (``testing`` layer); the arrays are written
as uncompressed NIfTI and described by in-memory :class:`~qalas_bids.bids.QalasRun` objects
with the exact simulated timing, the same objects the command line's discovery builds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
from scipy.spatial.transform import Rotation

from ..bids.b1_pairing import B1Source
from ..bids.discovery import QalasRun
from ..qalas.phantom.digital_brain import DigitalBrain, make_digital_brain
from ..qalas.physics.protocols import sample_protocol
from ..qalas.physics.timing import SequenceTiming, TimingProvenance

#: Scale of the simulated magnitudes (as in the demo dataset).
GAIN = 10000.0
#: Axial slabs (world z range, mm) simulated per resolution: 7-10 slices through the ventricles.
SLABS_MM = {1.0: (6.0, 12.0), 2.0: (2.0, 20.0)}
B1_SHAPES = ("quadratic", "polynomial", "radial", "asymmetric", "hotspot")
#: Documented ranges of the valid cases (see the module table).
VALID_RANGES: dict[str, Any] = {
    "snr": (20.0, 150.0),
    "resolution_mm": (1.0, 2.0),
    "p_1mm": 0.25,
    "b1_scale": (0.8, 1.2),
    "b1_clip": (0.6, 1.4),
    "b1_shapes": B1_SHAPES,
    "b1_voxel_mm": (1.0, 6.0),
    "b1_rotation_deg": (0.0, 15.0),
    "b1_shift_mm": (-10.0, 10.0),
    "partial_margin_mm": (-3.0, 6.0),
    "flip_angle_deg": (60.0, 90.0),
    "famp_noise": (0.01, 0.04),
    "p_relative_map": 0.2,
    "p_partial": 0.3,
}
IMPLAUSIBLE_KINDS = ("anatomy-as-b1", "wrong-order", "shifted-grid", "b1-nans", "qalas-nans",
                     "scaled-famp", "empty-b1", "half-coverage", "percent-as-fraction")


@dataclass(frozen=True)
class StressCase:
    """Everything that defines one dataset (drawn by :func:`draw_valid_case`)."""

    index: int
    seed: int
    anatomy: str
    resolution: float
    snr: float
    layout: str
    timing: SequenceTiming
    b1_shape: str
    b1_coefficients: tuple[float, ...]
    b1_kind: str  # "tfl" or "tb1map"
    outside: str  # "zero" or "noise" (famp where its magnitude has no signal)
    flip_angle: float
    b1_voxel_mm: tuple[float, float, float]
    b1_rotation: tuple[float, ...]  # axis (3) and angle (deg)
    b1_axes: tuple[int, int, int]
    b1_shift_mm: tuple[float, float, float]
    partial_margin_mm: float | None  # None: the B1 grid covers the head
    defect: str | None = None

    @property
    def label(self) -> str:
        defect = f"-{self.defect}" if self.defect else ""
        return f"{self.index:03d}{defect}"

    def describe(self) -> dict[str, Any]:
        return {"anatomy": self.anatomy, "resolution": self.resolution, "snr": round(self.snr, 1),
                "layout": self.layout, "b1": f"{self.b1_shape}/{self.b1_kind}/{self.outside}",
                "b1_voxel": self.b1_voxel_mm, "partial": self.partial_margin_mm is not None,
                "defect": self.defect}


def draw_valid_case(index: int, seed: int = 0) -> StressCase:
    """Case ``index`` of the valid corpus of ``seed`` (reproducible, independent draws)."""
    rng = np.random.default_rng([seed, index, 21])
    r = VALID_RANGES
    resolution = 1.0 if rng.random() < r["p_1mm"] else 2.0
    b1_kind = "tb1map" if rng.random() < r["p_relative_map"] else "tfl"
    axis = rng.normal(size=3)
    return StressCase(
        index=index, seed=int(rng.integers(2**31)),
        anatomy=str(rng.choice(["brain", "head"])), resolution=resolution,
        snr=float(math.exp(rng.uniform(*np.log(r["snr"])))), layout=str(rng.choice(["3d", "4d"])),
        timing=sample_protocol(rng), b1_shape=str(rng.choice(B1_SHAPES)),
        b1_coefficients=tuple(float(c) for c in rng.uniform(-1.0, 1.0, 8)) + (float(rng.uniform(*r["b1_scale"])),),
        b1_kind=b1_kind, outside="zero" if b1_kind == "tb1map" else str(rng.choice(["zero", "noise"])),
        flip_angle=float(rng.uniform(*r["flip_angle_deg"])),
        b1_voxel_mm=tuple(float(v) for v in rng.uniform(max(resolution, r["b1_voxel_mm"][0]), r["b1_voxel_mm"][1], 3)),
        b1_rotation=tuple(float(a) for a in axis / np.linalg.norm(axis)) + (float(rng.uniform(*r["b1_rotation_deg"])),),
        b1_axes=tuple(int(a) for a in rng.permutation(3)),
        b1_shift_mm=tuple(float(s) for s in rng.uniform(*r["b1_shift_mm"], 3)),
        partial_margin_mm=float(rng.uniform(*r["partial_margin_mm"])) if rng.random() < r["p_partial"] else None,
    )


def draw_implausible_case(index: int, seed: int = 0) -> StressCase:
    """A valid case with one defect of :data:`IMPLAUSIBLE_KINDS` (cycled by ``index``)."""
    case = draw_valid_case(10_000 + index, seed)
    defect = IMPLAUSIBLE_KINDS[index % len(IMPLAUSIBLE_KINDS)]
    if defect == "percent-as-fraction":
        case = replace(case, b1_kind="tb1map", outside="zero")
    elif defect in ("anatomy-as-b1", "scaled-famp"):
        case = replace(case, b1_kind="tfl")
    return replace(case, index=index, defect=defect)


# --------------------------------------------------------------------------- B1 fields
def b1_field_factory(case: StressCase) -> Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    """``factory(centre, semi_axes) -> field(world)`` of the case's relative B1 (0.6 - 1.4)."""
    c = case.b1_coefficients
    scale = c[-1]

    def factory(centre: np.ndarray, axes: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        axes = np.asarray(axes, float).copy()
        axes[2] = max(axes[2], axes[:2].min())  # a slab's thin z extent is not the head's

        def b1(world: np.ndarray) -> np.ndarray:
            u = (np.asarray(world, float) - centre) / axes
            x, y, z = u[..., 0], u[..., 1], u[..., 2]
            r2 = x * x + y * y + z * z
            if case.b1_shape == "quadratic":
                shape = 1.05 - (0.15 + 0.15 * abs(c[0])) * r2
            elif case.b1_shape == "polynomial":
                shape = 1.0 + 0.12 * (c[0] * x + c[1] * y + c[2] * z) + 0.1 * (c[3] * x * x + c[4] * y * y + c[5] * x * y)
            elif case.b1_shape == "radial":
                shape = 0.95 + 0.15 * np.cos(np.pi * np.sqrt(r2) * (1.0 + 0.5 * abs(c[0])))
            elif case.b1_shape == "asymmetric":
                shape = 1.0 + 0.2 * c[0] * x + 0.15 * c[1] * y + 0.1 * c[2] * x * y - 0.1 * r2
            else:  # hotspot
                spot = np.array(c[:3]) * 0.5
                shape = 0.9 + 0.3 * np.exp(-((u - spot) ** 2).sum(-1) / (0.3 + 0.2 * abs(c[3])))
            return np.clip(scale * shape, *VALID_RANGES["b1_clip"])

        return b1

    return factory


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return Rotation.from_rotvec(math.radians(degrees) * axis).as_matrix()


def b1_grid(case: StressCase, brain: DigitalBrain) -> tuple[tuple[int, int, int], np.ndarray]:
    """The B1 map's grid: rotated, permuted, off-centre; covering the head (and beyond the
    slab in z) or only the brain + ``partial_margin_mm``. The field is defined in world
    coordinates, so every grid samples the same (registered) field."""
    linear = _rotation(case.b1_rotation[:3], case.b1_rotation[3]) @ np.eye(3)[:, list(case.b1_axes)]
    linear = linear * np.array(case.b1_voxel_mm)
    if case.partial_margin_mm is None:
        idx, margin = np.argwhere(brain.head_mask), 10.0
    else:
        idx, margin = np.argwhere(brain.brain_mask), case.partial_margin_mm
    corners = nib.affines.apply_affine(brain.affine, np.array([idx.min(0), idx.max(0)]))
    shift = np.array(case.b1_shift_mm)  # the field of view off-centre by up to +-10 mm
    lo = corners.min(0) - margin - np.maximum(shift, 0)
    hi = corners.max(0) + margin + np.maximum(-shift, 0)
    slab_lo, slab_hi = nib.affines.apply_affine(brain.affine, [[0, 0, 0], np.array(brain.shape) - 1])[:, 2]
    lo[2], hi[2] = min(lo[2], slab_lo - 8.0), max(hi[2], slab_hi + 8.0)  # the B1 slab covers the QALAS slab
    box = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    vox = box @ np.linalg.inv(linear).T
    first, last = np.floor(vox.min(0)) - 1, np.ceil(vox.max(0)) + 1
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = linear @ (first - np.abs(shift) % 1.0)  # and off the QALAS grid by a fraction of a voxel
    shape = tuple(int(n) for n in (last - first + 2))
    return shape, affine  # type: ignore[return-value]


# --------------------------------------------------------------------------- simulation
@dataclass
class SimulatedCase:
    """Arrays of one case: QALAS ``(X, Y, Z, 5)`` magnitudes and the B1 map with its grid."""

    case: StressCase
    brain: DigitalBrain
    qalas: np.ndarray
    b1_map: np.ndarray  # famp (tfl) or relative B1 (tb1map)
    b1_affine: np.ndarray
    b1_magnitude: np.ndarray | None
    qalas_affines: list[np.ndarray] = field(default_factory=list)


def simulate_case(case: StressCase) -> SimulatedCase:
    """Simulate the QALAS slab and the B1 map of ``case`` (with its defect, if any)."""
    brain = make_digital_brain(resolution=case.resolution, snr=case.snr, seed=case.seed, timing=case.timing,
                               anatomy=case.anatomy, z_slab=SLABS_MM[case.resolution],
                               b1_field_factory=b1_field_factory(case))
    rng = np.random.default_rng([case.seed, 7])
    shape, affine = b1_grid(case, brain)
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    world = nib.affines.apply_affine(affine, ijk)
    rel = brain.b1_at(world)
    # The map's own magnitude: proton density on its grid plus noise; no signal in bone/air.
    # Beyond the simulated slab the head goes on: the slab's edge slices continue it.
    pd = _sample_extended(brain.pd * 1000.0, brain.affine, world)
    magnitude = np.hypot(pd + rng.normal(0, 15, shape), rng.normal(0, 15, shape))
    has_signal = pd > 150.0
    nominal = 10.0 * case.flip_angle
    if case.b1_kind == "tfl":
        noise = rng.uniform(*VALID_RANGES["famp_noise"])
        b1_map = np.round(rel * nominal * (1 + rng.normal(0, noise, shape)))
        outside = 0.0 if case.outside == "zero" else rng.uniform(0, 2 * nominal, shape).round()
    else:
        b1_map, outside = rel.astype(np.float32), 0.0
    b1_map = np.where(has_signal, b1_map, outside).astype(np.float32)
    qalas = (brain.signals * GAIN).astype(np.float32)
    sim = SimulatedCase(case, brain, qalas, b1_map, affine, magnitude.astype(np.float32) if case.b1_kind == "tfl" else None,
                        [brain.affine] * 5)
    if case.defect:
        _apply_defect(sim, rng)
    return sim


def _sample_extended(volume: np.ndarray, affine: np.ndarray, world: np.ndarray) -> np.ndarray:
    """``volume`` (linear interpolation) at ``world``; outside the grid in z its edge slice,
    in x/y its (zero) background."""
    from scipy import ndimage

    vox = nib.affines.apply_affine(np.linalg.inv(affine), world)
    vox[..., 2] = np.clip(vox[..., 2], 0, volume.shape[2] - 1)
    return ndimage.map_coordinates(volume, np.moveaxis(vox, -1, 0), order=1, mode="constant", cval=0.0)


def _apply_defect(sim: SimulatedCase, rng: np.random.Generator) -> None:
    defect = sim.case.defect
    if defect == "anatomy-as-b1":  # a QALAS contrast, scaled to a brain median of 1, as the famp map
        volume = sim.qalas[..., int(rng.integers(1, 5))]
        ijk = np.stack(np.meshgrid(*(np.arange(n) for n in sim.b1_map.shape), indexing="ij"), axis=-1)
        image = _sample_extended(volume, sim.brain.affine, nib.affines.apply_affine(sim.b1_affine, ijk))
        scale = 10.0 * sim.case.flip_angle / max(float(np.median(volume[sim.brain.brain_mask])), 1e-6)
        sim.b1_map = (image * scale * rng.uniform(0.9, 1.1)).astype(np.float32)
    elif defect == "wrong-order":
        shift = int(rng.integers(1, 5))
        sim.qalas = np.ascontiguousarray(np.roll(sim.qalas, shift, axis=-1))
    elif defect == "shifted-grid":
        direction = rng.normal(size=3)
        sim.b1_affine = sim.b1_affine.copy()
        sim.b1_affine[:3, 3] += direction / np.linalg.norm(direction) * rng.uniform(40.0, 70.0)
    elif defect == "b1-nans":
        sim.b1_map = sim.b1_map.copy()
        sim.b1_map[tuple(n // 2 for n in sim.b1_map.shape[:2])] = np.nan
    elif defect == "qalas-nans":
        sim.qalas = sim.qalas.copy()
        sim.qalas[tuple(n // 2 for n in sim.qalas.shape[:3]) + (int(rng.integers(5)),)] = np.nan
    elif defect == "scaled-famp":
        sim.b1_map = sim.b1_map * float(rng.choice([rng.uniform(0.3, 0.5), rng.uniform(2.5, 4.0)]))
    elif defect == "empty-b1":
        sim.b1_map = np.zeros_like(sim.b1_map)
    elif defect == "half-coverage":  # keep the half of the B1 grid on one side of the brain centre
        axis = int(np.argmax(np.abs(sim.b1_affine[0, :3])))  # the B1 axis closest to x
        keep = [slice(None)] * 3
        keep[axis] = slice(0, sim.b1_map.shape[axis] // 2)
        sim.b1_map = sim.b1_map[tuple(keep)]
        if sim.b1_magnitude is not None:
            sim.b1_magnitude = sim.b1_magnitude[tuple(keep)]
    elif defect == "percent-as-fraction":
        sim.b1_map = sim.b1_map * 100.0
    else:
        raise ValueError(f"unknown defect {defect!r}")


# --------------------------------------------------------------------------- files
INVERSION_TIMES = (0.0, 0.1, 1.0, 1.9, 2.8)


def write_case(sim: SimulatedCase, folder: str | Path) -> QalasRun:
    """Write ``sim`` as uncompressed NIfTI under ``folder`` and describe it as the
    :class:`~qalas_bids.bids.QalasRun` that discovery would build (exact timing)."""
    case = sim.case
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"sub-{case.label}"
    if case.layout == "4d":
        files = [folder / f"{stem}_QALAS.nii"]
        nib.save(nib.Nifti1Image(sim.qalas, sim.qalas_affines[0]), files[0])
    else:
        files = [folder / f"{stem}_inv-{k}_QALAS.nii" for k in range(5)]
        for k, path in enumerate(files):
            nib.save(nib.Nifti1Image(sim.qalas[..., k], sim.qalas_affines[k]), path)
    if case.b1_kind == "tfl":
        b1_files = {"famp": folder / f"{stem}_acq-famp_TB1TFL.nii"}
        if sim.b1_magnitude is not None:
            b1_files["anat"] = folder / f"{stem}_acq-anat_TB1TFL.nii"
            nib.save(nib.Nifti1Image(sim.b1_magnitude, sim.b1_affine), b1_files["anat"])
        nib.save(nib.Nifti1Image(sim.b1_map, sim.b1_affine), b1_files["famp"])
        b1_meta = {"FlipAngle": case.flip_angle}
    else:
        b1_files = {"map": folder / f"{stem}_TB1map.nii"}
        nib.save(nib.Nifti1Image(sim.b1_map, sim.b1_affine), b1_files["map"])
        b1_meta = {"Units": "1"}
    b1 = B1Source(kind=case.b1_kind, files={k: str(v) for k, v in b1_files.items()}, metadata=b1_meta,
                  reason="stress corpus")
    metadata = {"Manufacturer": "Siemens", "InversionTimes": list(INVERSION_TIMES),
                "RepetitionTime": case.timing.esp, "EchoTrainLength": case.timing.tf,
                "FlipAngle": case.timing.flip_angle}
    return QalasRun(subject=case.label, session=None, run=None, acquisition=None,
                    qalas_files=tuple(str(f) for f in files), metadata=metadata, b1=b1,
                    entities={"subject": case.label}, timing=TimingProvenance(timing=case.timing))
