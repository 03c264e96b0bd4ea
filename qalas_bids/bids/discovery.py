"""Find the QALAS runs of a BIDS dataset (one fit per run) and pair each with its B1 map.

Query choice: pybids 0.22's ``bids`` config indexes the non-standard ``QALAS`` suffix and
the ``inv`` entity once the layout is built with ``validate=False`` (checked: the
entity pattern is ``inv-([0-9]+)``, returned as a string), so we query pybids directly and
group the files ourselves: every set of QALAS files that share all entities except ``inv``
(and the extension) is one run. Accepted layouts:

- five 3D volumes ``..._inv-<i>_QALAS.nii[.gz]`` with five consecutive indices (0-4 or 1-5),
  ordered by index (= readout order);
- one 4D file ``..._QALAS.nii[.gz]`` with five volumes in readout order.

Several runs/sessions give several :class:`QalasRun`. Every problem raises
:class:`QalasInputError` naming the files and the fix.
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..qalas.errors import QalasInputError
from ..qalas.physics.timing import TimingError, TimingProvenance, timing_from_metadata
from .b1_pairing import (B1Source, PairingTarget, build_candidates, pair_b1,
                         parse_acquisition_time, scans_acquisition_times)
from .inputs_check import N_CONTRASTS, check_qalas_headers, load_nifti_header
from .layout import load_bids_filters, make_layout, validate_bids_filters

LOGGER = logging.getLogger("qalas_bids.bids")
IO_SPEC_PATH = Path(__file__).resolve().parent.parent / "data" / "io_spec.json"
#: Entities copied from the QALAS input to the output names.
OUTPUT_ENTITIES = ("subject", "session", "acquisition", "reconstruction", "run")


def load_io_spec() -> dict[str, Any]:
    """The app's pybids queries and output path patterns (``qalas_bids/data/io_spec.json``)."""
    return json.loads(IO_SPEC_PATH.read_text())


@dataclass(frozen=True)
class QalasRun:
    """One QALAS acquisition to fit.

    subject, session, run, acquisition : BIDS labels (session/run/acquisition may be None)
    qalas_files : five 3D volumes in readout order, or one 4D file (absolute paths)
    metadata : sidecar of the first volume plus ``InversionTimes`` (one entry per contrast,
        None where a sidecar lacks ``InversionTime``)
    b1 : the paired B1 map (None only when B1 was not required and none was found)
    entities : entities for the output names (subject/session/acquisition/reconstruction/run
        that are set; ``inv`` dropped)
    timing : sequence timing resolved at discovery (None when ``check_timing=False``)
    warnings : warnings of the checks before the workflow, recorded in every sidecar
    prepared : the checked inputs written for the workflow
        (:class:`~qalas_bids.bids.inputs_check.PreparedInputs`; None before the checks)
    spaces : the T1w, derivatives and template files of its output spaces
        (:class:`~qalas_bids.bids.space_inputs.SpaceInputs`; None: QALAS space only)
    """

    subject: str
    session: str | None
    run: str | None
    acquisition: str | None
    qalas_files: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict)
    b1: B1Source | None = None
    entities: dict[str, str] = field(default_factory=dict)
    timing: TimingProvenance | None = None
    warnings: tuple[str, ...] = ()
    prepared: Any = None
    spaces: Any = None  # SpaceInputs (qalas_bids.bids.space_inputs) when T1w/template spaces are asked

    @property
    def label(self) -> str:
        """Short name for logs, e.g. ``sub-01_ses-01_run-1``."""
        keys = (("subject", "sub"), ("session", "ses"), ("acquisition", "acq"),
                ("reconstruction", "rec"), ("run", "run"))
        return "_".join(f"{short}-{self.entities[k]}" for k, short in keys if k in self.entities)

    @property
    def is_4d(self) -> bool:
        return len(self.qalas_files) == 1


# --------------------------------------------------------------------------- timing
def resolve_timing(
    run: QalasRun,
    vendor_preset: str | None = None,
    overrides: Mapping[str, float] | None = None,
) -> TimingProvenance:
    """Sequence timing of ``run`` from its sidecar, a vendor preset and overrides.

    Wraps :func:`qalas_bids.qalas.physics.timing.timing_from_metadata`; a :class:`TimingError`
    becomes a :class:`QalasInputError` naming the sidecar and the options that fix it.
    """
    try:
        prov = timing_from_metadata(run.metadata, vendor=vendor_preset, overrides=overrides)
    except TimingError as exc:
        raise QalasInputError(
            f"sequence timing of {run.label} (sidecar of {Path(run.qalas_files[0]).name}): {exc}. "
            "Fix the sidecar, or choose the timing with --vendor-preset {siemens,ge,philips} "
            "(it sets every timing value the sidecar lacks)"
        ) from exc
    for warning in prov.warnings:
        LOGGER.warning("%s: %s", run.label, warning)
    for warning in missing_key_warnings(run, prov):
        LOGGER.warning("%s: %s", run.label, warning)
    return prov


