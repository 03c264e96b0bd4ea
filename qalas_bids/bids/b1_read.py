"""Read a paired B1+ map of any kind as relative B1 on its own grid, with its magnitude.

:func:`b1_parameters` takes what the conversion needs from the sidecars (or from the
options ``--b1-flip-angle`` and ``--afi-tr-ratio``) and names the missing key and file
otherwise (exit 2) - no protocol value is assumed. :func:`relative_b1_native` reads the
images and converts them with :mod:`qalas_bids.qalas.b1.kinds`; voxels where the formula
has no solution are filled from their nearest valid neighbour and counted.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..qalas.b1 import kinds
from ..qalas.errors import QalasInputError
from ..utils.nifti_io import read_image
from .b1_pairing import KINDS

#: Largest difference (degrees) between the second DAM angle and twice the first.
DAM_ANGLE_TOLERANCE = 1.0


def _sidecar_name(path: str) -> str:
    return Path(path).name.replace(".nii.gz", ".json").replace(".nii", ".json")


def _meta(b1_source: Any, role: str) -> dict:
    by_role = getattr(b1_source, "role_metadata", None) or {}
    return dict(by_role.get(role) or (b1_source.metadata if role == _main_role(b1_source) else {}) or {})


def _main_role(b1_source: Any) -> str:
    return KINDS[b1_source.kind]["required"][0]


def _missing(key: str, b1_source: Any, role: str, option: str) -> QalasInputError:
    return QalasInputError(
        f"the {KINDS[b1_source.kind]['suffix']} sidecar {_sidecar_name(b1_source.files[role])} has no {key}, "
        f"which the {b1_source.kind.upper()} B1 conversion needs: add it to the sidecar or pass {option}")


def _number(meta: dict, key: str) -> float | None:
    value = meta.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def b1_parameters(b1_source: Any, flip_angle_override: float | None = None,
                  afi_tr_ratio: float | None = None) -> dict[str, Any]:
    """Conversion parameters of a :class:`~qalas_bids.bids.B1Source` and where each came from.

    Returns a JSON-friendly dict (``Kind``, ``NominalFlipAngle`` degrees, ``TRRatio`` for AFI,
    ``...From``: ``"sidecar <file>"`` or ``"--option"``). Missing sidecar keys without the
    option, or inconsistent DAM angles, raise :class:`QalasInputError` naming key and file.
    """
    kind = b1_source.kind
    out: dict[str, Any] = {"Kind": kind, "Suffix": KINDS[kind]["suffix"]}
    if kind == "tb1map":
        return out
    main = _main_role(b1_source)
    if flip_angle_override is not None:
        out["NominalFlipAngle"], out["NominalFlipAngleFrom"] = float(flip_angle_override), "--b1-flip-angle"
    else:
        angle = _number(_meta(b1_source, main), "FlipAngle")
        if angle is None:
            raise _missing("FlipAngle", b1_source, main, "the B1 map's nominal flip angle with --b1-flip-angle")
        out["NominalFlipAngle"] = angle
        out["NominalFlipAngleFrom"] = f"sidecar {_sidecar_name(b1_source.files[main])}"
    kinds.check_flip_angle(out["NominalFlipAngle"], f"{KINDS[kind]['suffix']} map")
    if kind == "afi":
        if afi_tr_ratio is not None:
            out["TRRatio"], out["TRRatioFrom"] = float(afi_tr_ratio), "--afi-tr-ratio"
        else:
            trs = {}
            for role in ("tr1", "tr2"):
                trs[role] = _number(_meta(b1_source, role), "RepetitionTimeExcitation")
                if trs[role] is None:
                    raise _missing("RepetitionTimeExcitation", b1_source, role,
                                   "the ratio TR2/TR1 with --afi-tr-ratio")
            out["TRRatio"] = trs["tr2"] / trs["tr1"]
            out["RepetitionTimeExcitation"] = [trs["tr1"], trs["tr2"]]
            out["TRRatioFrom"] = "sidecars' RepetitionTimeExcitation"
        if not out["TRRatio"] > 1.0:
            raise QalasInputError(
                f"the AFI TR ratio TR2/TR1 is {out['TRRatio']:.3g}, not > 1: acq-tr1 must be the short-TR "
                f"image ({Path(b1_source.files['tr1']).name}); check the names, the sidecars' "
                "RepetitionTimeExcitation or --afi-tr-ratio")
    if kind == "dam" and flip_angle_override is None:
        second = _number(_meta(b1_source, "flip2"), "FlipAngle")
        if second is None:
            raise _missing("FlipAngle", b1_source, "flip2", "the first angle with --b1-flip-angle")
        if abs(second - 2.0 * out["NominalFlipAngle"]) > DAM_ANGLE_TOLERANCE:
            raise QalasInputError(
                f"double-angle B1 map: the flip-2 image has FlipAngle {second:g} deg, not twice the flip-1 "
                f"angle ({out['NominalFlipAngle']:g} deg); the double-angle method needs angles a and 2a "
                f"({Path(b1_source.files['flip1']).name}, {Path(b1_source.files['flip2']).name})")
    return out


def read_b1_array(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3D B1 image as float64 and its affine; damaged files and NaN/Inf voxels raise
    :class:`QalasInputError` naming the file."""
    path = Path(path)
    try:
        image = read_image(path)
        data = np.asanyarray(image.dataobj, dtype=np.float64)
    except Exception as exc:  # truncated gzip, wrong vox_offset, ...
        raise QalasInputError(f"the B1 map {path.name} could not be read ({type(exc).__name__}: {exc}); "
                              "the file is damaged or incomplete - re-copy or re-convert it, or fit "
                              "without it (--no-b1)") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise QalasInputError(f"the B1 map {path.name} contains {bad} NaN/Inf voxel(s): re-convert it, "
                              "or fit without it (--no-b1)")
    return data, image.affine


