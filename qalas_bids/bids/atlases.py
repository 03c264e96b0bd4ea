"""``--atlases``: TemplateFlow atlases by name and user segmentations, checked before any work.

Two forms (several may be given):

- ``NAME[:desc-DESC]``: a TemplateFlow atlas (``tpl-<T>[_res-N]_atlas-NAME[_desc-DESC]_dseg``)
  of a requested template output space, e.g. ``HOCPA:desc-th25`` or
  ``Schaefer2018:desc-400Parcels7Networks``. Checked against templateflow's bundled skeleton
  (no network) when the command line is parsed; the file itself must be in the TemplateFlow
  home (nothing is downloaded: otherwise exit 2 with the command that pre-fetches it). The
  table's ``atlas-`` label is NAME followed by DESC (``HOCPAth25``).
- ``LABEL=PATH[,TSV]``: a user segmentation (integer labels, NIfTI) on a template's grid, with
  an optional BIDS ``dseg.tsv`` (``index``/``name``) or FreeSurfer-style label list. Its template
  is read from the file name (``tpl-<T>`` or ``space-<T>``, optional ``cohort-``) or, when the
  name says none, is the one template of ``--output-spaces``.

Each atlas is resampled (nearest neighbour, by the affines) onto every output grid of its
template, so a res-1 atlas serves a res-2 output too.
"""
from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..qalas.errors import QalasInputError
from .templates import skeleton_zip

_LABEL = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class AtlasRequest:
    """One ``--atlases`` item: a TemplateFlow atlas (``name``, ``desc``) or a user file."""

    label: str
    name: str | None = None
    desc: str | None = None
    dseg: str | None = None
    tsv: str | None = None
    template: str | None = None  # user file: its template (None: the one requested template)
    cohort: str | None = None

    @property
    def is_templateflow(self) -> bool:
        return self.dseg is None

    def __str__(self) -> str:
        if self.is_templateflow:
            return self.name + (f":desc-{self.desc}" if self.desc else "")
        return f"{self.label}={self.dseg}" + (f",{self.tsv}" if self.tsv else "")


def _skeleton_dsegs() -> list[str]:
    with zipfile.ZipFile(skeleton_zip()) as zf:
        return [n for n in zf.namelist() if "_atlas-" in n and n.endswith("_dseg.nii.gz")]


def _entity(name: str, key: str) -> str | None:
    match = re.search(rf"(?:^|[_/]){key}-([A-Za-z0-9+]+)", name)
    return match.group(1) if match else None


def templateflow_atlases() -> dict[tuple[str, str, str | None], set[str | None]]:
    """``{(template, atlas, desc): {cohort, ...}}`` of every dseg atlas in the skeleton."""
    found: dict[tuple[str, str, str | None], set[str | None]] = {}
    for path in _skeleton_dsegs():
        key = (path.split("/")[0][4:], _entity(path, "atlas"), _entity(Path(path).name, "desc"))
        found.setdefault(key, set()).add(_entity(path, "cohort"))
    return found


def _user_atlas(label: str, rest: str) -> AtlasRequest:
    path, _, tsv = rest.partition(",")
    dseg = Path(path).expanduser()
    if not dseg.is_file():
        raise QalasInputError(f"{label}={rest}: segmentation {dseg} does not exist")
    if tsv and not Path(tsv).expanduser().is_file():
        raise QalasInputError(f"{label}={rest}: label table {tsv} does not exist")
    import nibabel as nib

    try:
        img = nib.load(str(dseg))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # not a readable NIfTI
        raise QalasInputError(f"{label}={rest}: {dseg} is not a readable NIfTI image ({exc})") from None
    if data.ndim != 3 or not np.all(np.isfinite(data)) or not np.array_equal(data, np.round(data)) \
            or not np.any(data > 0):
        raise QalasInputError(
            f"{label}={rest}: {dseg.name} must be a 3D segmentation of integer labels (0 = background) "
            "with at least one region; probabilistic atlases are not supported")
    template, cohort = _entity(dseg.name, "tpl") or _entity(dseg.name, "space"), _entity(dseg.name, "cohort")
    if template == "T1w":
        raise QalasInputError(
            f"{label}={rest}: a T1w-space segmentation belongs to one subject; give sMRIPrep/FreeSurfer "
            "segmentations through --derivatives (desc-aseg_dseg, desc-aparcaseg_dseg)")
    return AtlasRequest(label, dseg=str(dseg.resolve()),
                        tsv=str(Path(tsv).expanduser().resolve()) if tsv else None,
                        template=template, cohort=cohort)


