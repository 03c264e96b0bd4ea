"""Find the B1+ map that belongs to a QALAS run.

Supported inputs (``fmap/``):

- TurboFLASH (Siemens ``tfl_b1map``, suffix ``TB1TFL``) and Siemens ``rf_map`` (``TB1RFM``):
  a magnitude image and a flip-angle image. Roles are read from ``acq-anat``/``acq-famp``,
  ``acq-<x>anat``/``acq-<x>famp`` (e.g. ``acq-b1anat``/``acq-b1famp``) or
  ``part-mag``/``part-phase``. The famp image is required, the anat image is optional
  (``files`` then has only ``"famp"``).
- AFI (``TB1AFI``, GE/Philips): ``acq-tr1`` (short TR) and ``acq-tr2`` (long TR), both required.
- Double angle (``TB1DAM``): ``flip-1`` and ``flip-2`` (angles a and 2a), both required.
- A ready-made relative B1+ map (suffix ``TB1map``, ratio or percent).
- EPI, SRGE B1 maps and receive maps are found but not supported: a clear error names them.

Pairing rules, applied in order until one candidate is left (each step is logged and the
chain is stored in :attr:`B1Source.reason`):

1. explicit links: the B1 sidecar's ``IntendedFor`` lists a file of this QALAS run (BIDS URI
   ``bids::sub-01/...`` or the older subject-relative ``ses-01/anat/...``), or its
   ``B0FieldIdentifier`` equals the QALAS ``B0FieldSource``. A B1 map whose ``IntendedFor``
   names only *other* QALAS runs is never used for this one.
2. same session (a B1 map from another session is never used without an explicit link:
   the subject has moved; the error names the file found);
3. same ``ShimSetting`` as the QALAS sidecar;
4. nearest acquisition time (sidecar ``AcquisitionTime``/``AcquisitionDateTime``, else the
   ``acq_time`` column of ``*_scans.tsv``);
5. same ``run`` label.

If several candidates are still left the pairing is ambiguous: the error lists them and
says how to choose (``IntendedFor`` or ``--bids-filter-file`` key ``b1``).
"""
from __future__ import annotations

import csv
import datetime as _dt
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..qalas.b1.no_b1 import NO_B1_BIAS_PER_10_PERCENT
from ..qalas.errors import QalasInputError

LOGGER = logging.getLogger("qalas_bids.bids")

_BIAS = NO_B1_BIAS_PER_10_PERCENT[0.9]
_NO_B1_HINT = (f"pass --no-b1 to fit with B1 = 1 (biased: per 10 % of B1 error WM T1 is off by "
               f"about {abs(_BIAS['WM']['T1']):.0f} % and GM T1 by about {abs(_BIAS['GM']['T1']):.0f} %, "
               "see --help)")
#: The choices a user without a usable B1 map has (listed by every "no B1 map" error).
NO_B1_CHOICES = (
    "choices: (1) add a B1+ map to fmap/ (TB1TFL anat+famp, TB1RFM, TB1AFI acq-tr1/acq-tr2, "
    "TB1DAM flip-1/flip-2, or a relative TB1map in ratio or percent); (2) point an existing map "
    "at this run with IntendedFor in its sidecar or the --bids-filter-file key \"b1\"; (3) "
)


@dataclass(frozen=True)
class B1Source:
    """The B1+ input paired with one QALAS run.

    kind : a key of :data:`KINDS`: ``"tfl"`` (TurboFLASH anat + famp), ``"rfm"`` (Siemens
        rf_map anat + famp), ``"afi"`` (tr1 + tr2), ``"dam"`` (flip1 + flip2) or ``"tb1map"``
        (ready relative B1 map)
    files : ``{role: path}``, e.g. ``{"anat": path, "famp": path}`` (anat optional) or ``{"map": path}``
    metadata : sidecar of the main image (famp, tr1, flip1 or the map)
    role_metadata : sidecar of every image, by role
    reason : why this candidate was chosen (human readable, for logs and sidecars)
    """

    kind: str
    files: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    role_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self, bids_dir: str | Path | None = None) -> dict[str, Any]:
        """JSON-friendly summary (for the ``B1Source`` sidecar key); with ``bids_dir`` the
        files are given as BIDS URIs (``bids:raw:sub-...``)."""
        files = dict(self.files)
        if bids_dir is not None:
            root = Path(bids_dir).absolute()
            files = {k: f"bids:raw:{Path(v).absolute().relative_to(root).as_posix()}"
                     for k, v in files.items()}
        return {"Kind": self.kind, "Files": files, "Reason": self.reason}


