"""JSON sidecar metadata of the derivatives (plain dicts; keys listed in api-contracts.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from .. import __version__
from ..qalas.b1.no_b1 import no_b1_bias_text

SSL_REFERENCE = (
    "Jun Y, Cho J, Wang X, et al. SSL-QALAS: Self-Supervised Learning for rapid multiparameter "
    "estimation in quantitative MRI using 3D-QALAS. Magn Reson Med. 2023;90(5):2019-2032. "
    "doi:10.1002/mrm.29786"
)
QALAS_REFERENCE = (
    "Kvernby S, Warntjes MJB, Haraldsson H, et al. Simultaneous three-dimensional myocardial T1 "
    "and T2 mapping in one breath hold with 3D-QALAS. J Cardiovasc Magn Reson. 2014;16:102. "
    "doi:10.1186/s12968-014-0102-0"
)
ALGORITHMS = {
    "scan-specific": "SSL-QALAS, scan-specific: per-voxel network trained self-supervised on this "
                     "scan through the QALAS Bloch signal model",
    "pretrained": "SSL-QALAS, pretrained network applied to this scan",
    "fine-tune": "SSL-QALAS, pretrained network fine-tuned self-supervised on this scan",
    "dictionary": "Dictionary matching of the QALAS Bloch signal model (B1 known per voxel)",
}

#: How the network of each SSL fit mode relates to the maps (FitInfo.Model.Role).
MODEL_ROLES = {
    "scan-specific": "trained from scratch on this scan (kept only with --save-model: see SavedModel)",
    "pretrained": "weights applied as loaded, no training on this scan",
    "fine-tune": "weights loaded as the starting point, then trained on this scan",
}

#: (suffix, desc, Units, description) of the fitted maps, in FitQalas.MAP_KEYS order.
MAP_OUTPUTS = (
    ("T1map", None, "s", "longitudinal relaxation time T1"),
    ("T2map", None, "s", "transverse relaxation time T2"),
    ("PDmap", None, "arbitrary", "proton density (M0, scanner units)"),
    ("IEmap", None, "1", "inversion efficiency of the adiabatic inversion pulse (0.5-1)"),
    ("T1map", "crlb", "s", "Cramer-Rao lower bound standard deviation of T1"),
    ("T2map", "crlb", "s", "Cramer-Rao lower bound standard deviation of T2"),
    ("PDmap", "crlb", "arbitrary", "Cramer-Rao lower bound standard deviation of PD"),
    ("IEmap", "crlb", "1", "Cramer-Rao lower bound standard deviation of IE"),
    ("QALAS", "residual", "1", "relative RMS residual of the fit (goodness of fit)"),
)


def raw_sources(files: Iterable[str | Path], bids_dir: str | Path) -> list[str]:
    """BIDS URIs (``bids:raw:sub-01/anat/...``) of raw input files."""
    from .derivatives import bids_uri

    return [bids_uri(f, bids_dir) for f in files]


def map_metadata(fit_mode: str, sources: list[str], b1_source: dict | None) -> list[dict[str, Any]]:
    """Static sidecars of the fitted maps (one per :data:`MAP_OUTPUTS` entry)."""
    reference = SSL_REFERENCE if fit_mode != "dictionary" else QALAS_REFERENCE
    out = []
    for suffix, desc, units, description in MAP_OUTPUTS:
        out.append({
            "Description": description,
            "Units": units,
            "Sources": list(sources),
            "SkullStripped": False,
            "EstimationAlgorithm": ALGORITHMS[fit_mode],
            "EstimationReference": reference,
            "FitMode": fit_mode,
            "SoftwareVersion": __version__,
            "B1Source": b1_source or f"none (--no-b1): {no_b1_bias_text()}",
        })
    return out


def fit_sidecar_metadata(info: dict[str, Any], timing_sources: dict[str, str] | None = None,
                         timing_warnings: list[str] | None = None,
                         b1_info: dict[str, Any] | None = None,
                         extra_warnings: list[str] | None = None) -> dict[str, Any]:
    """Dynamic sidecar keys from ``VolumeFit.info`` (SequenceTiming, FitInfo, Warnings...)."""
    fit_info = {
        "Device": info.get("device"),
        "WallTimeSeconds": info.get("wall_time_s"),
        "StageTimesSeconds": info.get("stage_times_s", {}),
        "Epochs": info.get("epochs"),
        "LossHistory": info.get("loss_history", []),
        "NoiseSigma": info.get("noise_sigma"),
        "NoiseSigmaMethod": info.get("noise_sigma_method"),
        "NumberOfVoxels": info.get("n_voxels"),
        "NoiseFloorCorrection": info.get("noise_floor_correction"),
    }
    if info.get("model_path") or info.get("model"):
        model = info.get("model") or {}
        fit_info["Model"] = {"Path": model.get("path", info.get("model_path")),
                             "SHA256": model.get("sha256", info.get("model_sha256"))}
    method = info.get("method")
    if method in MODEL_ROLES:
        fit_info.setdefault("Model", {"Path": None, "SHA256": None})
        fit_info["Model"]["Role"] = MODEL_ROLES[method]
        fit_info["Model"]["Forced"] = bool(info.get("force_model", False))
    saved = info.get("saved_model")
    if isinstance(saved, dict):
        fit_info["SavedModel"] = {"Path": saved.get("path"), "SHA256": saved.get("sha256")}
    meta = {
        "SequenceTiming": info.get("timing", {}),
        "TimingSources": dict(timing_sources or {}),
        "FitInfo": fit_info,
        "Warnings": list(timing_warnings or []) + list(extra_warnings or []) + list(info.get("warnings", []))
                    + list((b1_info or {}).get("Warnings", [])),
    }
    if b1_info:
        meta["B1Summary"] = b1_info
    return meta