def missing_key_warnings(run: QalasRun, prov: TimingProvenance) -> list[str]:
    """Warnings for QALAS sidecar keys whose value had to come from the vendor preset."""
    out = []
    for key, field_name in (("FlipAngle", "flip_angle"), ("EchoTrainLength", "tf")):
        if run.metadata.get(key) is None and not prov.sources[field_name].startswith(("sidecar", "override")):
            out.append(f"the QALAS sidecar has no {key}; using {field_name} = "
                       f"{getattr(prov.timing, field_name)} from {prov.sources[field_name]}")
    return out


def format_timing(prov: TimingProvenance) -> str:
    """One line per timing value with its source, for logs and boilerplate."""
    timing = prov.timing.as_dict()
    units = {"tf": "", "flip_angle": " deg", "vendor": ""}
    lines = [f"vendor preset: {timing['vendor']}"]
    for name, value in timing.items():
        if name == "vendor":
            continue
        lines.append(f"  {name} = {value:g}{units.get(name, ' s')}  ({prov.sources.get(name, '?')})")
    lines += [f"  warning: {w}" for w in prov.warnings]
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers
def _strip(labels: str | Iterable[str] | None, prefix: str) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, str):
        labels = [labels]
    out = [lab[len(prefix):] if lab.startswith(prefix) else lab for lab in labels]
    return out or None


def _entity_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _group_key(entities: Mapping[str, Any]) -> tuple:
    skip = {"inv", "extension", "suffix", "datatype"}
    return tuple(sorted((k, str(v)) for k, v in entities.items() if k not in skip))


def _run_files(group: Sequence[Any]) -> list[Any]:
    """Order one run's QALAS files (readout order) and check the volume count."""
    with_inv = [bf for bf in group if bf.get_entities().get("inv") is not None]
    without = [bf for bf in group if bf.get_entities().get("inv") is None]
    names = ", ".join(sorted(Path(bf.path).name for bf in group))
    if with_inv and without:
        raise QalasInputError(
            f"QALAS files mix split (inv-<n>) and 4D naming: {names}; keep one form "
            "(exclude the other with --bids-filter-file)")
    if without:
        if len(without) > 1:
            raise QalasInputError(
                f"several 4D QALAS files for one run: {names}; remove the duplicate "
                "(e.g. both .nii and .nii.gz)")
        return without
    by_index: dict[int, list[Any]] = defaultdict(list)
    for bf in with_inv:
        by_index[int(bf.get_entities()["inv"])].append(bf)
    dupes = [bfs for bfs in by_index.values() if len(bfs) > 1]
    if dupes:
        raise QalasInputError(
            "duplicate QALAS volumes: " + ", ".join(Path(bf.path).name for bf in dupes[0])
            + "; remove one (e.g. both .nii and .nii.gz)")
    indices = sorted(by_index)
    if len(indices) != N_CONTRASTS:
        raise QalasInputError(
            f"found {len(indices)} QALAS volumes ({names}) but 3D-QALAS has {N_CONTRASTS} "
            "contrasts (inv-0..inv-4): add the missing volume(s) or exclude this run with "
            "--bids-filter-file")
    if indices != list(range(indices[0], indices[0] + N_CONTRASTS)):
        raise QalasInputError(
            f"QALAS volume indices {indices} ({names}) are not consecutive: the inv-<n> index "
            "must give the readout order (0-4 or 1-5); rename the files")
    return [by_index[i][0] for i in indices]


#: Sidecar keys the five volumes of one acquisition must share (the first one is used).
SHARED_KEYS = ("Manufacturer", "FlipAngle", "RepetitionTime", "EchoTime", "EchoTrainLength",
               "T2PrepDuration", "MagneticFieldStrength")


def sidecar_disagreements(metas: Sequence[Mapping[str, Any]], names: Sequence[str]) -> list[str]:
    """Warnings for :data:`SHARED_KEYS` whose value differs between the volumes' sidecars."""
    out = []
    for key in SHARED_KEYS:
        values = [m.get(key) for m in metas]
        if len({json.dumps(v, sort_keys=True) for v in values}) > 1:
            detail = ", ".join(f"{n}: {v!r}" for n, v in zip(names, values))
            out.append(f"the QALAS sidecars disagree on {key} ({detail}); the first volume's value is used")
    return out


def _inversion_times(metas: Sequence[Mapping[str, Any]]) -> list:
    if len(metas) == 1:
        value = metas[0].get("InversionTime")
        if isinstance(value, (list, tuple)):
            return list(value)
        return [value] + [None] * (N_CONTRASTS - 1)
    return [m.get("InversionTime") for m in metas]


