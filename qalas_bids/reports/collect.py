"""Find the qalas-bids derivatives of each run on disk (pybids), for reports and group level.

Reports never receive arrays from the workflow: they read what was written, so
``--reports-only`` and the group level work on any finished output folder.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..qalas.errors import QalasInputError

MAP_SUFFIXES = ("T1map", "T2map", "PDmap", "IEmap")
SYNTHETIC_SUFFIXES = ("T1w", "T2w", "PDw", "FLAIR", "DIR", "PSIR", "STIR")
RUN_ENTITIES = ("subject", "session", "acquisition", "reconstruction", "run")


@dataclass
class SpaceDerivatives:
    """One run's resampled outputs in one ``--output-spaces`` space (what the report shows)."""

    space: str
    res: str | None = None
    cohort: str | None = None
    t1map: Path | None = None
    synthetic_t1w: Path | None = None
    mask: Path | None = None

    @property
    def label(self) -> str:
        """``space-T1w`` / ``space-MNI152NLin2009cAsym_res-2`` (the file-name entities)."""
        return "_".join([f"space-{self.space}"] + [f"{k}-{v}" for k, v in (("cohort", self.cohort),
                                                                            ("res", self.res)) if v])


@dataclass
class RunDerivatives:
    """Paths of one run's derivatives (``None``/absent when not written) and the T1map sidecar."""

    entities: dict[str, str]
    maps: dict[str, Path]  # T1map/T2map/PDmap/IEmap
    crlb: dict[str, Path] = field(default_factory=dict)  # same keys as maps
    residual: Path | None = None
    mask: Path | None = None
    head_mask: Path | None = None
    b1: Path | None = None
    synthetic: dict[str, Path] = field(default_factory=dict)  # T1w, FLAIR, ...
    sidecar: dict[str, Any] = field(default_factory=dict)  # of the T1map
    spaces: dict[str, SpaceDerivatives] = field(default_factory=dict)  # label -> resampled outputs

    @property
    def label(self) -> str:
        """``sub-01_ses-1_run-1`` style identifier of the run."""
        keys = {"subject": "sub", "session": "ses", "acquisition": "acq", "reconstruction": "rec", "run": "run"}
        return "_".join(f"{keys[k]}-{self.entities[k]}" for k in RUN_ENTITIES if self.entities.get(k))

    def sidecar_of(self, path: Path | None) -> dict[str, Any]:
        return read_sidecar(path) if path is not None else {}


def read_sidecar(image_path: str | Path) -> dict[str, Any]:
    """JSON sidecar next to a ``.nii[.gz]`` (or transform ``.txt``/``.h5``) file ({} when missing
    or unreadable)."""
    path = Path(image_path)
    name = path.name
    for ext in (".nii.gz", ".nii", ".txt", ".h5"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    js = path.with_name(name + ".json")
    try:
        return json.loads(js.read_text())
    except (OSError, ValueError):
        return {}


def output_layout(output_dir: Path):
    """pybids layout of a qalas-bids output folder (QalasInputError when it is not one)."""
    from bids import BIDSLayout

    if not (output_dir / "dataset_description.json").is_file():
        raise QalasInputError(
            f"{output_dir} has no dataset_description.json: it is not a qalas-bids output folder "
            "(run the participant level first, or point to the right folder)."
        )
    return BIDSLayout(str(output_dir), validate=False, is_derivative=True)


def _ents_key(f) -> tuple:
    ents = f.get_entities()
    return tuple(str(ents.get(k, "")) for k in RUN_ENTITIES)


def find_runs(output_dir: str | Path, subject: str | None = None, layout=None) -> list[RunDerivatives]:
    """All runs with a T1 map in ``output_dir`` (optionally of one subject), sorted by entities."""
    output_dir = Path(output_dir)
    layout = layout or output_layout(output_dir)
    query = {"extension": [".nii", ".nii.gz"], "return_type": "object"}
    if subject:
        query["subject"] = subject.removeprefix("sub-")
    files = layout.get(**query)
    groups: dict[tuple, list] = {}
    for f in files:
        groups.setdefault(_ents_key(f), []).append(f)
    runs = []
    for key, group in sorted(groups.items()):
        run = RunDerivatives(entities={k: v for k, v in zip(RUN_ENTITIES, key) if v}, maps={})
        for f in group:
            ents = f.get_entities()
            suffix, desc, space = ents.get("suffix"), ents.get("desc"), ents.get("space")
            path = Path(f.path)
            if space not in (None, "QALAS"):  # resampled copies (--output-spaces)
                _add_space_output(run, ents, path)
                continue
            if suffix in MAP_SUFFIXES and not desc and not space:
                run.maps[suffix] = path
            elif suffix in MAP_SUFFIXES and desc == "crlb":
                run.crlb[suffix] = path
            elif desc == "residual":
                run.residual = path
            elif suffix == "mask" and desc == "brain" and ents.get("datatype", "anat") == "anat":
                run.mask = path
            elif suffix == "mask" and desc == "head" and ents.get("datatype", "anat") == "anat":
                run.head_mask = path
            elif suffix == "TB1map":
                run.b1 = path
            elif desc == "synthetic" and suffix in SYNTHETIC_SUFFIXES:
                run.synthetic[suffix] = path
        if "T1map" in run.maps:
            run.sidecar = read_sidecar(run.maps["T1map"])
            runs.append(run)
    return runs


def _add_space_output(run: RunDerivatives, ents: dict, path: Path) -> None:
    """File the T1 map, synthetic T1w and brain mask of one space (other outputs are skipped)."""
    suffix, desc = ents.get("suffix"), ents.get("desc")
    role = {("T1map", None): "t1map", ("T1w", "synthetic"): "synthetic_t1w", ("mask", "brain"): "mask"}.get(
        (suffix, desc))
    if role is None:
        return
    cohort = re.search(r"_cohort-([a-zA-Z0-9]+)", path.name)  # not a pybids entity
    found = SpaceDerivatives(str(ents["space"]), _text(ents.get("res")), cohort.group(1) if cohort else None)
    setattr(run.spaces.setdefault(found.label, found), role, path)


def _text(value: Any) -> str | None:
    return None if value in (None, "") else str(value)


def list_subjects(output_dir: str | Path) -> list[str]:
    """Subject labels (without ``sub-``) that have at least one T1 map."""
    return sorted({r.entities["subject"] for r in find_runs(output_dir)})