def parse_atlas(token: str) -> AtlasRequest:
    """One ``--atlases`` item (syntax, and for user files: the file itself)."""
    label, sep, rest = token.partition("=")
    if sep:
        if not _LABEL.fullmatch(label):
            raise QalasInputError(f"atlas label {label!r}: letters and digits only (it becomes atlas-{label})")
        return _user_atlas(label, rest)
    name, *mods = token.split(":")
    desc = None
    for mod in mods:
        key, _, value = mod.partition("-")
        if key != "desc" or not _LABEL.fullmatch(value or "-"):
            raise QalasInputError(f"atlas {token!r}: modifier {mod!r} is not desc-<label>")
        desc = value
    if not _LABEL.fullmatch(name):
        raise QalasInputError(f"atlas {token!r}: give a TemplateFlow atlas name or LABEL=PATH[,TSV]")
    return AtlasRequest(name + (desc or ""), name=name, desc=desc)


def check_atlases(atlases: list[AtlasRequest], spaces) -> list[AtlasRequest]:
    """Exit-2 checks against the requested output ``spaces`` (``OutputSpace`` objects): each
    TemplateFlow atlas exists (skeleton) for one of the requested templates, with a unique desc;
    each user file's template is requested. Returns the atlases, user templates filled in."""
    templates = list(dict.fromkeys(s.name for s in spaces if s.is_template))
    if not templates:
        raise QalasInputError("--atlases needs a template in --output-spaces (e.g. MNI152NLin2009cAsym:res-2)")
    known = templateflow_atlases()
    out = []
    for atlas in atlases:
        if not atlas.is_templateflow:
            template = atlas.template
            if template is None and len(templates) > 1:
                raise QalasInputError(
                    f"--atlases {atlas}: the file name names no template (tpl-<T> or space-<T>) and "
                    f"--output-spaces has several ({', '.join(templates)}): rename the file")
            template = template or templates[0]
            if template not in templates:
                raise QalasInputError(f"--atlases {atlas}: it is in {template}; add {template} to --output-spaces")
            out.append(AtlasRequest(atlas.label, dseg=atlas.dseg, tsv=atlas.tsv, template=template,
                                    cohort=atlas.cohort))
            continue
        hits = {(t, d) for (t, a, d) in known if a == atlas.name}
        if not hits:
            names = sorted({a for (t, a, _) in known if t in templates})
            raise QalasInputError(f"--atlases {atlas}: no TemplateFlow atlas of that name; atlases of "
                                  f"{', '.join(templates)}: {', '.join(names) or 'none'}")
        usable = sorted({d or "" for (t, d) in hits if t in templates})
        if not usable:
            raise QalasInputError(
                f"--atlases {atlas}: TemplateFlow has it for {', '.join(sorted({t for t, _ in hits}))}, "
                "none of which is in --output-spaces")
        if atlas.desc is None and usable != [""]:
            raise QalasInputError(f"--atlases {atlas}: choose a version, one of "
                                  + ", ".join(f"{atlas.name}:desc-{d}" for d in usable if d))
        if atlas.desc is not None and atlas.desc not in usable:
            raise QalasInputError(f"--atlases {atlas}: no desc-{atlas.desc}; TemplateFlow has "
                                  + ", ".join(f"desc-{d}" for d in usable if d))
        out.append(atlas)
    return out


def _prefetch(template: str, atlas: AtlasRequest, query: dict[str, Any]) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in {**query, "atlas": atlas.name, "desc": atlas.desc}.items())
    return (f"python -c \"from templateflow.api import get; get({template!r}, {args}, suffix='dseg', "
            f"extension='.nii.gz'); get({template!r}, atlas={atlas.name!r}, desc={atlas.desc!r}, "
            f"suffix='dseg', extension='.tsv')\"")


def templateflow_atlas_files(atlas: AtlasRequest, template: str, res: str, cohort: str | None,
                             home: str) -> tuple[str, str | None]:
    """``(dseg, tsv or None)`` of a TemplateFlow atlas in the TemplateFlow ``home``: the file at
    resolution ``res``, else at the finest resolution there is. Raises QalasInputError (exit 2)
    with the pre-fetch command when the home does not hold it (nothing is downloaded)."""
    from templateflow.client import TemplateFlowClient

    client = TemplateFlowClient(root=home)
    query: dict[str, Any] = {"cohort": cohort} if cohort else {}
    entities = {"atlas": atlas.name, "desc": atlas.desc, "suffix": "dseg"}
    found = [p for p in client.ls(template, **query, **entities, extension=".nii.gz") if p.stat().st_size > 0]
    if not found:
        raise QalasInputError(
            f"--atlases {atlas}: {template}{' cohort-' + cohort if cohort else ''} atlas file not in the "
            f"TemplateFlow home {home} and qalas-bids never downloads at run time; pre-fetch it with "
            f"{_prefetch(template, atlas, {**query, 'resolution': int(res)})}, then set TEMPLATEFLOW_HOME")
    same_res = [p for p in found if _entity(p.name, "res") in (res, f"0{res}", None)]
    dseg = sorted(same_res or found, key=lambda p: p.name)[0]
    tsv = [p for p in client.ls(template, **entities, extension=".tsv") if p.stat().st_size > 0]
    return str(dseg), (str(tsv[0]) if tsv else None)