# --------------------------------------------------------------------------- main entry
def collect_qalas_runs(
    bids_dir: str | Path,
    participant_labels: str | Sequence[str] | None = None,
    session_labels: str | Sequence[str] | None = None,
    bids_filters: Mapping[str, Any] | str | Path | None = None,
    require_b1: bool = True,
    layout: Any = None,
    *,
    vendor_preset: str | None = None,
    timing_overrides: Mapping[str, float] | None = None,
    check_timing: bool = True,
    check_headers: bool = True,
    work_dir: str | Path | None = None,
) -> list[QalasRun]:
    """All QALAS runs of the selected participants/sessions, each paired with its B1 map.

    Parameters
    ----------
    bids_dir : raw BIDS dataset
    participant_labels, session_labels : labels with or without ``sub-``/``ses-``
    bids_filters : mapping (or path to a JSON filter file) with keys ``qalas`` and ``b1``
        (see :mod:`qalas_bids.bids.layout`)
    require_b1 : raise when a run has no usable B1 map (False: pair when one exists,
        else ``b1=None`` with a warning - the CLI's ``--no-b1``)
    layout : an existing :class:`bids.BIDSLayout` (built with :func:`make_layout` if None)
    vendor_preset, timing_overrides : passed to :func:`resolve_timing` when
        ``check_timing`` (the CLI's ``--vendor-preset`` and timing overrides)
    check_headers : read the QALAS headers now (count, grid, readability)
    work_dir : where to keep the pybids index (in memory if None)
    """
    if layout is None:
        layout = make_layout(bids_dir, work_dir=work_dir)
    root = Path(layout.root)
    if isinstance(bids_filters, (str, Path)):
        filters = load_bids_filters(bids_filters)
    else:
        filters = validate_bids_filters(bids_filters or {})
    spec = load_io_spec()["queries"]
    subjects = _strip(participant_labels, "sub-")
    sessions = _strip(session_labels, "ses-")

    all_files, files, subjects = _select_qalas_files(layout, root, spec, filters, subjects, sessions)

    groups: dict[tuple, list[Any]] = defaultdict(list)
    for bf in files:
        groups[_group_key(bf.get_entities())].append(bf)

    all_rel = {Path(bf.path).relative_to(root).as_posix() for bf in all_files}
    b1_cache: dict[str, tuple] = {}

    def b1_inputs_of(subject: str) -> tuple:
        """The participant's B1 candidates (collected once per participant)."""
        if subject not in b1_cache:
            b1_cache[subject] = _b1_inputs(layout, root, subject, spec, filters.get("b1", {}))
        return b1_cache[subject]

    runs: list[QalasRun] = []
    names_seen: dict[tuple, str] = {}
    for key in sorted(groups):
        run = _build_run(_run_files(groups[key]), root, names_seen, b1_inputs_of, all_rel,
                         require_b1=require_b1, check_headers=check_headers)
        if check_timing:
            run = _with_timing(run, vendor_preset, timing_overrides)
        LOGGER.info("QALAS run %s: %d file(s), B1: %s", run.label, len(run.qalas_files),
                    run.b1.reason if run.b1 else "none (B1 = 1)")
        runs.append(run)
    return sorted(runs, key=lambda r: tuple(
        (r.entities.get(k) is not None, _natural(r.entities.get(k, ""))) for k in OUTPUT_ENTITIES))


def _select_qalas_files(layout: Any, root: Path, spec: Mapping[str, Any], filters: Mapping[str, Any],
                        subjects: list[str], sessions: list[str]) -> tuple[list[Any], list[Any], list[str]]:
    """(every QALAS file, the selected participants'/sessions' files, the participants).

    Raises :class:`QalasInputError` when nothing is selected; warns about requested
    participants without QALAS images.
    """
    query: dict[str, Any] = dict(spec["qalas"], **filters.get("qalas", {}))
    all_files = layout.get(**query)
    if not all_files:
        raise QalasInputError(
            f"no QALAS images in {root} (looked for sub-*/[ses-*/]anat/*_QALAS.nii[.gz]"
            + (f" with filters {filters['qalas']}" if filters.get("qalas") else "") + ")")
    have = sorted({bf.get_entities()["subject"] for bf in all_files})
    if subjects:
        missing = [s for s in subjects if s not in have]
        if len(missing) == len(subjects):
            raise QalasInputError(
                f"no QALAS images for participant(s) {missing} in {root}; participants with "
                f"QALAS: {have}")
        for s in missing:
            LOGGER.warning("participant %s has no QALAS images: skipped", s)
        subjects = [s for s in subjects if s in have]
    else:
        subjects = have
    files = [bf for bf in all_files if bf.get_entities()["subject"] in subjects]
    if sessions:
        files = [bf for bf in files if bf.get_entities().get("session") in sessions]
        if not files:
            raise QalasInputError(
                f"no QALAS images in session(s) {sessions} for participant(s) {subjects}; "
                "check --session-label")
    return all_files, files, subjects