@dataclass
class B1Candidate:
    """A complete B1 input found in the dataset (internal to pairing)."""

    kind: str
    files: dict[str, str]
    metadata: dict[str, Any]
    session: str | None
    run: str | None
    sidecars: list[dict[str, Any]]
    acq_time: float | None = None
    role_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return ", ".join(Path(p).name for p in self.files.values())


@dataclass
class PairingTarget:
    """What pairing needs to know about a QALAS run."""

    subject: str
    session: str | None
    run: str | None
    rel_files: tuple[str, ...]  # relative to bids_dir, posix
    metadata: Mapping[str, Any]
    acq_time: float | None = None

    @property
    def label(self) -> str:
        return Path(self.rel_files[0]).name if len(self.rel_files) == 1 else (
            f"{Path(self.rel_files[0]).name} (+{len(self.rel_files) - 1} volumes)")


# --------------------------------------------------------------------------- helpers
def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def intended_for_paths(value: Any, subject: str) -> set[str]:
    """``IntendedFor`` entries as paths relative to the dataset root (posix).

    Accepts BIDS URIs of this dataset (``bids::sub-01/anat/x.nii.gz``) and the deprecated
    subject-relative form (``anat/x.nii.gz``, ``ses-01/anat/x.nii.gz``). URIs naming another
    dataset (``bids:other:...``) are ignored.
    """
    out = set()
    for item in _as_list(value):
        if not isinstance(item, str) or not item:
            continue
        if item.startswith("bids:"):
            parts = item.split(":", 2)
            if len(parts) != 3 or parts[1] != "":
                continue
            out.add(parts[2].lstrip("/"))
        else:
            out.add(f"sub-{subject}/{item.lstrip('/')}")
    return out


def parse_acquisition_time(metadata: Mapping[str, Any]) -> float | None:
    """Seconds since midnight from ``AcquisitionTime`` or ``AcquisitionDateTime``."""
    for key in ("AcquisitionTime", "AcquisitionDateTime"):
        value = metadata.get(key)
        if isinstance(value, str) and value:
            seconds = _time_of_day(value)
            if seconds is not None:
                return seconds
    return None


def _time_of_day(text: str) -> float | None:
    text = text.strip()
    if "T" in text:
        text = text.split("T", 1)[1]
    text = text.rstrip("Z").split("+")[0]
    for fmt in ("%H:%M:%S.%f", "%H:%M:%S", "%H%M%S.%f", "%H%M%S"):
        try:
            t = _dt.datetime.strptime(text, fmt).time()
        except ValueError:
            continue
        return t.hour * 3600 + t.minute * 60 + t.second + t.microsecond / 1e6
    return None


