"""QALAS sequence timing: a typed, validated object with vendor presets.

All times are in seconds, the flip angle in degrees (converted to radians where the
signal model needs it).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping


class TimingError(ValueError):
    """Raised when a sequence timing is physically impossible or cannot be determined."""


@dataclass(frozen=True)
class SequenceTiming:
    """Timing of one 3D-QALAS cycle (seconds; ``flip_angle`` in degrees).

    Attributes
    ----------
    tf : turbo factor (excitations per readout train)
    esp : echo spacing between excitations (s)
    t2p : T2-preparation duration (s)
    tc : delay from the end of the T2 preparation to readout 1 (s)
    gap : readout-to-readout spacing (s)
    tr_cycle : length of one full cycle (s)
    tinv : duration of the inversion block (s)
    d56 : delay from the inversion to readout 2 (s)
    trel : extra relaxation at the end of the cycle (s)
    flip_angle : readout flip angle (degrees)
    vendor : preset the values came from (``siemens``, ``ge``, ``philips`` or ``custom``)
    """

    tf: int = 128
    esp: float = 0.0058
    t2p: float = 0.1097
    tc: float = 0.0097
    gap: float = 0.9
    tr_cycle: float = 4.5
    tinv: float = 0.0128
    d56: float = 0.09355
    trel: float = 0.0
    flip_angle: float = 4.0
    vendor: str = "siemens"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def etl(self) -> float:
        """Duration of one readout train (s)."""
        return self.tf * self.esp

    @property
    def flip_angle_rad(self) -> float:
        return math.radians(self.flip_angle)

    def delays(self) -> dict[str, float]:
        """The free-recovery delays of one cycle, in seconds (all must be >= 0)."""
        return {
            "before_t2prep (gap - etl - t2p)": self.gap - self.etl - self.t2p,
            "before_inversion (gap - etl - tinv - d56)": self.gap - self.etl - self.tinv - self.d56,
            "between_readouts (gap - etl)": self.gap - self.etl,
            "end_of_cycle (tr_cycle - 5*gap + trel)": self.tr_cycle - 5 * self.gap + self.trel,
        }

    def validate(self) -> None:
        """Raise :class:`TimingError` when the timing cannot be played out."""
        if int(self.tf) != self.tf or self.tf < 1:
            raise TimingError(f"turbo factor must be a positive integer, got {self.tf!r}")
        for name in ("esp", "t2p", "gap", "tr_cycle", "flip_angle"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise TimingError(f"sequence timing '{name}' must be a positive number, got {value!r}")
        for name in ("tc", "tinv", "d56", "trel"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise TimingError(f"sequence timing '{name}' must be >= 0, got {value!r}")
        if self.tc > self.t2p:
            raise TimingError(f"tc ({self.tc} s) is longer than the T2-prep duration t2p ({self.t2p} s)")
        if self.etl >= self.gap:
            raise TimingError(
                f"echo train (tf*esp = {self.tf}*{self.esp} = {self.etl:.4f} s) is longer than the "
                f"readout spacing gap ({self.gap} s): check EchoTrainLength/echo spacing "
                "(in QALAS sidecars RepetitionTime is often the echo spacing)"
            )
        bad = {k: v for k, v in self.delays().items() if v < -1e-9}
        if bad:
            detail = ", ".join(f"{k} = {v:.4f} s" for k, v in bad.items())
            raise TimingError(f"impossible QALAS timing, negative delay(s): {detail}")
        if not 0 < self.flip_angle < 90:
            raise TimingError(f"readout flip angle must be in (0, 90) degrees, got {self.flip_angle}")

    def replace(self, **changes: Any) -> "SequenceTiming":
        """Return a copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly dictionary (seconds, degrees)."""
        return dataclasses.asdict(self)

    def differs_from(self, other: "SequenceTiming", rtol: float = 0.02) -> dict[str, tuple]:
        """Fields (excluding ``vendor``) whose values differ by more than ``rtol``."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "vendor":
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            if abs(a - b) > rtol * max(abs(a), abs(b), 1e-12):
                out[f.name] = (a, b)
        return out


#: Vendor presets from the shared physics notes (Philips/GE echo spacing is a fallback
#: guess: their real value must come from the sidecar).
PRESETS: dict[str, SequenceTiming] = {
    "siemens": SequenceTiming(),
    "philips": SequenceTiming(t2p=0.10698, tc=0.00622, tinv=0.013059, d56=0.10698,
                              vendor="philips"),
    "ge": SequenceTiming(t2p=0.0928, tc=0.00234, tinv=0.0162, d56=0.0894, vendor="ge"),
}

