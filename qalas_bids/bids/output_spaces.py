"""``--output-spaces``: fMRIPrep's grammar (``SPACE[:modifier-value]...``), parsed and checked.

Spaces: ``qalas`` (the QALAS grid, today's outputs), ``T1w`` (the session's own T1w) and any
TemplateFlow template ID with ``res-`` / ``cohort-`` modifiers (combinatorial, as in
niworkflows: ``MNIPediatricAsym:cohort-1:cohort-2:res-1`` gives two references). Template IDs,
cohorts and resolutions are checked against the template descriptions in templateflow's
bundled skeleton (no network). ``res-N`` is TemplateFlow's resolution index, not mm; a
template without ``res-`` gets ``res-native``: the template resolution nearest the QALAS
voxel size, chosen when the run's grid is known.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

from ..qalas.errors import QalasInputError
from .templates import known_templates, template_description

#: Non-template spaces qalas-bids writes (no modifiers allowed).
NONSTANDARD_SPACES = ("qalas", "T1w")
#: niworkflows' other non-standard spaces: valid grammar, not produced by qalas-bids.
UNSUPPORTED_NONSTANDARD = ("T2w", "anat", "fsnative", "func", "run", "sbref", "session",
                           "individual", "dwi", "asl", "petref", "bold", "boldref")
MODIFIERS = ("res", "cohort")


@dataclass(frozen=True)
class OutputSpace:
    """One output reference: ``name`` plus TemplateFlow ``res``/``cohort`` (templates only)."""

    name: str
    res: str | None = None
    cohort: str | None = None

    @property
    def is_template(self) -> bool:
        return self.name not in NONSTANDARD_SPACES

    @property
    def transform_label(self) -> str:
        """Label in ``from-``/``to-`` of transform files (sMRIPrep: cohort joined with ``+``)."""
        return f"{self.name}+{self.cohort}" if self.cohort else self.name

    def __str__(self) -> str:
        mods = [f"cohort-{self.cohort}"] * bool(self.cohort) + [f"res-{self.res}"] * bool(self.res)
        return ":".join([self.name, *mods])


def _template_resolutions(template: str, cohort: str | None) -> dict:
    desc = template_description(template)
    if cohort is not None:
        return desc.get("cohort", {}).get(cohort, {}).get("res", desc.get("res", {}))
    return desc.get("res", {})


def _check_template(template: str, cohorts: list[str], resolutions: list[str]) -> None:
    desc = template_description(template)
    known_cohorts = sorted(desc.get("cohort", {}))
    if known_cohorts and not cohorts:
        raise QalasInputError(f"output space {template} needs a cohort, e.g. {template}:cohort-"
                              f"{known_cohorts[0]} (cohorts: {', '.join(known_cohorts)})")
    if cohorts and not known_cohorts:
        raise QalasInputError(f"output space {template} has no cohorts (remove :cohort-)")
    for cohort in cohorts:
        if cohort not in known_cohorts:
            raise QalasInputError(f"{template} has no cohort {cohort!r} (cohorts: {', '.join(known_cohorts)})")
        for res in resolutions:
            if res != "native" and _resolution_key(res, _template_resolutions(template, cohort)) is None:
                raise QalasInputError(f"{template} (cohort {cohort}) has no res-{res}")
    if not cohorts:
        for res in resolutions:
            if res != "native" and _resolution_key(res, _template_resolutions(template, None)) is None:
                known = ", ".join(str(int(k)) for k in sorted(_template_resolutions(template, None))) or "none"
                raise QalasInputError(f"{template} has no res-{res} (TemplateFlow resolution "
                                      f"indices: {known}; res- is an index, not mm)")


def _resolution_key(res: str, table: dict) -> str | None:
    """Key of ``table`` (``"01"``, ``"1"``...) for resolution index ``res``."""
    try:
        wanted = int(res)
    except ValueError:
        return None
    return next((key for key in table if key.isdigit() and int(key) == wanted), None)


def parse_output_space(token: str) -> list[OutputSpace]:
    """All references of one token (modifiers are combinatorial). Raises QalasInputError."""
    name, *mods = token.split(":")
    if not name:
        raise QalasInputError(f"empty output space in {token!r}")
    if name in UNSUPPORTED_NONSTANDARD:
        raise QalasInputError(f"output space {name!r} is not produced by qalas-bids "
                              f"(choose among {', '.join(NONSTANDARD_SPACES)} or a TemplateFlow template)")
    if name in NONSTANDARD_SPACES:
        if mods:
            raise QalasInputError(f"{token!r}: modifiers are not allowed for nonstandard spaces")
        return [OutputSpace(name)]
    templates = known_templates()
    if name not in templates:
        raise QalasInputError(
            f"unknown output space {name!r}: choose qalas, T1w or a TemplateFlow template ID "
            f"(e.g. MNI152NLin2009cAsym:res-2; known templates: {', '.join(templates)})")
    values: dict[str, list[str]] = {key: [] for key in MODIFIERS}
    for mod in mods:
        key, sep, value = mod.partition("-")
        if not sep or not value or key not in MODIFIERS:
            raise QalasInputError(f"{token!r}: modifier {mod!r} is not one of res-<index> or cohort-<label>")
        if value not in values[key]:
            values[key].append(value)
    resolutions = values["res"] or ["native"]
    _check_template(name, values["cohort"], resolutions)
    return [OutputSpace(name, res, cohort)
            for cohort, res in itertools.product(values["cohort"] or [None], resolutions)]


def parse_output_spaces(tokens: list[str] | tuple[str, ...]) -> tuple[OutputSpace, ...]:
    """Every reference of ``--output-spaces`` in order, duplicates dropped."""
    spaces = [space for token in tokens for space in parse_output_space(token)]
    return tuple(dict.fromkeys(spaces))


def resolve_native_resolution(space: OutputSpace, voxel_mm: float) -> OutputSpace:
    """``res-native`` -> the template resolution index whose voxel size is nearest ``voxel_mm``."""
    if not space.is_template or space.res != "native":
        return space
    table = _template_resolutions(space.name, space.cohort)
    best = min(table, key=lambda key: abs(float(table[key]["zooms"][0]) - voxel_mm))
    return OutputSpace(space.name, str(int(best)), space.cohort)
