"""What a run needs for its output spaces: the session's T1w, sMRIPrep/fMRIPrep derivatives
(``--derivatives NAME=PATH``) and the template files, found before any work.

sMRIPrep's reuse list (``smriprep/data/io_spec.json``): ``desc-preproc_T1w``, ``desc-brain_mask``,
``dseg`` (no desc), ``from-T1w_to-<tpl>_mode-image_xfm.{h5,txt}``; also the FreeSurfer
``desc-aseg_dseg`` and ``desc-aparcaseg_dseg``. All in native T1w space (no ``space-`` entity), subject-level
(``sub-X/anat``) or session-level (``sub-X/ses-Y/anat``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..qalas.errors import QalasInputError
from .discovery import load_io_spec
from .output_spaces import OutputSpace, resolve_native_resolution
from .templates import TemplateFiles, reference_files, resolve_template_homes


@dataclass(frozen=True)
class TemplateTarget:
    """One template output space of a run: its files and sMRIPrep's T1w -> template transform."""

    space: OutputSpace
    files: TemplateFiles
    t1w_to_template: str | None = None  # from --derivatives; None: registered by qalas-bids


@dataclass(frozen=True)
class SpaceInputs:
    """The anatomical references of one run (absolute paths as strings)."""

    t1w: str | None = None
    t1w_source: str = ""  # "raw" or "derivatives:<NAME>"
    t1w_brain_mask: str | None = None
    dseg: str | None = None
    aseg: str | None = None
    aparcaseg: str | None = None
    write_t1w: bool = False
    templates: tuple[TemplateTarget, ...] = ()
    derivatives_name: str | None = None
    atlases: tuple[dict, ...] = ()  # --atlases, resolved: ToOutputSpaces' atlas specs
    notes: tuple[str, ...] = field(default_factory=tuple)


def _session_anat_dirs(root: Path, subject: str, session: str | None) -> list[Path]:
    dirs = [root / f"sub-{subject}" / f"ses-{session}" / "anat"] if session else []
    return dirs + [root / f"sub-{subject}" / "anat"]


def _first(dirs: list[Path], pattern: str, exclude: tuple[str, ...] = ()) -> str | None:
    for folder in dirs:
        found = sorted(p for p in folder.glob(pattern) if not any(x in p.name for x in exclude))
        if found:
            return str(found[0])
    return None


def find_raw_t1w(layout, subject: str, session: str | None,
                 filters: dict | None = None) -> tuple[str | None, str | None]:
    """The raw T1w of a run (pybids query ``t1w`` of ``data/io_spec.json`` plus the ``t1w``
    filters of ``--bids-filter-file``): the session's, else the subject-level one (a filter
    with ``session`` picks that session instead). Of several, the one with the smallest voxels
    (then the first name); the second item then says which were left and how to choose."""
    from bids.layout import Query

    query = dict(load_io_spec()["queries"]["t1w"], subject=subject, **(filters or {}))
    sessions = [query.pop("session")] if "session" in query else ([session] if session else []) + [Query.NONE]
    found: list[str] = []
    for ses in sessions:
        found = sorted(f.path for f in layout.get(session=ses, **query))
        if found:
            break
    if len(found) < 2:
        return (found[0] if found else None), None

    def voxel_volume(path: str) -> float:
        import nibabel as nib

        return float(np.prod(nib.load(path).header.get_zooms()[:3]))

    chosen = min(found, key=voxel_volume)  # min() keeps the first of equal volumes
    names = ", ".join(Path(f).name for f in found)
    return chosen, (f"{len(found)} T1w images match ({names}); registering to {Path(chosen).name} (the "
                    "smallest voxels): choose another with --bids-filter-file, e.g. "
                    '{"t1w": {"acquisition": "<label>"}} or {"t1w": {"run": 2}}')


def find_smriprep_files(root: Path, subject: str, session: str | None,
                        templates: list[OutputSpace]) -> dict[str, str | None]:
    """sMRIPrep/fMRIPrep anatomical derivatives of one subject (None where absent)."""
    dirs = _session_anat_dirs(root, subject, session)
    found: dict[str, str | None] = {
        "t1w": _first(dirs, f"sub-{subject}*_desc-preproc_T1w.nii*", exclude=("_space-",)),
        "brain_mask": _first(dirs, f"sub-{subject}*_desc-brain_mask.nii*", exclude=("_space-",)),
        "dseg": _first(dirs, f"sub-{subject}*_dseg.nii*", exclude=("_space-", "_desc-")),
        "aseg": _first(dirs, f"sub-{subject}*_desc-aseg_dseg.nii*", exclude=("_space-",)),
        "aparcaseg": _first(dirs, f"sub-{subject}*_desc-aparcaseg_dseg.nii*", exclude=("_space-",)),
    }
    for space in templates:
        found[f"xfm:{space}"] = (
            _first(dirs, f"sub-{subject}*_from-T1w_to-{space.transform_label}_mode-image_xfm.h5")
            or _first(dirs, f"sub-{subject}*_from-T1w_to-{space.transform_label}_mode-image_xfm.txt"))
    return found


