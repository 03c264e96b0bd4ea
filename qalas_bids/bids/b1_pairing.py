"""Find the B1+ map that belongs to a QALAS run.

Supported inputs (``fmap/``):

- TurboFLASH (Siemens ``tfl_b1map``, suffix ``TB1TFL``): a magnitude image and a flip-angle
  image. Roles are read from ``acq-anat``/``acq-famp``, ``acq-<x>anat``/``acq-<x>famp``
  (e.g. ``acq-b1anat``/``acq-b1famp``) or ``part-mag``/``part-phase``. The famp image is
  required, the anat image is optional (``files`` then has only ``"famp"``).
- A ready-made relative B1+ map (suffix ``TB1map``).
- AFI, DAM, EPI, SRGE, RFM B1 maps are found but not supported yet: a clear error names them.

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

from ..qalas.errors import QalasInputError

LOGGER = logging.getLogger("qalas_bids.bids")

_NO_B1_HINT = "pass --no-b1 to fit with B1 = 1 (T2 and IE will then be biased)"


@dataclass(frozen=True)
class B1Source:
    """The B1+ input paired with one QALAS run.

    kind : ``"tfl"`` (TurboFLASH anat + famp) or ``"tb1map"`` (ready relative B1 map)
    files : ``{"anat": path, "famp": path}`` (anat optional) or ``{"map": path}``
    metadata : sidecar of the famp image (tfl) or of the map (tb1map)
    reason : why this candidate was chosen (human readable, for logs and sidecars)
    """

    kind: str
    files: dict[str, str]
    metadata: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

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
def tfl_role(entities: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """Role (``anat``/``famp``) of a TB1TFL file and its acquisition label without the role."""
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


def build_candidates(
    tfl_files: Sequence[Any], map_files: Sequence[Any], bids_dir: Path, subject: str,
) -> tuple[list[B1Candidate], list[str]]:
    """Group pybids ``BIDSFile`` objects into complete B1 candidates.

    Returns the candidates and a list of problems (files that could not be used).
    """
    problems: list[str] = []
    groups: dict[tuple, dict[str, Any]] = {}
    for bf in tfl_files:
        ents = bf.get_entities()
        role, acq_rest = tfl_role(ents)
        if role is None:
            problems.append(
                f"{bf.path}: cannot tell whether this TB1TFL image is the magnitude or the "
                "flip-angle map (name it acq-anat/acq-famp or part-mag/part-phase)"
            )
            continue
        key = (ents.get("session"), acq_rest, ents.get("reconstruction"), str(ents.get("run") or ""),
               ents.get("echo"), ents.get("direction"))
        group = groups.setdefault(key, {})
        if role in group:
            problems.append(f"two TB1TFL '{role}' images for one map: {group[role].path} and {bf.path}")
            continue
        group[role] = bf
    candidates = []
    scans_cache: dict[str | None, dict[str, float]] = {}

    def acq_time(bf: Any, meta: Mapping[str, Any]) -> float | None:
        seconds = parse_acquisition_time(meta)
        if seconds is None:
            ses = bf.get_entities().get("session")
            if ses not in scans_cache:
                scans_cache[ses] = scans_acquisition_times(bids_dir, subject, ses)
            seconds = scans_cache[ses].get(Path(bf.path).relative_to(bids_dir).as_posix())
        return seconds

    for key, group in groups.items():
        if "famp" not in group:
            problems.append(f"{group['anat'].path}: TurboFLASH magnitude image without its flip-angle "
                            "(acq-famp) image")
            continue
        famp = group["famp"]
        meta = dict(famp.get_metadata())
        sidecars = [dict(bf.get_metadata()) for bf in group.values()]
        ents = famp.get_entities()
        candidates.append(B1Candidate(
            kind="tfl", files={role: str(bf.path) for role, bf in sorted(group.items())},
            metadata=meta, session=ents.get("session"),
            run=str(ents["run"]) if ents.get("run") is not None else None,
            sidecars=sidecars, acq_time=acq_time(famp, meta),
        ))
    for bf in map_files:
        meta = dict(bf.get_metadata())
        ents = bf.get_entities()
        candidates.append(B1Candidate(
            kind="tb1map", files={"map": str(bf.path)}, metadata=meta, session=ents.get("session"),
            run=str(ents["run"]) if ents.get("run") is not None else None,
            sidecars=[meta], acq_time=acq_time(bf, meta),
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
                   message.split("; pass --no-b1")[0])


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
                "a B1 mapping method that qalas-bids does not support yet (only TurboFLASH "
                "TB1TFL anat+famp and ready-made TB1map are); convert it to a relative B1 map "
                f"saved as fmap/..._TB1map.nii.gz, or {_NO_B1_HINT}", require_b1)
        elif found:
            _no_b1(f"no usable B1+ map for {target.label}: " + "; ".join(found) + f"; fix the "
                   f"names/IntendedFor, or {_NO_B1_HINT}", require_b1)
        else:
            _no_b1(f"no B1+ map found for {target.label} (looked for fmap/*_TB1TFL and "
                   f"fmap/*_TB1map of sub-{target.subject}); add the B1 map or {_NO_B1_HINT}",
                   require_b1)
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
                    reason=reason)
