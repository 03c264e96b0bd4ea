"""Write BIDS derivatives: names from entities, atomic float32 NIfTI + JSON sidecars.

Names are built by pybids' :func:`~bids.layout.writing.build_path` with the patterns of
``qalas_bids/data/io_spec.json`` (QSIPrep style), never by pasting strings. Images copy the
affine and header of the QALAS reference (qform/sform codes kept), are float32 by default
and must be NaN-free. Every file is written to a temporary name in the target folder and
moved in place with :func:`os.replace`, so a crash never leaves a half-written map. Nothing
is ever written inside the raw dataset.

Output names (``<ents>`` = ``sub-<l>[_ses-<s>][_acq-<a>][_rec-<r>][_run-<n>]``)::

    anat/<ents>_{T1map,T2map,PDmap,IEmap}.nii.gz      maps (IEmap: custom suffix)
    anat/<ents>_desc-crlb_{T1map,...}.nii.gz          per-voxel standard deviation
    anat/<ents>_desc-residual_QALAS.nii.gz            relative RMS residual (custom suffix)
    anat/<ents>_desc-brain_mask.nii.gz
    anat/<ents>_desc-synthetic_{T1w,T2w,PDw,FLAIR,DIR,PSIR,STIR}.nii.gz
    fmap/<ents>_space-QALAS_TB1map.nii.gz
    figures/<ents>_desc-<name>_<suffix>.svg           (sub-<l>/figures/)
"""
from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
from bids.layout.writing import build_path

from .. import __version__
from ..utils.images import image_like
from ..utils.nifti_io import write_image
from .discovery import OUTPUT_ENTITIES, load_io_spec

BIDS_VERSION = "1.10.0"
CODE_URL = "https://github.com/qalas-bids/qalas-bids"
#: Derivative suffixes that are not in the BIDS specification (listed in .bidsignore).
CUSTOM_SUFFIXES = ("IEmap", "QALAS", "DIR", "PSIR", "STIR")
BIDSIGNORE_LINES = tuple(f"*_{s}.*" for s in CUSTOM_SUFFIXES) + (
    "*.html", "logs/", "/sub-*/figures", "/sub-*/log",
    # transforms (from-/to-/mode- entities are not in BIDS yet) and atlas tables (XCP-D's stat-)
    "*_xfm.*", "*_stat-*",
    # cohort templates: BIDS 1.11 allows cohort- only in tpl- files; fMRIPrep's naming is kept
    "*_cohort-*",
    # group level: summary tables (not BIDS files) and their figures
    "/group_*", "/group")


@functools.lru_cache(maxsize=1)
def standard_spaces() -> frozenset[str]:
    """``space-`` labels that need no ``SpatialReference``: the BIDS schema's standard template
    identifiers (bidsschematools, a pybids dependency). Any other space (``QALAS``, ``T1w``,
    MNIInfant, ...) must name its reference image."""
    from bidsschematools.schema import load_schema

    return frozenset(load_schema().objects.enums._StandardTemplateCoordSys.enum)


class OutputLocationError(ValueError):
    """The output would be written inside the raw BIDS dataset."""


# --------------------------------------------------------------------------- names
def derivative_path(
    entities: Mapping[str, Any],
    suffix: str,
    *,
    desc: str | None = None,
    space: str | None = None,
    datatype: str = "anat",
    extension: str | None = None,
    res: str | None = None,
    cohort: str | None = None,
    **extra: str,
) -> str:
    """Relative derivative path, e.g. ``sub-01/ses-01/anat/sub-01_ses-01_desc-crlb_T1map.nii.gz``.

    ``entities`` is :attr:`QalasRun.entities` (other keys such as ``inv`` are dropped).
    ``datatype`` is ``anat``, ``fmap`` or ``figures``; ``extension`` defaults to ``.nii.gz``
    (``.svg`` for figures). ``res``/``cohort`` are the template entities (``res-native`` is
    dropped, as niworkflows does); ``extra`` holds ``from``/``to``/``mode`` of transforms
    (``from_`` is accepted for ``from``).
    Raises ValueError when our patterns cannot name the file (unknown suffix/datatype).
    """
    ents = {k: str(entities[k]) for k in OUTPUT_ENTITIES if entities.get(k) not in (None, "")}
    if "subject" not in ents:
        raise ValueError(f"derivative_path needs a 'subject' entity, got {dict(entities)}")
    if extension is None:
        extension = ".svg" if datatype == "figures" else ".nii.gz"
    ents.update(suffix=suffix, datatype=datatype, extension=extension)
    if desc:
        ents["desc"] = desc
    if space:
        ents["space"] = space
    if res and res != "native":
        ents["res"] = res
    if cohort:
        ents["cohort"] = cohort
    ents.update({k.rstrip("_"): v for k, v in extra.items() if v})
    path = build_path(ents, load_io_spec()["patterns"], strict=True)
    if not path:
        raise ValueError(
            f"no qalas-bids output pattern for suffix={suffix!r}, datatype={datatype!r}, "
            f"extension={extension!r} (see qalas_bids/data/io_spec.json)")
    return path


