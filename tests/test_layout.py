"""The package layout's import rules (docs/developer/layout.md): data flows one way.

Every ``import`` and ``from ... import`` in ``qalas_bids/`` (function-level ones too) is
resolved to an absolute module name and checked against the rules of the layer the file
belongs to. The checker is tested on small sources that break each rule, so a rule that
matches nothing cannot pass silently.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qalas_bids"

#: Layer -> the qalas_bids layers it may import (itself always; ``qalas_bids`` root, for
#: ``__version__``, always). Anything not listed is an arrow up, or sideways where it must not be.
ALLOWED_LAYERS: dict[str, set[str]] = {
    "qalas": set(),
    "config": {"qalas"},
    "utils": {"qalas"},
    "bids": {"qalas", "utils"},
    "demo": {"qalas", "utils", "bids"},
    "interfaces": {"qalas", "utils", "bids"},
    "workflows": {"qalas", "utils", "bids", "interfaces", "config"},
    "reports": {"qalas", "utils", "bids"},
    "execution": {"qalas", "utils", "bids", "interfaces", "workflows", "reports", "config"},
    "cli": {"qalas", "utils", "bids", "interfaces", "workflows", "reports", "config", "execution", "demo"},
    "testing": {"qalas", "utils", "bids", "reports", "demo"},
}
#: Third-party packages a layer must not import (the core is pure numpy/scipy/torch).
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "qalas": {"nipype", "bids", "templateflow", "niworkflows", "pandas", "matplotlib", "filelock"},
    "utils": {"nipype", "bids"},
    "bids": {"nipype"},
    "demo": {"nipype"},
}


def layer_of(module: str) -> str | None:
    """``qalas_bids.<layer>...`` -> layer (``None`` for the package root itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "qalas_bids" else None


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``source`` (relative ones resolved)."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # ``from qalas_bids import testing`` imports a layer by name
            if target == "qalas_bids":
                found += [(node.lineno, f"qalas_bids.{alias.name}") for alias in node.names
                          if alias.name != "__version__"]
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """Import-rule violations of one module's source (empty: it follows the rules)."""
    layer = layer_of(module)
    if layer is None or layer not in ALLOWED_LAYERS:
        return []
    allowed = ALLOWED_LAYERS[layer] | {layer}
    found = []
    for line, target in imported_modules(source, module, is_package):
        top = target.split(".")[0]
        target_layer = layer_of(target)
        if top == "qalas_bids" and target_layer is not None and target_layer not in allowed:
            found.append(f"{module}:{line} imports {target} ({layer} may not import {target_layer})")
        elif top in FORBIDDEN_THIRD_PARTY.get(layer, ()):
            found.append(f"{module}:{line} imports {target} (no {top} in {layer})")
    return found


def tree_violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        module, is_package = module_name(path, root)
        found += violations(path.read_text(), module, is_package)
    return found


def test_every_module_belongs_to_a_known_layer():
    layers = {layer_of(module_name(p, PACKAGE)[0]) for p in PACKAGE.rglob("*.py")}
    assert layers - {None} <= set(ALLOWED_LAYERS), layers - set(ALLOWED_LAYERS)


def test_the_package_follows_the_import_rules():
    assert tree_violations() == []


@pytest.mark.parametrize("module, source", [
    # the arrows up that the layout issue found before the move
    ("qalas_bids.qalas.b1map", "from ..utils.nifti_io import read_image"),
    ("qalas_bids.qalas.demo_dataset", "from ..utils.nifti_io import write_image"),
    ("qalas_bids.qalas.fitting.ssl", "def f():\n    from ...bids import derivatives\n"),
    ("qalas_bids.qalas.tissue.classes", "import nipype.pipeline.engine as pe"),
    ("qalas_bids.qalas.physics.timing", "from bids import BIDSLayout"),
    ("qalas_bids.reports.fake", "from ..workflows.base import init_qalas_bids_wf"),
    ("qalas_bids.bids.discovery", "from ..interfaces.fit import FitQalas"),
    ("qalas_bids.workflows.fit", "from ..execution.prework import prepare_inputs"),
    ("qalas_bids.execution.participant", "from ..cli.parser import parse_args"),
    ("qalas_bids.reports.group", "from ..testing.fake_derivatives import write_fake_derivatives"),
    ("qalas_bids.utils.images", "from qalas_bids import bids"),
])
def test_the_checker_finds_arrows_up(module, source):
    assert violations(source, module), f"{module}: {source!r} should break a rule"


@pytest.mark.parametrize("module, source", [
    ("qalas_bids.qalas.fitting.pretrained", "from ... import __version__"),
    ("qalas_bids.qalas.fitting.ssl", "from ..physics.timing import SequenceTiming\nimport torch"),
    ("qalas_bids.bids.inputs_check", "from ..qalas.b1.prepare import b1_in_qalas_space"),
    ("qalas_bids.cli.run", "from ..execution.participant import run_participant"),
])
def test_the_checker_accepts_arrows_down(module, source):
    assert violations(source, module) == []
