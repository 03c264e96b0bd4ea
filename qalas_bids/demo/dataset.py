"""Write a BIDS raw dataset of digital-brain QALAS scans (HBCD style) with ground truth.

Layout (``sub-01``, ``ses-01``, ``run-1``)::

    dataset_description.json  participants.tsv/.json  README  CHANGES  .bidsignore
    sub-01/sub-01_sessions.tsv
    sub-01/ses-01/anat/sub-01_ses-01_run-1_inv-<0..4>_QALAS.nii.gz/.json   (layout "3d")
                       sub-01_ses-01_run-1_QALAS.nii.gz/.json  (5 volumes, layout "4d")
    sub-01/ses-01/fmap/sub-01_ses-01_acq-anat_run-1_TB1TFL.nii.gz/.json
                       sub-01_ses-01_acq-famp_run-1_TB1TFL.nii.gz/.json
    derivatives/groundtruth/   (derivative dataset: T1map, T2map, PDmap, IEmap, tissue
                                dseg + probseg, fmap/space-QALAS_TB1map, simulation JSON)

Conventions
    * QALAS images are **int16**, ``round(GAIN * magnitude)`` with ``GAIN = 10000``; the
      ground-truth PD map is in the same units (``GAIN * pd``), T1/T2 in seconds.
    * QALAS is not in the BIDS specification yet, so ``.bidsignore`` lists only
      ``*_QALAS.nii.gz`` and ``*_QALAS.json``; everything else is validator-clean.
    * In the 4D layout the sidecar's ``InversionTime`` is the list of the five
      inversion times (seconds); in the 3D layout each volume has its own number.
    * B1 (Siemens TurboFLASH): lower resolution, rotated/shifted/reoriented grid;
      ``famp = B1 * 10 * 80`` (``FlipAngle`` 80 in the famp sidecar) sampled from the
      analytic B1 field in world coordinates, noise outside the head. The fieldmap is
      paired to the QALAS run with ``IntendedFor`` (BIDS URIs ``bids::sub-01/...``; the
      validator accepts IntendedFor pointing to .bidsignore'd files, checked with
      bids-validator 2.x) plus equal ``ShimSetting`` and a close ``AcquisitionTime``.
      (``B0FieldIdentifier`` is not used: it is meant for B0 field maps.)
    * Seeds: the anatomy (smooth parameter variation, head position, B1 scale) depends on
      ``(seed, subject)``; the noise on ``(seed, subject, session, run)``.
"""
from __future__ import annotations

import datetime
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..utils.nifti_io import write_image
from ..qalas.errors import QalasInputError
from ..qalas.phantom.digital_brain import ALL_LABELS, DigitalBrain, make_digital_brain

LABEL_NAMES = {"CSF": "Cerebrospinal fluid", "GM": "Gray matter", "WM": "White matter",
               "Scalp": "Skin and muscle", "Fat": "Fat", "Vitreous": "Vitreous humour",
               "Bone": "Bone (no signal)", "Air": "Air in the sinuses (no signal)"}
from ..qalas.physics.timing import get_preset, vendor_key

#: Image scale: stored intensity = GAIN * QALAS magnitude (PD ground truth in these units).
GAIN = 10000.0
#: Inversion times written to the sidecars (s), one per contrast (HBCD Siemens values).
INVERSION_TIMES = (0.0, 0.1, 1.0, 1.9, 2.8)
#: Nominal flip angle of the TurboFLASH B1 map preparation (degrees).
B1_NOMINAL_FLIP_ANGLE = 80.0
QALAS_ECHO_TIME = 0.00232
BIDS_VERSION = "1.10.0"

_MANUFACTURER = {"siemens": ("Siemens", "Prisma_fit"), "ge": ("GE", "SIGNA_Premier"),
                 "philips": ("Philips", "Ingenia_Elition_X")}