def check_t1w_image(path: str) -> None:
    """QalasInputError (exit 2) unless ``path`` is a readable 3D image (trailing dimensions of
    1 allowed) with finite values that are not all equal: the fixed image of the rigid step."""
    import nibabel as nib

    what = f"the T1w {path} (fixed image of the QALAS -> T1w registration)"
    pick = 'pick another with --bids-filter-file {"t1w": {...}}'
    try:
        img = nib.load(path)
        if len(img.shape) < 3 or any(n != 1 for n in img.shape[3:]):
            raise QalasInputError(f"{what} has shape {img.shape}: one 3D image is needed; split the "
                                  f"volume to use into its own file, or {pick}")
        data = np.asarray(img.dataobj, dtype=np.float32)
    except QalasInputError:
        raise
    except Exception as exc:  # nibabel raises many kinds on truncated or foreign files
        raise QalasInputError(f"{what} cannot be read ({type(exc).__name__}: {exc}); replace it, or "
                              f"{pick}") from None
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise QalasInputError(f"{what} has {bad} NaN or infinite voxels; replace them (e.g. by 0) or pick "
                              "another T1w")
    if not data.max() > data.min():
        raise QalasInputError(f"{what} is constant ({float(data.min()):g} everywhere): nothing to register to")


def collect_space_inputs(run, spaces: tuple[OutputSpace, ...], *, bids_dir: Path,
                         derivatives: dict[str, Path], template_root: Path,
                         voxel_mm: float, atlases: tuple = (), layout=None,
                         t1w_filters: dict | None = None) -> SpaceInputs:
    """Everything ``run`` needs for ``spaces`` and the ``--atlases`` (checked
    ``bids.atlases.AtlasRequest``s); raises QalasInputError (exit 2) when a reference or an
    atlas file is missing. With ``derivatives``, the T1w and the T1w -> template transforms
    come from them and only the rigid QALAS -> T1w step is computed. The raw T1w is queried
    on ``layout`` (the pybids index of ``bids_dir``; built when None) with ``t1w_filters``."""
    templates = [resolve_native_resolution(s, voxel_mm) for s in spaces if s.is_template]
    write_t1w = any(s.name == "T1w" for s in spaces)
    deriv_name, deriv = None, {}
    for name, root in derivatives.items():
        files = find_smriprep_files(root, run.subject, run.session, templates)
        if files["t1w"]:
            deriv_name, deriv = name, files
            break
    notes = derivative_notes(run, derivatives, deriv_name, deriv, templates)
    t1w = deriv.get("t1w")
    if not t1w and write_t1w:
        if layout is None:
            from .layout import make_layout

            layout = make_layout(bids_dir)
        t1w, choice = find_raw_t1w(layout, run.subject, run.session, t1w_filters)
        notes += [f"{run.label}: {choice}"] if choice else []
    if write_t1w and not t1w:
        elsewhere = sorted({f.get_entities().get("session") for f in layout.get(
            subject=run.subject, **load_io_spec()["queries"]["t1w"])} - {run.session, None})
        raise QalasInputError(
            f"{run.label}: --output-spaces T1w needs a T1w image of the session (anat/*_T1w.nii.gz "
            "in the raw dataset, or desc-preproc_T1w in a --derivatives folder); none found"
            + (f" with the --bids-filter-file t1w filters {t1w_filters}" if t1w_filters else "")
            + (f"; sub-{run.subject} has one in session {', '.join(elsewhere)}: to register to it, pass "
               f'--bids-filter-file with {{"t1w": {{"session": "{elsewhere[0]}"}}}}' if elsewhere else ""))
    if t1w:
        check_t1w_image(t1w)
    homes = resolve_template_homes(templates, template_root)
    targets = []
    for space in templates:
        files, note = reference_files(space, homes, template_root)
        notes += [note] if note else []
        xfm = deriv.get(f"xfm:{space}")
        targets.append(TemplateTarget(space, files, xfm))
    return SpaceInputs(
        t1w=t1w, t1w_source=f"derivatives:{deriv_name}" if deriv_name else ("raw" if t1w else ""),
        t1w_brain_mask=deriv.get("brain_mask"), dseg=deriv.get("dseg"), aseg=deriv.get("aseg"),
        aparcaseg=deriv.get("aparcaseg"), write_t1w=write_t1w, templates=tuple(targets),
        derivatives_name=deriv_name, atlases=tuple(requested_atlas_specs(atlases, targets)),
        notes=tuple(notes))


