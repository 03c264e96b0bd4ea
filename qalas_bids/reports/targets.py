"""The fixed image of each ``--output-spaces`` registration, found again for the report.

``space-T1w`` outputs name their T1w in ``SpatialReference`` (a BIDS URI into the raw dataset
or a ``--derivatives`` folder, resolved through the output's ``DatasetLinks``); template
outputs use the template's brain T1w (the user's TemplateFlow home, else the shipped files).
Nothing is downloaded; a target that cannot be found is a sentence in the report.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..bids.derivatives import dataset_links, resolve_bids_uri
from ..bids.templates import SHIPPED_DIR, SHIPPED_TEMPLATE, _has_real_files, template_files, user_template_home
from ..qalas.errors import QalasInputError
from .collect import SpaceDerivatives, read_sidecar


@dataclass(frozen=True)
class RegistrationTarget:
    """The image a space's outputs were registered to (``path`` None: ``reason`` says why)."""

    name: str  # "the session's T1w (...)" / "MNI152NLin2009cAsym res-2 brain T1w"
    path: Path | None
    reason: str = ""


def report_links(out_dir: Path, bids_dir: Path | None = None) -> dict[str, str]:
    """``DatasetLinks`` of the output folder (``raw`` replaced by ``bids_dir`` when given)."""
    links = dataset_links(out_dir)
    if bids_dir is not None:
        links["raw"] = str(bids_dir)
    return links


def template_brain_t1w(template: str, res: str | None, cohort: str | None) -> Path | None:
    """Brain T1w of a template reference: the user's TemplateFlow home, else the shipped file."""
    if not res or not res.isdigit():
        return None
    home = user_template_home()
    if _has_real_files(home, template):
        try:
            return Path(template_files(template, res, cohort, home).brain_t1w)
        except QalasInputError:
            pass
    shipped = SHIPPED_DIR / f"tpl-{template}" / f"tpl-{template}_res-{int(res):02d}_desc-brain_T1w.nii.gz"
    return shipped if template == SHIPPED_TEMPLATE and not cohort and shipped.is_file() else None


def registration_target(space: SpaceDerivatives, links: dict[str, str]) -> RegistrationTarget:
    """Where the fixed image of ``space`` lies (T1w from ``SpatialReference``, or the template)."""
    if space.space == "T1w":
        uri = read_sidecar(space.t1map).get("SpatialReference", "") if space.t1map else ""
        path = resolve_bids_uri(uri, links) if uri else None
        if path is not None and path.is_file():
            return RegistrationTarget(f"the session's T1w ({uri})", path)
        return RegistrationTarget("the session's T1w", None,
                                  f"its SpatialReference {uri or '(none)'} is not reachable from here "
                                  "(pass the BIDS directory, or keep the --derivatives folder in place)")
    name = f"{space.space}{' cohort-' + space.cohort if space.cohort else ''} res-{space.res} brain T1w"
    path = template_brain_t1w(space.space, space.res, space.cohort)
    if path is None:
        return RegistrationTarget(name, None, f"the template is not in the TemplateFlow home {user_template_home()}")
    return RegistrationTarget(name, path)