_VENDOR_ALIASES = {
    "siemens": "siemens", "siemens healthineers": "siemens", "siemens healthcare": "siemens",
    "ge": "ge", "ge medical systems": "ge", "ge healthcare": "ge", "general electric": "ge",
    "philips": "philips", "philips medical systems": "philips", "philips healthcare": "philips",
}


def vendor_key(manufacturer: str | None) -> str | None:
    """Map a DICOM ``Manufacturer`` string to a preset key (``None`` when unknown)."""
    if not manufacturer:
        return None
    text = manufacturer.strip().lower()
    if text in _VENDOR_ALIASES:
        return _VENDOR_ALIASES[text]
    for key in PRESETS:
        if text.startswith(key):
            return key
    return None


def get_preset(vendor: str) -> SequenceTiming:
    """Preset timing for ``vendor`` (case-insensitive; DICOM manufacturer names accepted)."""
    key = vendor_key(vendor)
    if key is None:
        raise TimingError(
            f"unknown vendor {vendor!r}: choose one of {sorted(PRESETS)} (e.g. --vendor-preset siemens)"
        )
    return PRESETS[key]


@dataclass
class TimingProvenance:
    """Where each timing value came from (``preset``, ``sidecar:<Key>`` or ``override``)."""

    timing: SequenceTiming
    sources: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def timing_from_metadata(
    metadata: Mapping[str, Any] | None,
    vendor: str | None = None,
    overrides: Mapping[str, float] | None = None,
) -> TimingProvenance:
    """Build the timing from a QALAS sidecar, a vendor preset and explicit overrides.

    Priority: ``overrides`` > values read from ``metadata`` > preset of ``vendor`` (or of
    the sidecar's ``Manufacturer``). Sidecar values are only used after checking their
    magnitude, because QALAS sidecars reuse keys: ``RepetitionTime`` is usually the echo
    spacing (used when 1-20 ms) and ``EchoTrainLength`` the turbo factor (used when 16-512).

    Raises :class:`TimingError` when the vendor is unknown and no preset was requested,
    or when the resulting timing is impossible.
    """
    meta = dict(metadata or {})
    overrides = dict(overrides or {})
    prov_warnings: list[str] = []
    key = vendor_key(vendor) if vendor else None
    if vendor and key is None:
        raise TimingError(f"unknown vendor preset {vendor!r}: choose one of {sorted(PRESETS)}")
    if key is None:
        manufacturer = meta.get("Manufacturer")
        key = vendor_key(manufacturer)
        if key is None:
            raise TimingError(
                f"cannot choose a QALAS timing preset: Manufacturer is {manufacturer!r} "
                f"(unknown or missing); pass --vendor-preset {{{','.join(sorted(PRESETS))}}}"
            )
    base = PRESETS[key]
    values: dict[str, Any] = base.as_dict()
    sources = {k: f"preset:{key}" for k in values if k != "vendor"}

    def take(field_name: str, sidecar_key: str, value: Any, lo: float, hi: float) -> None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            prov_warnings.append(f"ignored sidecar {sidecar_key}={value!r}: not a number")
            return
        if lo <= number <= hi:
            values[field_name] = int(number) if field_name == "tf" else number
            sources[field_name] = f"sidecar:{sidecar_key}"
        else:
            prov_warnings.append(
                f"ignored sidecar {sidecar_key}={value!r} for {field_name}: outside the plausible "
                f"range [{lo}, {hi}]; using {values[field_name]} ({sources[field_name]})"
            )

    for sidecar_key in ("EffectiveEchoSpacing", "EchoSpacing", "RepetitionTimeExcitation",
                        "RepetitionTime"):
        if sidecar_key in meta:
            take("esp", sidecar_key, meta[sidecar_key], 0.001, 0.02)
            if sources["esp"].startswith("sidecar"):
                break
    if "EchoTrainLength" in meta:
        take("tf", "EchoTrainLength", meta["EchoTrainLength"], 16, 512)
    if "FlipAngle" in meta:
        take("flip_angle", "FlipAngle", meta["FlipAngle"], 0.5, 30)
    for sidecar_key in ("T2PrepDuration", "T2PreparationDuration", "T2PrepTime"):
        if sidecar_key in meta:
            take("t2p", sidecar_key, meta[sidecar_key], 0.01, 0.5)
            break

    for name, value in overrides.items():
        if name not in values or name == "vendor":
            raise TimingError(f"unknown timing override {name!r}; valid: {sorted(sources)}")
        values[name] = int(value) if name == "tf" else float(value)
        sources[name] = "override"
    values["vendor"] = key if all(s.startswith("preset") for s in sources.values()) else f"{key}+custom"
    return TimingProvenance(timing=SequenceTiming(**values), sources=sources, warnings=prov_warnings)