def derivative_notes(run, derivatives: dict[str, Path], deriv_name: str | None, deriv: dict,
                     templates: list[OutputSpace]) -> list[str]:
    """Warnings for ``--derivatives`` that give ``run`` nothing (or no transform for a template),
    with the folder to pass instead when the subject sits one level down (fMRIPrep < 21 wrote
    ``<out>/fmriprep/sub-X``)."""
    if not derivatives:
        return []
    if deriv_name is None:
        names = ", ".join(f"{name}={root}" for name, root in derivatives.items())
        hints = [f"{name}={sub.parent}" for name, root in derivatives.items()
                 for sub in sorted(root.glob(f"*/sub-{run.subject}")) if sub.is_dir()]
        return [f"{run.label}: --derivatives {names} holds no sub-{run.subject} desc-preproc_T1w "
                f"(looked in sub-{run.subject}{'/ses-' + run.session if run.session else ''}/anat and "
                f"sub-{run.subject}/anat); qalas-bids computes every registration itself "
                "instead"
                + (f". Did you mean --derivatives {' '.join(hints)}?" if hints else "")]
    return [f"{run.label}: --derivatives {deriv_name} has no from-T1w_to-{space.transform_label}_mode-image_xfm "
            f"(.h5/.txt); qalas-bids registers to {space.name} itself"
            for space in templates if not deriv.get(f"xfm:{space}")]


def requested_atlas_specs(atlases, targets: list[TemplateTarget]) -> list[dict]:
    """ToOutputSpaces atlas specs of the ``--atlases`` on each template output of their template
    (TemplateFlow files found in the template's home: exit 2 when absent)."""
    from .atlases import templateflow_atlas_files

    specs = []
    for target in targets:
        space = target.space
        for atlas in atlases:
            if atlas.is_templateflow:
                dseg, tsv = templateflow_atlas_files(atlas, space.name, space.res, space.cohort,
                                                     target.files.home)
            elif atlas.template == space.name and atlas.cohort in (None, space.cohort):
                dseg, tsv = atlas.dseg, atlas.tsv
            else:
                continue
            specs.append({"space_key": f"{space.transform_label}_res-{space.res}", "label": atlas.label,
                          "dseg": dseg, **({"tsv": tsv} if tsv else {})})
    return specs


def as_dict(inputs: SpaceInputs) -> dict:
    """JSON-friendly view (for logs and the settings file)."""
    out = dataclasses.asdict(inputs)
    out["templates"] = [{"space": str(t.space), "t1w_to_template": t.t1w_to_template,
                         "files": dataclasses.asdict(t.files)} for t in inputs.templates]
    return out


def _label_table_near(dseg: str, stem: str) -> str | None:
    """``<stem>.tsv`` next to ``dseg`` or in a folder above it (sMRIPrep writes them at the top)."""
    here = Path(dseg)
    sidecar = here.with_name(here.name.split(".nii")[0] + ".tsv")
    if sidecar.is_file():
        return str(sidecar)
    for folder in here.parents:
        if (folder / f"{stem}.tsv").is_file():
            return str(folder / f"{stem}.tsv")
        if (folder / "dataset_description.json").is_file():
            break
    return None


def atlas_specs(inputs: SpaceInputs) -> list[dict]:
    """Atlases of a run's ROI tables: the shipped ``TissueHemi`` on each MNI152NLin2009cAsym
    res-1/res-2 output, the FreeSurfer ``desc-aseg_dseg``/``desc-aparcaseg_dseg`` (T1w space)
    when the derivatives have them and T1w outputs are written, and the ``--atlases``."""
    from .templates import DEFAULT_ATLAS, SHIPPED_DIR, SHIPPED_TEMPLATE

    specs = []
    for target in inputs.templates:
        space = target.space
        folder = SHIPPED_DIR / f"tpl-{SHIPPED_TEMPLATE}"
        dseg = folder / f"tpl-{SHIPPED_TEMPLATE}_res-0{space.res}_atlas-{DEFAULT_ATLAS}_dseg.nii.gz"
        if space.name == SHIPPED_TEMPLATE and dseg.is_file():
            specs.append({"space_key": f"{space.transform_label}_res-{space.res}", "label": DEFAULT_ATLAS,
                          "dseg": str(dseg),
                          "tsv": str(folder / f"tpl-{SHIPPED_TEMPLATE}_atlas-{DEFAULT_ATLAS}_dseg.tsv")})
    for label, dseg in (("aseg", inputs.aseg), ("aparcaseg", inputs.aparcaseg)):
        if dseg and inputs.write_t1w:
            tsv = _label_table_near(dseg, f"desc-{label}_dseg")
            specs.append({"space_key": "T1w", "label": label, "dseg": dseg, **({"tsv": tsv} if tsv else {})})
    return specs + list(inputs.atlases)
