"""Optional BIDS validation with ``bids-validator-deno`` (offline, when it is on PATH)."""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from ..qalas.errors import QalasInputError

LOGGER = logging.getLogger("qalas_bids")
VALIDATOR = "bids-validator-deno"
#: QALAS is not in the BIDS specification yet: issues about these files only are tolerated.
_TOLERATED_FILE_MARKERS = ("_QALAS.", "/derivatives/")


def _issue_files(issue: dict) -> list[str]:
    location = issue.get("location")
    return [location] if location else []


def validate_bids(bids_dir: Path, timeout_s: float = 600.0) -> list[str]:
    """Run the validator; raise :class:`QalasInputError` on errors, return warning codes.

    Skipped (with an info line) when ``bids-validator-deno`` is not on PATH. Errors that
    only concern QALAS files (not yet in the BIDS specification) are logged, not fatal.
    The validator ships its schema, so this works offline.
    """
    # Also look beside the interpreter: `.venv/bin/qalas-bids` runs without an activated venv.
    exe = shutil.which(VALIDATOR) or shutil.which(VALIDATOR, path=str(Path(sys.executable).parent))
    if exe is None:
        LOGGER.info("%s not found on PATH: BIDS validation skipped (pybids and qalas-bids' own "
                    "checks still run)", VALIDATOR)
        return []
    try:
        proc = subprocess.run([exe, str(bids_dir), "--format", "json", "--ignoreNiftiHeaders"],
                              capture_output=True, text=True, timeout=timeout_s, check=False)
        report = json.loads(proc.stdout)
        issues = report["issues"]["issues"]
    except (subprocess.TimeoutExpired, OSError, ValueError, KeyError, TypeError) as exc:
        LOGGER.warning("BIDS validation could not run (%s): continuing without it", exc)
        return []
    errors, tolerated, warnings = [], [], []
    for issue in issues:
        if issue.get("severity") != "error":
            warnings.append(issue.get("code", "?"))
            continue
        files = _issue_files(issue)
        if files and all(any(m in f for m in _TOLERATED_FILE_MARKERS) for f in files):
            tolerated.append(issue)
        else:
            errors.append(issue)
    if tolerated:
        LOGGER.info("BIDS validator: %d error(s) about QALAS files ignored (QALAS is not in the "
                    "BIDS specification yet)", len(tolerated))
    if warnings:
        LOGGER.info("BIDS validator: %d warning(s) (%s)", len(warnings), ", ".join(sorted(set(warnings))))
    if errors:
        lines = [f"  {e.get('code')}: {e.get('location') or ''} {e.get('issueMessage') or ''}".rstrip()
                 for e in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise QalasInputError(
            f"{bids_dir} is not a valid BIDS dataset ({len(errors)} validator error(s)):\n"
            + "\n".join(lines) + more
            + f"\nFix the dataset (run `{VALIDATOR} {bids_dir}`) or pass --skip-bids-validation."
        )
    LOGGER.info("BIDS validation passed (%s)", VALIDATOR)
    return warnings
