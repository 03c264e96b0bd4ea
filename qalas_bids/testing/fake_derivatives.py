"""A small qalas-bids derivatives folder built from the digital brain (tests, docs screenshot).

Maps are the digital brain's ground truth plus mild noise (as a fit would give), written
under the conventional names with sidecars holding the keys the reports read.
"""
from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import __version__
from ..bids.derivatives import derivative_path, write_dataset_description, write_json


def write_derivative(out_dir: Path, rel_path: str, data: np.ndarray, ref: nib.Nifti1Image,
                     metadata: dict[str, Any], dtype=np.float32) -> Path:
    """Plain nibabel + JSON writer (keeps these fixtures independent of the app's writer)."""
    path = out_dir / rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.Nifti1Image(np.asarray(data).astype(dtype), ref.affine).to_filename(path)
    write_json(str(path).replace(".nii.gz", ".json"), metadata)
    return path


@functools.lru_cache(maxsize=2)
def _brain(resolution: float):
    from ..qalas.phantom.digital_brain import make_digital_brain

    return make_digital_brain(resolution=resolution, snr=math.inf)


def write_fake_derivatives(
    out_dir: str | Path,
    subject: str = "01",
    session: str | None = None,
    *,
    resolution: float = 2.0,
    with_b1: bool = True,
    with_synthetic: bool = True,
    t1_scale: float = 1.0,
    seed: int = 0,
    warnings: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write one run of fake derivatives; returns ``{"entities", "brain", "paths"}``."""
    from ..qalas.tissue.synthetic import synthesize_all
    from ..qalas.physics.timing import SequenceTiming

    out_dir = Path(out_dir)
    if not (out_dir / "dataset_description.json").exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        write_dataset_description(out_dir, out_dir.parent / "raw")
    brain = _brain(resolution)
    rng = np.random.default_rng(seed)
    mask = brain.brain_mask
    ref = nib.Nifti1Image(np.zeros(brain.t1.shape, np.float32), brain.affine)
    ents = {"subject": subject, **({"session": session} if session else {})}

    def noisy(a, rel):
        return np.where(mask, a * (1 + rel * rng.standard_normal(a.shape)), 0.0)

    maps = {"T1map": noisy(brain.t1 * t1_scale, 0.02), "T2map": noisy(brain.t2, 0.03),
            "PDmap": noisy(brain.pd, 0.02), "IEmap": np.clip(noisy(brain.ie, 0.01), 0, 1)}
    timing = SequenceTiming()
    loss = list(np.geomspace(1.0, 0.02, 30) * (1 + 0.05 * rng.random(30)))
    common = {"Sources": [f"bids:raw:sub-{subject}/anat/sub-{subject}_inv-{i}_QALAS.nii.gz" for i in range(5)],
              "SkullStripped": False, "SoftwareVersion": __version__, "FitMode": "scan-specific"}
    t1_meta = {
        **common, "Units": "s", "EstimationAlgorithm": "SSL-QALAS", "EstimationReference": "Jun et al. 2023",
        "SequenceTiming": timing.as_dict(), "TimingSources": {"esp": "preset", "tf": "sidecar EchoTrainLength"},
        "FitInfo": {"Device": "cpu", "WallTimeSeconds": 12.5, "Epochs": 30, "LossHistory": loss,
                    "NoiseSigma": 0.001, "NoiseSigmaMethod": "background Rayleigh"},
        "Warnings": list(warnings) + ([] if with_b1 else ["No B1 map: B1 = 1 assumed"]),
        "B1Source": f"sub-{subject}_acq-famp_TB1TFL.nii.gz" if with_b1 else None,
    }
    paths = {}
    units = {"T1map": "s", "T2map": "s", "PDmap": "arbitrary", "IEmap": "1"}
    for suffix, data in maps.items():
        meta = t1_meta if suffix == "T1map" else {**common, "Units": units[suffix]}
        paths[suffix] = write_derivative(out_dir, derivative_path(ents, suffix), data, ref, meta)
        crlb = np.where(mask, np.abs(data) * 0.05 * (1 + rng.random(data.shape)), 0.0)
        paths[f"crlb_{suffix}"] = write_derivative(out_dir, derivative_path(ents, suffix, desc="crlb"), crlb, ref,
                                                   {**common, "Units": units[suffix]})
    residual = np.where(mask, 0.01 + 0.01 * rng.random(mask.shape), 0.0)
    paths["residual"] = write_derivative(out_dir, derivative_path(ents, "QALAS", desc="residual"), residual, ref,
                                         {**common, "Units": "1"})
    paths["mask"] = write_derivative(out_dir, derivative_path(ents, "mask", desc="brain"), mask.astype(np.uint8),
                                     ref, {**common, "Type": "Brain"}, dtype=np.uint8)
    if with_b1:
        paths["b1"] = write_derivative(out_dir, derivative_path(ents, "TB1map", space="QALAS", datatype="fmap"),
                                       np.where(mask, brain.b1, 0.0), ref, {**common, "Units": "1"})
    if with_synthetic:
        for name, (image, meta) in synthesize_all(maps["T1map"], maps["T2map"], maps["PDmap"], maps["IEmap"],
                                                  mask, contrasts=["T1w", "T2w", "FLAIR", "PSIR"]).items():
            paths[name] = write_derivative(out_dir, derivative_path(ents, name, desc="synthetic"), image, ref,
                                           {**common, **meta})
    return {"entities": ents, "brain": brain, "paths": paths}