def _json_dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype=np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.asarray(data)
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        arr = np.clip(np.rint(arr), info.min, info.max)
    img = nib.Nifti1Image(arr.astype(dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    write_image(img, path)


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def b1_grid(qalas_shape: Sequence[int], qalas_affine: np.ndarray, resolution: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Grid of the simulated TurboFLASH B1 map: coarser, rotated 6° about z, voxel order
    (-x, +z, +y) (coronal-like, left-to-right flipped), covering the QALAS field of view."""
    zooms = np.array([4.0, 4.0, 5.0]) if resolution >= 1.5 else np.array([3.5, 3.5, 4.0])
    directions = _rotation_z(6.0) @ np.array([[-1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])
    linear = directions * zooms  # columns scaled by voxel sizes
    corners = np.array([[i, j, k] for i in (0, qalas_shape[0] - 1) for j in (0, qalas_shape[1] - 1)
                        for k in (0, qalas_shape[2] - 1)], dtype=float)
    world = nib.affines.apply_affine(qalas_affine, corners)
    vox = world @ np.linalg.inv(linear).T
    lo = np.floor(vox.min(0)) - 1
    hi = np.ceil(vox.max(0)) + 1
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = linear @ lo + np.array([1.3, -0.7, 0.9])  # sub-voxel offset
    shape = tuple(int(n) for n in (hi - lo + 1))
    return shape, affine  # type: ignore[return-value]


def _voxel_world(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    return nib.affines.apply_affine(affine, ijk)


def _entities_prefix(sub: str, ses: str | None, run: int | None, acq: str | None = None) -> str:
    """BIDS entity prefix in the specification's order (sub, ses, acq, run)."""
    parts = [f"sub-{sub}"]
    if ses:
        parts.append(f"ses-{ses}")
    if acq:
        parts.append(f"acq-{acq}")
    if run is not None:
        parts.append(f"run-{run}")
    return "_".join(parts)


def _rel_dir(sub: str, ses: str | None, datatype: str) -> Path:
    return Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / datatype


def _clean_label(label: str, what: str) -> str:
    text = str(label)
    for prefix in ("sub-", "ses-"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if not text.isalnum():
        raise QalasInputError(f"{what} label {label!r} must be alphanumeric (e.g. 01)")
    return text


def _write_top_level(out: Path, subjects: Sequence[str], sessions: Sequence[str], vendor: str,
                     layout: str) -> None:
    _json_dump(out / "dataset_description.json", {
        "Name": "qalas-bids digital brain demo (synthetic 3D-QALAS)",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["qalas-bids developers"],
        "Acknowledgements": "Anatomy from the MNI ICBM152 2009a tissue templates shipped with nilearn.",
        "HowToAcknowledge": "Cite qalas-bids and SSL-QALAS (Jang et al.) if you use this dataset.",
        "GeneratedBy": [{"Name": "qalas-bids-demo-data", "Version": _version(),
                         "Description": "digital brain simulated with the QALAS Bloch signal model"}],
    })
    (out / "participants.tsv").write_text(
        "participant_id\tspecies\n" + "".join(f"sub-{s}\thomo sapiens\n" for s in subjects))
    _json_dump(out / "participants.json", {
        "participant_id": {"Description": "Unique participant identifier"},
        "species": {"Description": "Species of the (simulated) participant"},
    })
    (out / "README").write_text(
        "Synthetic 3D-QALAS demo dataset written by qalas-bids-demo-data.\n\n"
        "Each run has the five QALAS contrasts (inv-0..inv-4, HBCD naming; QALAS is not yet in\n"
        "the BIDS specification, so .bidsignore lists the *_QALAS files) and a Siemens\n"
        "TurboFLASH B1+ map (fmap/*_acq-anat_TB1TFL, *_acq-famp_TB1TFL; relative B1 =\n"
        "famp / (10 * FlipAngle)). Images are the magnitudes of the QALAS signal model of a\n"
        "digital brain (MNI152 tissue fractions, literature 3 T T1/T2/PD/IE) times 10000,\n"
        f"with Rician noise. QALAS layout: {layout}; vendor timing preset: {vendor}.\n\n"
        "The exact ground truth (T1map/T2map in seconds, PDmap in image units, IEmap, tissue\n"
        "segmentation and B1 in QALAS space) is in derivatives/groundtruth/.\n")
    today = datetime.date.today().isoformat()
    (out / "CHANGES").write_text(f"1.0.0 {today}\n  - Initial synthetic release.\n")
    (out / ".bidsignore").write_text("*_QALAS.nii.gz\n*_QALAS.json\n")


def _version() -> str:
    try:
        from qalas_bids import __version__
        return str(__version__)
    except Exception:  # pragma: no cover - package metadata missing
        return "unknown"


def _shim_setting(subject_index: int, session_index: int) -> list[int]:
    rng = np.random.default_rng([77, subject_index, session_index])
    return [int(v) for v in rng.integers(-3000, 3000, 8)]


def write_demo_dataset(
    out_dir: str | Path,
    *,
    subjects: Iterable[str] = ("01",),
    sessions: Iterable[str] | None = ("01",),
    runs: Iterable[int] | None = (1,),
    resolution: float = 2.0,
    snr: float = 30.0,
    seed: int = 0,
    qalas_layout: str = "3d",
    with_b1: bool = True,
    vendor: str = "siemens",
    anatomy: str = "brain",
    with_t1w: bool = False,
    with_smriprep: bool = False,
    b1_kind: str = "tfl",
    b1_pattern: str = "default",
    b1_motion: tuple[float, float] | np.ndarray | None = None,
) -> Path:
    """Write the demo BIDS dataset (see the module docstring) and return its root.

    ``anatomy``: ``"brain"`` (brain only, fast) or ``"head"`` (scalp, fat, skull, sinuses
    and eyes around it: :mod:`.head_anatomy`).
    ``with_t1w`` (opt-in) adds a rigidly moved MPRAGE-like T1w per session
    (:func:`qalas_bids.demo.anatomical.write_moved_t1w`) and its true motion;
    ``with_smriprep`` (implies ``with_t1w``) adds ``derivatives/smriprep`` with a known
    T1w -> MNI152NLin2009cAsym transform (:func:`~qalas_bids.demo.anatomical.write_smriprep_like`).
    ``b1_kind``: ``"tfl"`` (Siemens TurboFLASH, default), ``"afi"`` (``acq-tr1``/``acq-tr2``
    ``TB1AFI``, :data:`AFI_PROTOCOL`) or ``"dam"`` (``flip-1``/``flip-2`` ``TB1DAM``,
    :data:`DAM_PROTOCOL`). ``b1_pattern``: the B1 field (``"asymmetric"``: 0.7-1.3).
    ``b1_motion``: ``(rotation degrees, shift mm)`` of the head between QALAS and the B1
    map (:func:`motion_matrix`), or any 4x4 rigid RAS matrix (QALAS world -> B1 world);
    recorded only in the ground truth's simulation JSON.
    ``sessions``/``runs`` empty or ``None`` omit the ``ses``/``run`` entity. Existing files
    with the same names are overwritten; nothing else in ``out_dir`` is touched.
    """
    subjects = [_clean_label(s, "subject") for s in subjects]
    session_list: list[str | None] = [_clean_label(s, "session") for s in (sessions or [])] or [None]
    run_list: list[int | None] = [int(r) for r in (runs or [])] or [None]
    if not subjects:
        raise QalasInputError("at least one subject label is needed (e.g. subjects=('01',))")
    if len(set(subjects)) != len(subjects) or len(set(session_list)) != len(session_list) \
            or len(set(run_list)) != len(run_list):
        raise QalasInputError("subject, session and run labels must be unique")
    if any(r is not None and r < 1 for r in run_list):
        raise QalasInputError("run indices must be positive integers (e.g. 1)")
    if qalas_layout not in ("3d", "4d"):
        raise QalasInputError(f"qalas_layout must be '3d' or '4d', got {qalas_layout!r}")
    key = vendor_key(vendor)
    if key is None:
        raise QalasInputError(f"unknown vendor {vendor!r}: choose siemens, ge or philips")
    timing = get_preset(key)
    if b1_kind not in ("tfl", "afi", "dam"):
        raise QalasInputError(f"b1_kind must be tfl, afi or dam, got {b1_kind!r}")
    if b1_motion is None:
        motion = None
    elif np.shape(b1_motion) == (4, 4):
        motion = np.asarray(b1_motion, dtype=float)
    else:
        motion = motion_matrix(*b1_motion)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_top_level(out, subjects, [s for s in session_list if s], key, qalas_layout)
    gt_root = out / "derivatives" / "groundtruth"
    _json_dump(gt_root / "dataset_description.json", {
        "Name": "Ground truth of the qalas-bids digital brain demo",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qalas-bids-demo-data", "Version": _version()}],
        "SourceDatasets": [{"URL": "../../"}],
        "License": "CC0",
    })
    (gt_root / ".bidsignore").write_text("*_IEmap.*\n*_simulation.json\n")

    for si, sub in enumerate(subjects):
        subject_rng = np.random.default_rng([seed, si, 1])
        b1_scale = float(subject_rng.uniform(0.94, 1.06)) if si else 1.0
        shift = subject_rng.uniform(-4.0, 4.0, 3) if si else np.zeros(3)
        anatomy_seed = int(np.random.SeedSequence([seed, si]).generate_state(1)[0])
        session_rows = []
        for ei, ses in enumerate(session_list):
            shim = _shim_setting(si, ei)
            series = 1
            for ri, run in enumerate(run_list):
                noise_seed = int(np.random.SeedSequence([seed, si, ei, ri]).generate_state(1)[0])
                brain = make_digital_brain(resolution=resolution, snr=snr, seed=noise_seed,
                                           timing=timing, b1_scale=b1_scale,
                                           anatomy_seed=anatomy_seed, anatomy=anatomy,
                                           b1_pattern=b1_pattern)
                affine = brain.affine.copy()
                affine[:3, 3] += shift
                prefix = _entities_prefix(sub, ses, run)
                hour = 9 + ei
                acq_time = f"{hour:02d}:{10 + 12 * ri:02d}:00.000000"
                b1_time = f"{hour:02d}:{8 + 12 * ri:02d}:30.000000"
                anat_dir = out / _rel_dir(sub, ses, "anat")
                qalas_rel = _write_qalas(anat_dir, prefix, brain, affine, qalas_layout, key, timing,
                                         shim, acq_time, series, resolution, out)
                if with_b1:
                    fmap_dir = out / _rel_dir(sub, ses, "fmap")
                    _write_b1(fmap_dir, (sub, ses, run), brain, affine, shift, resolution, key, shim,
                              b1_time, series + 5, qalas_rel, noise_seed, kind=b1_kind, motion=motion)
                series += 10
                _write_ground_truth(gt_root, sub, ses, prefix, brain, affine, with_b1,
                                    noise_seed, anatomy_seed, b1_scale, shift, qalas_layout,
                                    b1_kind=b1_kind, b1_pattern=b1_pattern, motion=motion)
                if (with_t1w or with_smriprep) and ri == 0:
                    from .anatomical import write_moved_t1w, write_smriprep_like

                    truth_dir = gt_root / _rel_dir(sub, ses, "anat")
                    t1w_path = write_moved_t1w(anat_dir, _entities_prefix(sub, ses, None), brain, affine,
                                               truth_dir, noise_seed)
                    if with_smriprep:
                        write_smriprep_like(out / "derivatives" / "smriprep", sub, ses, t1w_path, brain,
                                            affine, truth_dir)
            if ses:
                session_rows.append(f"ses-{ses}\t2024-01-{ei + 1:02d}T{9 + ei:02d}:00:00\n")
        if session_rows:
            (out / f"sub-{sub}" / f"sub-{sub}_sessions.tsv").write_text(
                "session_id\tacq_time\n" + "".join(session_rows))
    return out


def _common_sidecar(vendor: str, shim: list[int], acq_time: str, series: int) -> dict[str, Any]:
    manufacturer, model = _MANUFACTURER[vendor]
    return {
        "Manufacturer": manufacturer,
        "ManufacturersModelName": model,
        "MagneticFieldStrength": 3,
        "ShimSetting": shim,
        "AcquisitionTime": acq_time,
        "SeriesNumber": series,
        "SoftwareVersions": "simulated (qalas-bids-demo-data)",
        "InstitutionName": "qalas-bids digital brain",
        "ReceiveCoilName": "simulated",
        "ScanningSequence": "GR",
        "SequenceVariant": "SP",
    }


def _write_qalas(anat_dir: Path, prefix: str, brain: DigitalBrain, affine: np.ndarray, layout: str,
                 vendor: str, timing, shim: list[int], acq_time: str, series: int,
                 resolution: float, root: Path) -> list[str]:
    base = _common_sidecar(vendor, shim, acq_time, series)
    base.update({
        "SeriesDescription": "QALAS", "ProtocolName": "QALAS", "PulseSequenceDetails": "3D-QALAS",
        "PulseSequenceType": "3D-QALAS", "SequenceName": "*tfl3d1_16",
        "MRAcquisitionType": "3D", "EchoTime": QALAS_ECHO_TIME,
        "RepetitionTime": timing.esp, "FlipAngle": timing.flip_angle,
        "EchoTrainLength": int(timing.tf), "T2PrepDuration": timing.t2p,
        "SliceThickness": float(resolution), "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
        "Simulated": True,
    })
    images = brain.signals * GAIN
    written = []
    if layout == "4d":
        name = f"{prefix}_QALAS"
        _save_nifti(anat_dir / f"{name}.nii.gz", images, affine, np.int16)
        _json_dump(anat_dir / f"{name}.json", {**base, "InversionTime": list(INVERSION_TIMES)})
        written.append(anat_dir / f"{name}.nii.gz")
    else:
        for k, ti in enumerate(INVERSION_TIMES):
            name = f"{prefix}_inv-{k}_QALAS"
            _save_nifti(anat_dir / f"{name}.nii.gz", images[..., k], affine, np.int16)
            _json_dump(anat_dir / f"{name}.json", {**base, "InversionTime": ti})
            written.append(anat_dir / f"{name}.nii.gz")
    return [p.relative_to(root).as_posix() for p in written]


def motion_matrix(rotation_deg: float, shift_mm: float) -> np.ndarray:
    """4x4 RAS rigid motion of the head between QALAS and the B1 map (QALAS world -> B1
    world): a rotation of ``rotation_deg`` about the axis (1, 2, 2)/3 through the origin and
    a shift of ``shift_mm`` along (2, -2, 1)/3."""
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    matrix = np.eye(4)
    matrix[:3, :3] = Rotation.from_rotvec(math.radians(rotation_deg) * axis).as_matrix()
    matrix[:3, 3] = shift_mm * np.array([2.0, -2.0, 1.0]) / 3.0
    return matrix


#: AFI protocol of the demo (GE/Philips-like): nominal angle (deg), TR1, TR2 (s).
AFI_PROTOCOL = (60.0, 0.020, 0.100)
#: Double-angle protocol of the demo: angle a (deg; the second image uses 2a) and TR (s).
DAM_PROTOCOL = (60.0, 8.0)


def _afi_signals(pd: np.ndarray, t1: np.ndarray, b1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Steady-state AFI magnitudes (Yarnykh 2007, Eq. 2) of the two interleaved TRs."""
    angle, tr1, tr2 = AFI_PROTOCOL
    alpha = np.radians(angle) * b1
    e1, e2 = np.exp(-tr1 / t1), np.exp(-tr2 / t1)
    c = np.cos(alpha)
    den = 1.0 - e1 * e2 * c * c
    s1 = pd * np.sin(alpha) * (1.0 - e2 + (1.0 - e1) * e2 * c) / den
    s2 = pd * np.sin(alpha) * (1.0 - e1 + (1.0 - e2) * e1 * c) / den
    return s1, s2


def _dam_signals(pd: np.ndarray, t1: np.ndarray, b1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Spoiled gradient-echo magnitudes at angles a and 2a (steady state, TR of DAM_PROTOCOL)."""
    angle, tr = DAM_PROTOCOL
    e1 = np.exp(-tr / t1)
    out = []
    for factor in (1.0, 2.0):
        alpha = np.radians(angle * factor) * b1
        out.append(pd * np.abs(np.sin(alpha)) * (1.0 - e1) / (1.0 - e1 * np.cos(alpha)))
    return out[0], out[1]


def _write_b1(fmap_dir: Path, entities: tuple, brain: DigitalBrain, affine: np.ndarray,
              shift: np.ndarray, resolution: float, vendor: str, shim: list[int],
              acq_time: str, series: int, qalas_rel: list[str], noise_seed: int,
              kind: str = "tfl", motion: np.ndarray | None = None) -> None:
    """Write the B1 map of one run (``kind`` tfl, afi or dam). ``motion`` (4x4, QALAS world ->
    B1 world) moves the head - magnitude and field together - before the B1 acquisition."""
    shape, b1_affine = b1_grid(brain.shape, affine, resolution)
    rng = np.random.default_rng([noise_seed, 2])
    # Where the B1 map's voxels see the head: the B1 grid placed back in QALAS world.
    sample_affine = b1_affine if motion is None else np.linalg.inv(motion) @ b1_affine

    def on_b1_grid(volume: np.ndarray) -> np.ndarray:
        img = resample_from_to(nib.Nifti1Image(volume.astype(np.float32), affine), (shape, sample_affine), order=1)
        return np.asarray(img.dataobj)

    # Head support on the B1 grid (world-consistent resampling of the tissue fraction).
    total = sum(brain.tissue_fractions.values())
    support = ndimage.binary_dilation(on_b1_grid(total) > 0.05, iterations=2)
    world = _voxel_world(shape, sample_affine)
    b1 = brain.b1_at(world - shift)
    intended = [f"bids::{p}" for p in qalas_rel]
    common = _common_sidecar(vendor, shim, acq_time, series)
    if kind == "tfl":
        famp = np.where(support, b1 * 10.0 * B1_NOMINAL_FLIP_ANGLE,
                        np.abs(rng.normal(0, 150.0, shape)))
        magnitude = np.hypot(on_b1_grid(brain.pd * 1000) + rng.normal(0, 10, shape),
                             rng.normal(0, 10, shape))
        common.update({"SeriesDescription": "B1map", "ProtocolName": "tfl_b1map",
                       "PulseSequenceDetails": "tfl_b1map", "MRAcquisitionType": "2D",
                       "PulseSequenceType": "TurboFLASH B1 map", "SequenceName": "*tfl2d1",
                       "EchoTime": 0.00182, "RepetitionTime": 5.0, "IntendedFor": intended})
        anat_prefix = _entities_prefix(*entities, acq="anat")
        famp_prefix = _entities_prefix(*entities, acq="famp")
        _save_nifti(fmap_dir / f"{anat_prefix}_TB1TFL.nii.gz", magnitude, b1_affine, np.int16)
        _json_dump(fmap_dir / f"{anat_prefix}_TB1TFL.json",
                   {**common, "FlipAngle": 8, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"]})
        _save_nifti(fmap_dir / f"{famp_prefix}_TB1TFL.nii.gz", famp, b1_affine, np.int16)
        _json_dump(fmap_dir / f"{famp_prefix}_TB1TFL.json",
                   {**common, "SeriesNumber": series + 1, "FlipAngle": B1_NOMINAL_FLIP_ANGLE,
                    "ImageType": ["ORIGINAL", "PRIMARY", "FLIP ANGLE MAP", "ND"]})
        return
    pd = on_b1_grid(brain.pd)
    t1 = np.maximum(on_b1_grid(np.where(brain.pd > 0, brain.t1, 1.0)), 0.05)
    signals = _afi_signals(pd, t1, b1) if kind == "afi" else _dam_signals(pd, t1, b1)
    brain_signal = signals[0][pd > 0.5 * pd.max()]
    sigma = 0.01 * float(np.median(brain_signal))  # SNR 100 in the first image's brain
    gain = 8000.0 / float(max(np.max(signals[0]), np.max(signals[1])))  # int16 with room
    images = [gain * np.hypot(s + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape)) for s in signals]
    common.update({"MRAcquisitionType": "3D", "ScanningSequence": "GR", "SequenceVariant": "SP",
                   "EchoTime": 0.0022, "ImageType": ["ORIGINAL", "PRIMARY", "M", "ND"],
                   "IntendedFor": intended})
    if kind == "afi":
        angle, tr1, tr2 = AFI_PROTOCOL
        common.update({"SeriesDescription": "B1map AFI", "ProtocolName": "B1map_AFI",
                       "PulseSequenceType": "Actual Flip Angle Imaging", "FlipAngle": angle,
                       "RepetitionTime": tr1 + tr2})
        for i, (tr, image) in enumerate(zip((tr1, tr2), images), start=1):
            prefix = _entities_prefix(*entities, acq=f"tr{i}")
            _save_nifti(fmap_dir / f"{prefix}_TB1AFI.nii.gz", image, b1_affine, np.int16)
            _json_dump(fmap_dir / f"{prefix}_TB1AFI.json", {**common, "RepetitionTimeExcitation": tr})
        return
    angle, tr = DAM_PROTOCOL
    common.update({"SeriesDescription": "B1map DAM", "ProtocolName": "B1map_double_angle",
                   "PulseSequenceType": "Double angle B1 map", "RepetitionTime": tr})
    for i, image in enumerate(images, start=1):
        prefix = _entities_prefix(*entities)
        _save_nifti(fmap_dir / f"{prefix}_flip-{i}_TB1DAM.nii.gz", image, b1_affine, np.int16)
        _json_dump(fmap_dir / f"{prefix}_flip-{i}_TB1DAM.json",
                   {**common, "SeriesNumber": series + i - 1, "FlipAngle": angle * i})


def _write_ground_truth(gt_root: Path, sub: str, ses: str | None, prefix: str, brain: DigitalBrain,
                        affine: np.ndarray, with_b1: bool, noise_seed: int, anatomy_seed: int,
                        b1_scale: float, shift: np.ndarray, layout: str, *, b1_kind: str = "tfl",
                        b1_pattern: str = "default", motion: np.ndarray | None = None) -> None:
    anat = gt_root / _rel_dir(sub, ses, "anat")
    maps = {"T1map": (brain.t1, "s"), "T2map": (brain.t2, "s"),
            "PDmap": (brain.pd * GAIN, "arbitrary"), "IEmap": (brain.ie, "arbitrary")}
    for suffix, (data, units) in maps.items():
        _save_nifti(anat / f"{prefix}_{suffix}.nii.gz", data, affine)
        _json_dump(anat / f"{prefix}_{suffix}.json", {"Units": units, "Description": "ground truth"})
    _save_nifti(anat / f"{prefix}_desc-tissue_dseg.nii.gz", brain.labels, affine, np.int16)
    present = set(np.unique(brain.labels).tolist())
    (anat / f"{prefix}_desc-tissue_dseg.tsv").write_text(
        "index\tname\tabbreviation\n" + "".join(
            f"{v}\t{LABEL_NAMES[k]}\t{k}\n" for k, v in ALL_LABELS.items() if v in present))
    for name in ("CSF", "GM", "WM"):
        _save_nifti(anat / f"{prefix}_label-{name}_probseg.nii.gz", brain.tissue_fractions[name], affine)
    b1_rel = None
    if with_b1:
        b1_path = gt_root / _rel_dir(sub, ses, "fmap") / f"{prefix}_space-QALAS_TB1map.nii.gz"
        _save_nifti(b1_path, brain.b1, affine)
        _json_dump(b1_path.with_name(b1_path.name.replace(".nii.gz", ".json")),
                   {"Units": "arbitrary", "Description": "true relative B1+ on the QALAS grid"})
        b1_rel = b1_path.relative_to(gt_root).as_posix()
    _json_dump(anat / f"{prefix}_simulation.json", {
        "SNR": brain.snr,
        "SNRDefinition": "mean noiseless magnitude of contrast 5 in WM (fraction > 0.8) / sigma",
        "NoiseSigma": brain.sigma * GAIN,
        "NoiseSigmaUnitMagnitude": brain.sigma,
        "Gain": GAIN,
        "ImageDataType": "int16 (round(Gain * magnitude))",
        "NoiseSeed": noise_seed,
        "AnatomySeed": anatomy_seed,
        "B1Scale": b1_scale,
        "HeadShiftMM": [float(v) for v in shift],
        "QalasLayout": layout,
        "InversionTimes": list(INVERSION_TIMES),
        "SequenceTiming": brain.timing.as_dict(),
        "TissueParameters": "see qalas_bids.qalas.phantom.digital_brain.TISSUE_PARAMETERS",
        "TrueB1": b1_rel,
        "Anatomy": brain.anatomy,
        "Labels": {str(v): k for k, v in ALL_LABELS.items()},
        **({} if b1_kind == "tfl" else {"B1Kind": b1_kind}),
        **({} if b1_pattern == "default" else {"B1Pattern": b1_pattern}),
        **({} if motion is None else {"B1HeadMotionQALASToB1RAS": np.round(motion, 6).tolist()}),
    })