def transform_path(entities: Mapping[str, Any], source: str = "B1", target: str = "QALAS") -> str:
    """Relative path of a run's ITK text transform, e.g.
    ``sub-01/ses-01/fmap/sub-01_ses-01_run-1_from-B1_to-QALAS_mode-image_xfm.txt``."""
    ents = {k: str(entities[k]) for k in OUTPUT_ENTITIES if entities.get(k) not in (None, "")}
    ents.update({"from": source, "to": target, "mode": "image", "suffix": "xfm", "datatype": "fmap",
                 "extension": ".txt"})
    path = build_path(ents, load_io_spec()["patterns"], strict=True)
    if not path:
        raise ValueError(f"no qalas-bids output pattern for a transform of {dict(entities)}")
    return path


def bids_uri(path: str | Path, bids_dir: str | Path, dataset: str = "raw") -> str:
    """BIDS URI of ``path`` inside ``bids_dir``: ``bids:raw:sub-01/anat/...``."""
    rel = Path(path).absolute().relative_to(Path(bids_dir).absolute())
    return f"bids:{dataset}:{rel.as_posix()}"


def resolve_bids_uri(uri: str, links: Mapping[str, str | Path]) -> Path | None:
    """Local path of a BIDS URI (``bids:<dataset>:<path>``) through ``links`` (dataset name ->
    folder or ``file://`` URI, as ``DatasetLinks``); ``None`` when the dataset is not linked,
    not local, or the URI is not a BIDS URI."""
    from urllib.parse import unquote, urlparse

    parts = str(uri).split(":", 2)
    if len(parts) != 3 or parts[0] != "bids" or parts[1] not in links:
        return None
    root = str(links[parts[1]])
    if "://" in root:
        parsed = urlparse(root)
        if parsed.scheme != "file":
            return None
        root = unquote(parsed.path)
    return Path(root) / parts[2]