def relative_b1_native(b1_source: Any, params: dict[str, Any]) -> dict[str, Any]:
    """Relative B1 of ``b1_source`` on its own grid.

    Returns ``{"b1": image (float32, NaN filled), "invalid": image (1 where the formula
    had no solution although the magnitude had signal), "magnitude": image or None,
    "scale": TB1map scale text or None}``; the images are :class:`nibabel.Nifti1Image`.
    AFI/DAM voxels below :func:`~qalas_bids.qalas.b1.kinds.signal_threshold` of the first
    image are filled from the nearest voxel with signal.
    """
    kind, files = b1_source.kind, b1_source.files
    scale, low_signal = None, None
    if kind in ("tfl", "rfm"):
        famp, affine = read_b1_array(files["famp"])
        convert = kinds.relative_b1_from_famp if kind == "tfl" else kinds.relative_b1_from_rfm
        rel = convert(famp, params["NominalFlipAngle"])
    elif kind == "afi":
        (s1, affine), (s2, affine2) = read_b1_array(files["tr1"]), read_b1_array(files["tr2"])
        _same_grid(s1, affine, s2, affine2, files["tr1"], files["tr2"])
        threshold = kinds.signal_threshold(s1)
        low_signal = s1 <= threshold
        rel = kinds.relative_b1_from_afi(s1, s2, params["TRRatio"], params["NominalFlipAngle"], threshold)
    elif kind == "dam":
        (s1, affine), (s2, affine2) = read_b1_array(files["flip1"]), read_b1_array(files["flip2"])
        _same_grid(s1, affine, s2, affine2, files["flip1"], files["flip2"])
        threshold = kinds.signal_threshold(s1)
        low_signal = s1 <= threshold
        rel = kinds.relative_b1_from_dam(s1, s2, params["NominalFlipAngle"], threshold)
    else:
        values, affine = read_b1_array(files["map"])
        rel, scale = kinds.relative_b1_from_map(values, _meta(b1_source, "map").get("Units"))
    filled, invalid = kinds.fill_invalid(rel)
    if low_signal is not None:  # background and partial volume: filled, but not a hole
        invalid = invalid & ~low_signal
    magnitude_role = KINDS[kind]["magnitude"]
    magnitude = None
    if magnitude_role and magnitude_role in files:
        data, mag_affine = read_b1_array(files[magnitude_role])
        magnitude = nib.Nifti1Image(data.astype(np.float32), mag_affine)
    return {"b1": nib.Nifti1Image(filled, affine), "invalid": nib.Nifti1Image(invalid.astype(np.float32), affine),
            "magnitude": magnitude, "scale": scale}


def _same_grid(a: np.ndarray, affine_a: np.ndarray, b: np.ndarray, affine_b: np.ndarray,
               file_a: str, file_b: str) -> None:
    if a.shape != b.shape or not np.allclose(affine_a, affine_b, atol=1e-3):
        raise QalasInputError(f"the two images of the B1 map are on different grids ({Path(file_a).name} "
                              f"{a.shape}, {Path(file_b).name} {b.shape}): they must come from one "
                              "acquisition - re-convert them")
