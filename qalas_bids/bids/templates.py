"""TemplateFlow templates without network: the local home, availability checks, file paths.

qalas-bids ships MNI152NLin2009cAsym res-1 and res-2 (brain T1w, brain mask, a stand-in WM
probability and the default ``TissueHemi`` atlas; see ``scripts/make_shipped_template.py``
and ``qalas_bids/data/templateflow/tpl-MNI152NLin2009cAsym/LICENSE``). When the user has no
TemplateFlow home of their own (``$TEMPLATEFLOW_HOME`` or ``~/.cache/templateflow`` without any
real file), a local home is built from templateflow's bundled skeleton plus these files and
``TEMPLATEFLOW_HOME`` points to it, so ``templateflow.api.get`` serves them offline. Any
other template must already be in the user's home; otherwise the run stops before any work
(exit 2) with the command that pre-fetches it.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..qalas.errors import QalasInputError

SHIPPED_TEMPLATE = "MNI152NLin2009cAsym"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "templateflow"
#: The shipped default atlas (``atlas-TissueHemi``, on the shipped template).
DEFAULT_ATLAS = "TissueHemi"
_MARKER = ".qalas-bids-local-home"
#: Root of the TemplateFlow archive (templateflow's S3 root), for ``SpatialReference`` text only.
TEMPLATEFLOW_URL = "https://templateflow.s3.amazonaws.com/"


@functools.lru_cache(maxsize=1)
def skeleton_zip() -> Path:
    """templateflow's bundled archive skeleton (found without importing templateflow,
    whose import populates ``$TEMPLATEFLOW_HOME``)."""
    spec = importlib.util.find_spec("templateflow")
    if spec is None or not spec.submodule_search_locations:
        raise QalasInputError("templateflow is not installed (pip install templateflow)")
    return Path(list(spec.submodule_search_locations)[0]) / "conf" / "templateflow-skel.zip"


@functools.lru_cache(maxsize=1)
def known_templates() -> tuple[str, ...]:
    """Template IDs of the TemplateFlow archive (from the skeleton: no network)."""
    with zipfile.ZipFile(skeleton_zip()) as zf:
        names = {n.split("/")[0] for n in zf.namelist() if n.startswith("tpl-") and "/" in n}
    return tuple(sorted(n[4:] for n in names))


@functools.lru_cache(maxsize=None)
def template_description(template: str) -> dict[str, Any]:
    """``template_description.json`` of ``template`` (res/cohort tables) from the skeleton."""
    with zipfile.ZipFile(skeleton_zip()) as zf:
        return json.loads(zf.read(f"tpl-{template}/template_description.json"))


def user_template_home(environ: dict | None = None) -> Path:
    """The user's TemplateFlow home: ``$TEMPLATEFLOW_HOME`` or templateflow's default cache."""
    environ = os.environ if environ is None else environ
    if environ.get("TEMPLATEFLOW_HOME"):
        return Path(environ["TEMPLATEFLOW_HOME"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("templateflow"))


def _has_real_files(home: Path, template: str | None = None) -> bool:
    """Whether ``home`` holds any non-empty NIfTI (of ``template``), i.e. more than a skeleton;
    cohort templates keep theirs in ``tpl-<T>/cohort-<c>/``."""
    pattern = f"tpl-{template or '*'}/**/*.nii.gz"
    return home.is_dir() and not (home / _MARKER).exists() and any(
        p.stat().st_size > 0 for p in home.glob(pattern))


def build_local_home(root: Path) -> Path:
    """Skeleton folder of the shipped template plus its real files, under ``root`` (idempotent)."""
    root.mkdir(parents=True, exist_ok=True)
    prefix = f"tpl-{SHIPPED_TEMPLATE}/"
    with zipfile.ZipFile(skeleton_zip()) as zf:
        for name in zf.namelist():
            top_level = "/" not in name and not name.startswith("tpl-")
            if (top_level or name.startswith(prefix)) and not name.endswith("/"):
                target = root / name
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
    for src in (SHIPPED_DIR / prefix).iterdir():
        target = root / prefix / src.name
        if not target.exists() or target.stat().st_size != src.stat().st_size:
            shutil.copyfile(src, target)
    (root / _MARKER).write_text("built by qalas-bids from its shipped template files\n")
    return root


@dataclass(frozen=True)
class TemplateFiles:
    """Files of one template reference (paths as strings)."""

    template: str
    resolution: str
    cohort: str | None
    brain_t1w: str
    brain_mask: str
    wm_probseg: str | None
    zooms_mm: tuple[float, ...]
    home: str  # where TemplateFlow atlases of the template are looked up

    @property
    def reference_url(self) -> str:
        """``SpatialReference`` of outputs on this grid: the TemplateFlow archive URL of the
        template image (BIDS requires one for templates outside its standard list, e.g. MNIInfant)."""
        parts = Path(self.brain_t1w).parts
        starts = [i for i, part in enumerate(parts) if part == f"tpl-{self.template}"]
        rel = parts[starts[-1]:] if starts else (f"tpl-{self.template}", parts[-1])
        return TEMPLATEFLOW_URL + "/".join(rel)

    @property
    def resolution_text(self) -> str:
        """BIDS ``Resolution`` sidecar value (niworkflows' wording)."""
        zooms = "x".join(f"{z:.1f}" for z in self.zooms_mm)
        return f"Template {self.template} ({zooms} mm^3)"


def prefetch_command(template: str, res: str | None, cohort: str | None) -> str:
    """The command that downloads what qalas-bids needs of one template (and the equivalent
    ``qalas-bids-prefetch-templates`` call)."""
    has_res = bool(res and res.isdigit())
    kwargs = (f"resolution={int(res)}, " if has_res else "") + (f"cohort={cohort!r}, " if cohort else "")
    token = template + (f":cohort-{cohort}" if cohort else "") + (f":res-{res}" if has_res else "")
    return (f"python -c \"from templateflow.api import get; get({template!r}, {kwargs}desc='brain', "
            f"suffix='mask'); get({template!r}, {kwargs}desc=None, suffix='T1w')\" "
            f"(or: qalas-bids-prefetch-templates {token})")


def resolve_template_homes(templates: list, local_root: Path) -> dict[str, Path]:
    """TemplateFlow home of each template (IDs, or output spaces with ``name``/``res``/``cohort``,
    whose resolution and cohort go into the pre-fetch hint); builds the local home when needed.

    The user's home serves a template it holds real files of; the shipped template is
    served from the local home otherwise. ``TEMPLATEFLOW_HOME`` is set to the local home
    when the user has no home of their own. Raises QalasInputError (exit 2) for a template
    that neither holds.
    """
    user = user_template_home()
    homes: dict[str, Path] = {}
    spaces = {getattr(t, "name", t): t for t in reversed(templates)}
    for template in dict.fromkeys(getattr(t, "name", t) for t in templates):
        if _has_real_files(user, template):
            homes[template] = user
        elif template == SHIPPED_TEMPLATE:
            homes[template] = build_local_home(local_root)
        else:
            space = spaces[template]
            hint = prefetch_command(template, getattr(space, "res", None), getattr(space, "cohort", None))
            raise QalasInputError(
                f"template {template} is not in the TemplateFlow home {user} and qalas-bids never "
                f"downloads at run time: pre-fetch it on a machine with network access, e.g. "
                f"{hint}, then set TEMPLATEFLOW_HOME to that home "
                f"(only {SHIPPED_TEMPLATE} is shipped)")
    if local_root in homes.values() and not _has_real_files(user):
        os.environ["TEMPLATEFLOW_HOME"] = str(local_root)
    return homes


def template_files(template: str, res: str, cohort: str | None, home: Path) -> TemplateFiles:
    """Brain T1w, brain mask and WM probability of one reference, through templateflow's
    ``get`` on ``home`` (nothing is downloaded: missing files are an exit 2 before work)."""
    from templateflow.client import TemplateFlowClient

    client = TemplateFlowClient(root=str(home))
    query: dict[str, Any] = {"resolution": int(res), "extension": ".nii.gz"}
    if cohort:
        query["cohort"] = cohort

    def one(required: bool = True, **entities: Any) -> str | None:
        found = [p for p in client.ls(template, **query, **entities) if p.stat().st_size > 0]
        if not found:
            if not required:
                return None
            raise QalasInputError(
                f"template {template} res-{res}{' cohort-' + cohort if cohort else ''}: no "
                f"{entities} file in the TemplateFlow home {home}; pre-fetch it with "
                f"{prefetch_command(template, res, cohort)}")
        return str(client.get(template, **query, **entities) if len(found) == 1 else found[0])

    mask = one(desc="brain", suffix="mask")
    t1w = one(required=False, desc="brain", suffix="T1w") or one(desc=None, suffix="T1w")
    wm = one(required=False, label="WM", suffix="probseg", desc=None)
    desc = template_description(template)
    table = desc.get("cohort", {}).get(cohort, {}).get("res") if cohort else None
    table = table or desc.get("res", {})
    key = next(k for k in table if int(k) == int(res))
    return TemplateFiles(template, res, cohort, t1w, mask, wm,
                         tuple(float(z) for z in table[key]["zooms"]), str(home))


def reference_files(space, homes: dict[str, Path], local_root: Path) -> tuple[TemplateFiles, str | None]:
    """:func:`template_files` of an output space (``name``/``res``/``cohort``) from its home in
    ``homes``. A user home that holds the shipped template but not this resolution's files
    (fMRIPrep fetches res-1 for its own use) falls back to the shipped files, with a note
    saying so; any other missing file is QalasInputError (exit 2) with the pre-fetch hint."""
    home = homes[space.name]
    try:
        return template_files(space.name, space.res, space.cohort, home), None
    except QalasInputError:
        if space.name != SHIPPED_TEMPLATE or space.cohort or home == local_root:
            raise
    files = template_files(space.name, space.res, None, build_local_home(local_root))
    note = (f"{space}: the TemplateFlow home {home} lacks res-{space.res} files of {SHIPPED_TEMPLATE}; "
            "using the ones qalas-bids ships")
    return dataclasses.replace(files, home=str(home)), note  # atlases: still the user's home
