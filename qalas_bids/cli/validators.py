"""Small argparse types for the qalas-bids command line (errors become exit code 2).

Each type raises :class:`argparse.ArgumentTypeError`, which argparse reports as
``qalas-bids: error: argument --x: <message>`` and exit status 2, without a traceback.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

_LABEL = re.compile(r"^[a-zA-Z0-9]+$")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def existing_dir(value: str) -> Path:
    """An existing directory, returned as an absolute path."""
    path = Path(value).expanduser()
    if not path.exists():
        raise argparse.ArgumentTypeError(f"path does not exist: {value}")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"not a directory: {value}")
    return path.resolve()


def existing_file(value: str) -> Path:
    """An existing regular file, returned as an absolute path."""
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file does not exist: {value}")
    return path.resolve()


def output_path(value: str) -> Path:
    """A directory that may not exist yet (absolute path)."""
    return Path(value).expanduser().resolve()


def _int_at_least(value: str, minimum: int, wording: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wording}, got {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"expected {wording}, got {value!r}")
    return number


def positive_int(value: str) -> int:
    """An integer >= 1."""
    return _int_at_least(value, 1, "a positive integer")


def non_negative_int(value: str) -> int:
    """An integer >= 0."""
    return _int_at_least(value, 0, "an integer >= 0")


def positive_float(value: str) -> float:
    """A number > 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def flip_angle_deg(value: str) -> float:
    """A nominal B1-map flip angle in degrees, in (0, 180)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a flip angle in degrees, got {value!r}") from None
    if not 0 < number < 180:
        raise argparse.ArgumentTypeError(f"flip angle must be in (0, 180) degrees, got {value}")
    return number


def fraction(value: str) -> float:
    """A fraction in [0, 1] (``0.95``; ``95%`` is accepted too)."""
    text = value.strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}") from None
    if not 0 <= number <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value!r}")
    return number


def memory_gb(value: str) -> float:
    """Memory with optional unit (``16``, ``16G``, ``16GB``, ``16000M``, ``2T``) -> gigabytes."""
    match = _MEMORY.match(value)
    if not match:
        raise argparse.ArgumentTypeError(f"cannot read memory amount {value!r} (e.g. 16G, 8000MB)")
    number, unit = float(match.group(1)), match.group(2).lower()
    scale = {"": 1.0, "k": 1e-6, "m": 1e-3, "g": 1.0, "t": 1e3}[unit]
    if number * scale <= 0:
        raise argparse.ArgumentTypeError(f"memory must be positive, got {value!r}")
    return number * scale


def bids_label(prefix: str):
    """Return a type that strips ``prefix-`` (``sub-01`` -> ``01``) and checks the label."""

    def _label(value: str) -> str:
        label = value.strip()
        if label.startswith(f"{prefix}-"):
            label = label[len(prefix) + 1:]
        if not _LABEL.match(label):
            raise argparse.ArgumentTypeError(
                f"invalid {prefix} label {value!r}: BIDS labels are alphanumeric (e.g. {prefix}-01 or 01)"
            )
        return label

    _label.__name__ = f"{prefix}_label"
    return _label


def name_list(choices: tuple[str, ...]):
    """Return a type accepting one name or a comma-separated list of ``choices`` (a list)."""

    def _names(value: str) -> list[str]:
        names = [item.strip() for item in value.split(",") if item.strip()]
        unknown = [n for n in names if n not in choices]
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"invalid choice(s) {', '.join(unknown) or repr(value)}: choose from {', '.join(choices)}")
        return names

    _names.__name__ = "name_list"
    return _names


def device_spec(value: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (availability is checked later)."""
    spec = value.strip().lower()
    if not _DEVICE.match(spec):
        raise argparse.ArgumentTypeError(f"invalid device {value!r}: use auto, cpu, cuda or cuda:N")
    return spec


def _parse_file(value: str, loads: Any, error: type[Exception], kind: str) -> Any:
    """Read the existing file ``value`` and parse it with ``loads`` (``error`` -> usage error)."""
    try:
        return loads(existing_file(value).read_text())
    except error as exc:
        raise argparse.ArgumentTypeError(f"{value} is not valid {kind}: {exc}") from None


def json_file(value: str) -> dict[str, Any]:
    """A JSON file holding an object (e.g. ``--bids-filter-file``), returned parsed."""
    data = _parse_file(value, json.loads, json.JSONDecodeError, "JSON")
    if not isinstance(data, dict):
        raise argparse.ArgumentTypeError(f"{value} must hold a JSON object")
    return data


def bids_filter_file(value: str) -> dict[str, Any]:
    """fMRIPrep-style filter file: ``{"qalas": {...}, "b1": {...}}`` of pybids entities.

    Checked at parse time by the same validator discovery uses (exit 2 on a bad file)."""
    from ..bids.layout import validate_bids_filters
    from ..qalas.errors import QalasInputError

    data = json_file(value)
    try:
        validate_bids_filters(data, source=value)
    except QalasInputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return data


def plugin_file(value: str) -> dict[str, Any]:
    """Nipype plugin YAML with ``plugin`` (name) and optional ``plugin_args`` (mapping)."""
    import yaml  # nipype depends on PyYAML

    data = _parse_file(value, yaml.safe_load, yaml.YAMLError, "YAML")
    if not isinstance(data, dict) or not isinstance(data.get("plugin"), str):
        raise argparse.ArgumentTypeError(
            f"{value} must be a YAML mapping with a 'plugin' name (e.g. plugin: SLURMGraph) "
            "and optional 'plugin_args'"
        )
    if not isinstance(data.get("plugin_args") or {}, dict):
        raise argparse.ArgumentTypeError(f"{value}: 'plugin_args' must be a mapping")
    return {"plugin": data["plugin"], "plugin_args": dict(data.get("plugin_args") or {})}


def derivatives_spec(value: str) -> tuple[str, Path]:
    """``NAME=PATH`` (fMRIPrep >= 23.2) or a bare ``PATH`` (named after its folder)."""
    name, sep, path = value.partition("=")
    if not sep:
        name, path = Path(value).expanduser().name or "derivatives", value
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise argparse.ArgumentTypeError(f"derivatives name {name!r}: letters, digits, '.', '_' or '-' only")
    return name, existing_dir(path)