def scans_acquisition_times(bids_dir: Path, subject: str, session: str | None) -> dict[str, float]:
    """``acq_time`` of ``*_scans.tsv`` as {path relative to bids_dir: seconds of the day}."""
    base = Path(bids_dir) / f"sub-{subject}"
    stem = f"sub-{subject}"
    if session:
        base = base / f"ses-{session}"
        stem += f"_ses-{session}"
    tsv = base / f"{stem}_scans.tsv"
    if not tsv.is_file():
        return {}
    rel_base = base.relative_to(bids_dir).as_posix()
    out = {}
    try:
        with tsv.open(newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                seconds = _time_of_day(row.get("acq_time") or "")
                if row.get("filename") and seconds is not None:
                    out[f"{rel_base}/{row['filename']}"] = seconds
    except (OSError, csv.Error) as exc:
        LOGGER.warning("could not read %s (%s): acquisition times from it are not used", tsv, exc)
    return out


def _shims_equal(a: Any, b: Any) -> bool:
    la, lb = _as_list(a), _as_list(b)
    if not la or len(la) != len(lb):
        return False
    try:
        return all(math.isclose(float(x), float(y), rel_tol=1e-6, abs_tol=1e-6) for x, y in zip(la, lb))
    except (TypeError, ValueError):
        return False


# --------------------------------------------------------------------------- discovery
#: Each supported B1 kind: BIDS suffix, the roles of its images, the roles that must exist
#: and the role whose image is the map's own magnitude (moving image of the rigid
#: coregistration; None: the kind has none).
KINDS: dict[str, dict[str, Any]] = {
    "tfl": {"suffix": "TB1TFL", "roles": ("anat", "famp"), "required": ("famp",), "magnitude": "anat"},
    "rfm": {"suffix": "TB1RFM", "roles": ("anat", "famp"), "required": ("famp",), "magnitude": "anat"},
    "afi": {"suffix": "TB1AFI", "roles": ("tr1", "tr2"), "required": ("tr1", "tr2"), "magnitude": "tr1"},
    "dam": {"suffix": "TB1DAM", "roles": ("flip1", "flip2"), "required": ("flip1", "flip2"),
            "magnitude": "flip1"},
    "tb1map": {"suffix": "TB1map", "roles": ("map",), "required": ("map",), "magnitude": None},
}


def tfl_role(entities: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Role (``anat``/``famp``) of a TB1TFL/TB1RFM file and its acquisition label without the role."""
    acq = str(entities.get("acquisition") or "")
    part = entities.get("part")
    low = acq.lower()
    for role, tag in (("famp", "famp"), ("anat", "anat")):
        if low.endswith(tag):
            return role, acq[: len(acq) - len(tag)] or None
    if part == "phase":
        return "famp", acq or None
    if part == "mag":
        return "anat", acq or None
    return None, acq or None


def afi_role(entities: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Role (``tr1`` short TR / ``tr2`` long TR) of a TB1AFI file from ``acq-[<x>]tr1|tr2``."""
    acq = str(entities.get("acquisition") or "")
    for role in ("tr1", "tr2"):
        if acq.lower().endswith(role):
            return role, acq[: len(acq) - 3] or None
    return None, acq or None


def dam_role(entities: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Role (``flip1``/``flip2``) of a TB1DAM file from its ``flip`` entity (1 or 2)."""
    flip = str(entities.get("flip") or "")
    acq = entities.get("acquisition")
    return (f"flip{flip}" if flip in ("1", "2") else None), (str(acq) if acq else None)


_ROLE_OF = {"tfl": tfl_role, "rfm": tfl_role, "afi": afi_role, "dam": dam_role,
            "tb1map": lambda ents: ("map", None)}
_ROLE_HINT = {"tfl": "name it acq-anat/acq-famp or part-mag/part-phase",
              "rfm": "name it acq-anat/acq-famp or part-mag/part-phase",
              "afi": "name the short-TR image acq-tr1 and the long-TR one acq-tr2",
              "dam": "give it the flip-1 (angle a) or flip-2 (angle 2a) entity"}


def build_candidates(
    files_by_kind: Mapping[str, Sequence[Any]], bids_dir: Path, subject: str,
) -> tuple[list[B1Candidate], list[str]]:
    """Group pybids ``BIDSFile`` objects (``{kind: files}``, kinds of :data:`KINDS`) into
    complete B1 candidates.

    Returns the candidates and a list of problems (files that could not be used).
    """
    problems: list[str] = []
    scans_cache: dict[str | None, dict[str, float]] = {}

    def acq_time(bf: Any, meta: Mapping[str, Any]) -> float | None:
        seconds = parse_acquisition_time(meta)
        if seconds is None:
            ses = bf.get_entities().get("session")
            if ses not in scans_cache:
                scans_cache[ses] = scans_acquisition_times(bids_dir, subject, ses)
            seconds = scans_cache[ses].get(Path(bf.path).relative_to(bids_dir).as_posix())
        return seconds

    candidates = []
    for kind, files in files_by_kind.items():
        spec = KINDS[kind]
        groups: dict[tuple, dict[str, Any]] = {}
        for bf in files:
            ents = bf.get_entities()
            role, acq_rest = _ROLE_OF[kind](ents)
            if role is None:
                problems.append(f"{bf.path}: cannot tell which image of the {spec['suffix']} map this is "
                                f"({_ROLE_HINT[kind]})")
                continue
            key = (ents.get("session"), acq_rest, ents.get("reconstruction"), str(ents.get("run") or ""),
                   ents.get("echo"), ents.get("direction"), bf.path if kind == "tb1map" else None)
            group = groups.setdefault(key, {})
            if role in group:
                problems.append(f"two {spec['suffix']} '{role}' images for one map: {group[role].path} "
                                f"and {bf.path}")
                continue
            group[role] = bf
        for group in groups.values():
            missing = [r for r in spec["required"] if r not in group]
            if missing:
                have = ", ".join(Path(bf.path).name for bf in group.values())
                problems.append(f"{have}: {spec['suffix']} map without its {'/'.join(missing)} image")
                continue
            main = group[spec["required"][0]]
            meta = dict(main.get_metadata())
            ents = main.get_entities()
            candidates.append(B1Candidate(
                kind=kind, files={role: str(bf.path) for role, bf in sorted(group.items())},
                metadata=meta, session=ents.get("session"),
                run=str(ents["run"]) if ents.get("run") is not None else None,
                sidecars=[dict(bf.get_metadata()) for bf in group.values()], acq_time=acq_time(main, meta),
                role_metadata={role: dict(bf.get_metadata()) for role, bf in group.items()},
            ))
    return candidates, problems


# --------------------------------------------------------------------------- pairing
def _explicit_link(cand: B1Candidate, target: PairingTarget) -> str | None:
    wanted = set(target.rel_files)
    for meta in cand.sidecars:
        if intended_for_paths(meta.get("IntendedFor"), target.subject) & wanted:
            return "its IntendedFor lists this QALAS run"
    sources = set(map(str, _as_list(target.metadata.get("B0FieldSource"))))
    for meta in cand.sidecars:
        ident = set(map(str, _as_list(meta.get("B0FieldIdentifier"))))
        if ident & sources:
            return f"its B0FieldIdentifier {sorted(ident & sources)[0]!r} matches the QALAS B0FieldSource"
    return None


def _intended_elsewhere(cand: B1Candidate, target: PairingTarget, all_qalas: set[str]) -> bool:
    """True when the candidate's IntendedFor names other QALAS runs but not this one."""
    named = set()
    for meta in cand.sidecars:
        named |= intended_for_paths(meta.get("IntendedFor"), target.subject)
    return bool(named & all_qalas) and not (named & set(target.rel_files))


def _no_b1(message: str, require_b1: bool) -> None:
    if require_b1:
        raise QalasInputError(message)
    LOGGER.warning("%s; continuing with B1 = 1 because B1 is not required (--no-b1)",
                   message.split("; choices:")[0].split("; pass --no-b1")[0])


def pair_b1(
    target: PairingTarget,
    candidates: Sequence[B1Candidate],
    *,
    all_qalas: Iterable[str] = (),
    unsupported: Sequence[str] = (),
    problems: Sequence[str] = (),
    require_b1: bool = True,
) -> B1Source | None:
    """Choose the B1 candidate for ``target`` (rules in the module docstring).

    Returns None only when ``require_b1`` is False and no usable B1 map exists; otherwise
    raises :class:`QalasInputError` naming the files found and the fix.
    """
    all_qalas = set(all_qalas)
    cands = [c for c in candidates if not _intended_elsewhere(c, target, all_qalas)]
    dropped = [c for c in candidates if c not in cands]
    for c in dropped:
        LOGGER.info("B1 %s not considered for %s: its IntendedFor names another QALAS run",
                    c.label, target.label)
    if not cands:
        found = [c.label for c in dropped] + list(unsupported) + list(problems)
        if unsupported:
            _no_b1(
                f"no supported B1+ map for {target.label}: found {', '.join(map(str, unsupported))}, "
                "a B1 mapping method that qalas-bids does not support (TB1TFL, TB1RFM, TB1AFI, "
                "TB1DAM and ready-made TB1map are); convert it to a relative B1 map "
                f"saved as fmap/..._TB1map.nii.gz, or {_NO_B1_HINT}", require_b1)
        elif found:
            _no_b1(f"no usable B1+ map for {target.label}: " + "; ".join(found) + f"; fix the "
                   f"names/IntendedFor, or {_NO_B1_HINT}", require_b1)
        else:
            _no_b1(f"no B1+ map found for {target.label} (looked for fmap/*_TB1TFL, *_TB1RFM, "
                   f"*_TB1AFI, *_TB1DAM and *_TB1map of sub-{target.subject}); {NO_B1_CHOICES}"
                   f"{_NO_B1_HINT}", require_b1)
        return None
    if unsupported:
        LOGGER.info("ignoring unsupported B1 map(s) %s: a supported one exists", list(unsupported))

    steps: list[str] = []
    explicit = [(c, _explicit_link(c, target)) for c in cands]
    explicit = [(c, why) for c, why in explicit if why]
    if explicit:
        cands = [c for c, _ in explicit]
        steps.append(explicit[0][1] if len(explicit) == 1 else
                     f"{len(explicit)} B1 maps are linked to this run")
    else:
        same = [c for c in cands if c.session == target.session]
        if not same:
            where = "; ".join(f"{c.label} (session {c.session})" for c in cands)
            _no_b1(
                f"the only B1+ maps of sub-{target.subject} are in another session than "
                f"{target.label} (session {target.session}): {where}. A B1 map is not reused "
                "across sessions automatically (the head moved); add an IntendedFor in its "
                f"sidecar naming the QALAS files to force it, or {_NO_B1_HINT}", require_b1)
            return None
        cands = same
        steps.append(f"same session ({target.session})" if target.session else "same subject")

    if len(cands) > 1:
        shim = target.metadata.get("ShimSetting")
        matching = [c for c in cands if _shims_equal(c.metadata.get("ShimSetting"), shim)]
        if matching:
            if len(matching) < len(cands):
                steps.append("same ShimSetting")
            cands = matching

    if len(cands) > 1 and target.acq_time is not None:
        timed = [(abs(c.acq_time - target.acq_time), c) for c in cands if c.acq_time is not None]
        if timed:
            best = min(d for d, _ in timed)
            nearest = [c for d, c in timed if d - best < 1.0]
            if len(nearest) < len(cands):
                steps.append(f"nearest acquisition time ({best:.0f} s apart)")
            cands = nearest

    if len(cands) > 1 and target.run is not None:
        same_run = [c for c in cands if c.run == target.run]
        if same_run:
            if len(same_run) < len(cands):
                steps.append(f"same run ({target.run})")
            cands = same_run

    if len(cands) > 1:
        listing = "; ".join(c.label for c in cands)
        raise QalasInputError(
            f"cannot choose the B1+ map for {target.label} among {len(cands)} candidates "
            f"({listing}): add IntendedFor to the B1 sidecar naming the QALAS files, or narrow "
            'the query with --bids-filter-file, e.g. {"b1": {"run": 1}}'
        )
    chosen = cands[0]
    reason = f"{chosen.label}: " + "; ".join(steps)
    if len(candidates) == 1:
        reason += " (only B1 map of the subject)"
    LOGGER.info("B1 for %s -> %s", target.label, reason)
    return B1Source(kind=chosen.kind, files=dict(chosen.files), metadata=dict(chosen.metadata),
                    reason=reason, role_metadata=dict(chosen.role_metadata))