# --------------------------------------------------------------------------- safety
def _is_inside(path: Path, parent: Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


def _raw_dataset_above(out_dir: Path) -> Path | None:
    """The nearest raw BIDS dataset (dataset_description.json, not a derivative) holding out_dir."""
    here = out_dir.resolve()
    for folder in (here, *here.parents):
        desc = folder / "dataset_description.json"
        if desc.is_file():
            try:
                kind = json.loads(desc.read_text()).get("DatasetType", "raw")
            except (OSError, ValueError, AttributeError):
                kind = "raw"
            if kind != "derivative":
                return folder
    return None


def in_derivatives_folder(path: Path, dataset: Path) -> bool:
    """True for ``<dataset>/derivatives/<name>[/...]``: where BIDS puts derivatives."""
    try:
        rel = path.resolve().relative_to((dataset / "derivatives").resolve())
    except ValueError:
        return False
    return rel != Path(".")


def output_location_problem(out_dir: str | Path, bids_dir: str | Path | None = None) -> str | None:
    """Why ``out_dir`` may not hold derivatives (it is raw data), or None if it may.

    Allowed: any folder outside raw BIDS datasets, and ``<dataset>/derivatives/<name>``
    (the BIDS specification's place for derivatives; pybids indexing of the input skips
    ``derivatives/``). Refused: a raw dataset's root and any other folder inside it.
    """
    out_dir = Path(out_dir)
    for raw in (Path(bids_dir) if bids_dir is not None else None, _raw_dataset_above(out_dir)):
        if raw is None or not _is_inside(out_dir, raw) or in_derivatives_folder(out_dir, raw):
            continue
        return (f"output directory {out_dir} is inside the raw BIDS dataset {raw}: qalas-bids "
                "never writes into raw data; choose an output directory outside it, or "
                f"{raw / 'derivatives' / 'qalas-bids'} (the BIDS derivatives folder)")
    return None


def check_output_dir(out_dir: str | Path, bids_dir: str | Path | None = None) -> None:
    """Raise :class:`OutputLocationError` if ``out_dir`` is (inside) raw BIDS data."""
    problem = output_location_problem(out_dir, bids_dir)
    if problem:
        raise OutputLocationError(problem)


# --------------------------------------------------------------------------- writing
def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and :func:`os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Atomic JSON writer (numpy values converted; NaN refused)."""
    text = json.dumps(dict(data), indent=2, default=_json_default, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def write_derivative(
    out_dir: str | Path,
    rel_path: str | Path,
    data: np.ndarray,
    reference_img: Any,
    metadata: Mapping[str, Any] | None,
    *,
    dtype: Any = np.float32,
    bids_dir: str | Path | None = None,
) -> Path:
    """Write ``data`` as ``out_dir/rel_path`` (NIfTI) plus its JSON sidecar, atomically.

    Parameters
    ----------
    out_dir : derivatives root
    rel_path : from :func:`derivative_path` (relative, ``.nii``/``.nii.gz``)
    data : 3D (or 4D) array on the reference grid; NaN/Inf refused (ValueError)
    reference_img : the QALAS reference image (affine, voxel size, qform/sform codes copied)
    metadata : sidecar content (written as ``<name>.json``; None: no sidecar)
    dtype : stored type (float32; pass ``np.uint8`` for masks)
    bids_dir : raw dataset, to refuse writing inside it
    """
    out_dir = Path(out_dir)
    rel = Path(rel_path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"rel_path must be relative to the output directory, got {rel_path}")
    name = rel.name
    if not (name.endswith(".nii.gz") or name.endswith(".nii")):
        raise ValueError(f"write_derivative writes NIfTI files, got {rel_path}")
    check_output_dir(out_dir, bids_dir)
    array = np.asanyarray(data)
    if array.shape[:3] != tuple(reference_img.shape[:3]):
        raise ValueError(
            f"{rel_path}: data shape {array.shape} does not match the reference grid "
            f"{tuple(reference_img.shape[:3])}")
    if not np.all(np.isfinite(array)):
        raise ValueError(
            f"refusing to write {rel_path}: {int((~np.isfinite(array)).sum())} NaN/Inf voxel(s) "
            "(a bug upstream - maps must be 0 outside the mask)")
    img = image_like(array, reference_img, dtype)
    if metadata is not None:
        metadata = _with_spatial_reference(name, metadata, rel_path)
    target = out_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    ext = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name[:-len(ext)]}.", suffix=f".tmp{ext}")
    os.close(fd)
    try:
        write_image(img, tmp)
        os.chmod(tmp, 0o644)
        if metadata is not None:
            write_json(target.parent / (name[: -len(ext)] + ".json"), metadata)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def copy_derivative(out_dir: str | Path, rel_path: str | Path, source: str | Path,
                    metadata: Mapping[str, Any] | None, *, bids_dir: str | Path | None = None) -> Path:
    """Copy a non-image file (e.g. an ITK transform) to ``out_dir/rel_path`` atomically,
    with a JSON sidecar when ``metadata`` is given."""
    out_dir, rel = Path(out_dir), Path(rel_path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ValueError(f"rel_path must be relative to the output directory, got {rel_path}")
    check_output_dir(out_dir, bids_dir)
    target = out_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{rel.name}.", suffix=".tmp")
    os.close(fd)
    try:
        Path(tmp).write_bytes(Path(source).read_bytes())
        os.chmod(tmp, 0o644)
        if metadata is not None:
            write_json(target.parent / (rel.name.split(".")[0] + ".json"), metadata)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def _with_spatial_reference(name: str, metadata: Mapping[str, Any], rel_path: Any) -> dict:
    """Add ``SpatialReference`` (BIDS: required for non-standard ``space-``) from ``Sources``."""
    metadata = dict(metadata)
    space = next((part[6:] for part in name.split("_") if part.startswith("space-")), None)
    if not space or space in standard_spaces() or "SpatialReference" in metadata:
        return metadata
    sources = [str(s) for s in metadata.get("Sources", [])]
    if not sources:
        raise ValueError(f"{rel_path}: space-{space} outputs need 'SpatialReference' or 'Sources' "
                         "(the QALAS image whose grid they are on) in their metadata")
    metadata["SpatialReference"] = next((s for s in sources if "_QALAS" in s), sources[0])
    return metadata


# --------------------------------------------------------------------------- dataset files
#: Where the qalas-bids image (Dockerfile) installs the package.
IMAGE_PREFIX = Path("/opt/qalas-venv")


def detect_container(root: str | Path = "/", environ: Mapping[str, str] | None = None,
                     prefix: str | Path | None = None) -> dict | None:
    """``GeneratedBy.Container`` when running in the qalas-bids image, else None.

    The image (Docker or podman) is recognised by ``/.dockerenv`` or ``/run/.containerenv``
    *and* this interpreter being the image's ``/opt/qalas-venv`` (a native install inside
    some other container is not "the container"); Singularity/Apptainer by
    ``SINGULARITY_CONTAINER`` / ``APPTAINER_CONTAINER`` or ``/.singularity.d``.
    ``QALAS_BIDS_CONTAINER_TAG`` overrides the reported tag.
    """
    import sys

    environ = os.environ if environ is None else environ
    root = Path(root)
    prefix = Path(sys.prefix if prefix is None else prefix)
    tag = environ.get("QALAS_BIDS_CONTAINER_TAG")
    image = environ.get("SINGULARITY_CONTAINER") or environ.get("APPTAINER_CONTAINER")
    if image or (root / ".singularity.d").exists():
        out = {"Type": "singularity"}
        if tag or image:
            out["URI"] = tag or image
        return out
    oci = (root / ".dockerenv").exists() or (root / "run" / ".containerenv").exists()
    if oci and prefix == IMAGE_PREFIX:
        return {"Type": "docker", "Tag": tag or f"qalas-bids/qalas-bids:{__version__}"}
    return None


def dataset_links(out_dir: str | Path) -> dict[str, str]:
    """``DatasetLinks`` of ``out_dir/dataset_description.json`` ({} when missing or unreadable)."""
    try:
        links = json.loads((Path(out_dir) / "dataset_description.json").read_text()).get("DatasetLinks")
        return dict(links or {})
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def write_dataset_description(out_dir: str | Path, bids_dir: str | Path,
                              derivatives: Mapping[str, str | Path] | None = None) -> Path:
    """Write ``out_dir/dataset_description.json`` (derivative, GeneratedBy, ``DatasetLinks``:
    ``raw`` and each ``--derivatives NAME=PATH``, which ``bids:NAME:`` URIs in the sidecars
    refer to; links of an earlier invocation with other names are kept)."""
    out_dir, bids_dir = Path(out_dir).absolute(), Path(bids_dir).absolute()
    check_output_dir(out_dir, bids_dir)
    generated = {"Name": "qalas-bids", "Version": __version__, "CodeURL": CODE_URL,
                 "Description": "Quantitative T1/T2/PD/IE maps from 3D-QALAS (SSL-QALAS)"}
    container = detect_container()
    if container:
        generated["Container"] = container
    source: dict[str, Any] = {"URL": bids_dir.as_uri()}
    raw_desc = bids_dir / "dataset_description.json"
    try:
        raw = json.loads(raw_desc.read_text())
    except (OSError, ValueError):
        raw = {}
    if raw.get("DatasetDOI"):
        source["DOI"] = raw["DatasetDOI"]
    links = dataset_links(out_dir)
    links.update({str(name): Path(path).absolute().as_uri() for name, path in (derivatives or {}).items()})
    links["raw"] = bids_dir.as_uri()
    description = {
        "Name": f"qalas-bids outputs{' for ' + raw['Name'] if raw.get('Name') else ''}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated],
        "SourceDatasets": [source],
        "DatasetLinks": links,
        "HowToAcknowledge": "Cite SSL-QALAS (Jun et al., Magn Reson Med 2023) and qalas-bids; see logs/CITATION.md",
    }
    return write_json(out_dir / "dataset_description.json", description)


def write_bidsignore(out_dir: str | Path) -> Path:
    """Write/extend ``out_dir/.bidsignore`` with the custom suffixes and report folders."""
    path = Path(out_dir) / ".bidsignore"
    with shared_file_lock(out_dir):  # participants of an array job merge into one file
        existing = path.read_text().splitlines() if path.is_file() else []
        lines = existing + [line for line in BIDSIGNORE_LINES if line not in existing]
        return atomic_write_text(path, "\n".join(lines) + "\n")


def remove_stale_temporaries(out_dir: str | Path, subjects: Iterable[str],
                             older_than_s: float = 600.0) -> list[Path]:
    """Delete the hidden temporary files (``.<name>.*.tmp*``) that a killed run left in
    these participants' folders. Only files older than ``older_than_s`` go: a concurrent
    run's temporaries live for milliseconds. Returns what was removed."""
    import time

    removed = []
    cutoff = time.time() - older_than_s
    for subject in subjects:
        for path in (Path(out_dir) / f"sub-{subject}").rglob(".*.tmp*"):
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def shared_file_lock(out_dir: str | Path, timeout: float = 600.0):
    """An inter-process lock (``logs/.qalas-bids.lock``) for read-modify-write of the
    dataset-level files that concurrent participants share (filelock, as nipype uses)."""
    from filelock import FileLock

    logs = Path(out_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return FileLock(str(logs / ".qalas-bids.lock"), timeout=timeout)