def _build_run(ordered: list[Any], root: Path, names_seen: dict[tuple, str],
               b1_inputs_of: Callable[[str], tuple], all_rel: set[str], *, require_b1: bool,
               check_headers: bool) -> QalasRun:
    """One :class:`QalasRun` from its files in readout order: output names (unique across
    runs, recorded in ``names_seen``), sidecars, headers and the paired B1 map."""
    ents = ordered[0].get_entities()
    subject = str(ents["subject"])
    out_entities = {k: str(ents[k]) for k in OUTPUT_ENTITIES if ents.get(k) is not None}
    name_key = tuple(sorted(out_entities.items()))
    first = Path(ordered[0].path).name
    if name_key in names_seen:
        raise QalasInputError(
            f"two QALAS runs would give the same output names: {names_seen[name_key]} and "
            f"{first} differ only in entities dropped from outputs; select one with "
            "--bids-filter-file")
    names_seen[name_key] = first
    metas = [dict(bf.get_metadata()) for bf in ordered]
    disagreeing = sidecar_disagreements(metas, [Path(bf.path).name for bf in ordered])
    metadata = dict(metas[0])
    metadata["InversionTimes"] = _inversion_times(metas)
    qalas_files = tuple(str(bf.path) for bf in ordered)
    if check_headers:
        check_qalas_headers(qalas_files)

    rel_files = tuple(Path(p).relative_to(root).as_posix() for p in qalas_files)
    acq_time = parse_acquisition_time(metadata)
    if acq_time is None:
        acq_time = scans_acquisition_times(root, subject, ents.get("session")).get(rel_files[0])
    target = PairingTarget(subject=subject, session=_entity_str(ents.get("session")),
                           run=_entity_str(ents.get("run")), rel_files=rel_files,
                           metadata=metadata, acq_time=acq_time)
    candidates, unsupported, problems = b1_inputs_of(subject)
    b1 = pair_b1(target, candidates, all_qalas=all_rel, unsupported=unsupported,
                 problems=problems, require_b1=require_b1)
    if b1 is not None and check_headers:
        _check_b1_files(b1)
    run = QalasRun(
        subject=subject, session=target.session, run=target.run,
        acquisition=_entity_str(ents.get("acquisition")), qalas_files=qalas_files,
        metadata=metadata, b1=b1, entities=out_entities, warnings=tuple(disagreeing))
    for warning in disagreeing:
        LOGGER.warning("%s: %s", run.label, warning)
    return run


def _natural(label: str) -> tuple:
    """Sort key putting run-2 before run-10."""
    return (0, int(label), label) if label.isdigit() else (1, 0, label)


def _with_timing(run: QalasRun, vendor_preset: str | None,
                 overrides: Mapping[str, float] | None) -> QalasRun:
    from dataclasses import replace

    prov = resolve_timing(run, vendor_preset=vendor_preset, overrides=overrides)
    LOGGER.info("sequence timing for %s:\n%s", run.label, format_timing(prov))
    return replace(run, timing=prov, warnings=run.warnings + tuple(missing_key_warnings(run, prov)))


def _check_b1_files(b1: B1Source) -> None:
    """Read the B1 headers now so an unreadable file fails before processing."""
    for path in b1.files.values():
        img = load_nifti_header(path)
        if img.ndim == 4 and img.shape[3] != 1 or img.ndim not in (3, 4):
            raise QalasInputError(f"B1 image {path} has shape {img.shape}: a 3D map is expected")
    if b1.kind == "tfl" and b1.metadata.get("FlipAngle") is None:
        LOGGER.warning("the famp sidecar of %s has no FlipAngle: relative B1 needs the "
                       "nominal flip angle of the B1 map (--b1-flip-angle)",
                       Path(b1.files["famp"]).name)


def _b1_inputs(layout: Any, root: Path, subject: str, spec: Mapping[str, Any],
               b1_filters: Mapping[str, Any]) -> tuple[list, list[str], list[str]]:
    files = {kind: layout.get(subject=subject, **dict(spec[f"b1_{query}"], **b1_filters))
             for kind, query in (("tfl", "tfl"), ("rfm", "rfm"), ("afi", "afi"), ("dam", "dam"),
                                 ("tb1map", "map"))}
    other = layout.get(subject=subject, **dict(spec["b1_unsupported"], **b1_filters))
    candidates, problems = build_candidates(files, root, subject)
    unsupported = [str(Path(bf.path).relative_to(root)) for bf in other]
    return candidates, unsupported, problems
