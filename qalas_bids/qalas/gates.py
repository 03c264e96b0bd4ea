"""Plausibility gates with three bands: clearly fine, tolerated (warning), clearly broken.

A gate judges one figure of the input (e.g. the fraction of the brain a B1 map covers).
Inside its ``fine`` range it is silent; inside its ``tolerated`` range but outside ``fine``
it warns, and the warning (with the figure) is recorded in every output sidecar and the
report; outside ``tolerated`` it refuses (:class:`~.errors.QalasInputError`, exit 2) with
a message that names ``--relax-gate <gate>``, the option that turns that one refusal into a
warning. The thresholds and why they are where they are: ``docs/gates.md``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Collection

from .errors import QalasInputError

#: Names of the gates a user can relax with ``--relax-gate`` (one refusal -> a warning).
RELAXABLE_GATES = ("b1-coverage", "b1-support", "b1-median", "b1-plausible", "b1-roughness", "readout-order")


@dataclass(frozen=True)
class Band:
    """Thresholds of one gate: silent inside ``fine``, warning inside ``tolerated``, refusal outside."""

    gate: str
    what: str
    fine: tuple[float, float]
    tolerated: tuple[float, float]

    def verdict(self, value: float | None) -> str:
        """``"fine"``, ``"warning"`` or ``"refuse"`` for ``value`` (None or NaN: refuse)."""
        if value is None or not math.isfinite(value):
            return "refuse"
        if self.fine[0] <= value <= self.fine[1]:
            return "fine"
        return "warning" if self.tolerated[0] <= value <= self.tolerated[1] else "refuse"

    def describe(self) -> str:
        return (f"fine in [{self.fine[0]:g}, {self.fine[1]:g}], refused outside "
                f"[{self.tolerated[0]:g}, {self.tolerated[1]:g}]")


def relax_hint(gate: str) -> str:
    """The sentence every refusal ends with."""
    return (f" If you have checked the input and it is fine, pass --relax-gate {gate} to go on "
            "with a warning instead")


def apply_gate(band: Band, value: float | None, refusal: str, *,
               relaxed: Collection[str] = ()) -> tuple[dict, str | None]:
    """Judge ``value`` with ``band``.

    Refuses (:class:`QalasInputError` with ``refusal`` and :func:`relax_hint`) unless
    ``band.gate`` is in ``relaxed``. Returns the record for the sidecars
    (``{"Value", "Band", "Fine", "Tolerated"}``) and the warning (None when fine).
    """
    verdict = band.verdict(value)
    if verdict == "refuse" and band.gate not in relaxed:
        raise QalasInputError(refusal.rstrip(".") + "." + relax_hint(band.gate))
    shown = "n/a" if value is None else f"{value:.4g}"
    warning = None
    if verdict == "warning":
        warning = f"gate {band.gate}: {band.what} is {shown} ({band.describe()}); the run goes on"
    elif verdict == "refuse":
        verdict = "refused-relaxed"
        warning = (f"gate {band.gate}: {band.what} is {shown} ({band.describe()}): refusal relaxed "
                   f"with --relax-gate {band.gate}. {refusal}")
    record = {"Value": None if value is None else round(float(value), 4), "Band": verdict,
              "Fine": list(band.fine), "Tolerated": list(band.tolerated)}
    return record, warning
