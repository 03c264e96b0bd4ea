"""Wait for the jobs that nipype's SLURMGraph plugin submitted.

SLURMGraph writes one ``submit_jobs.sh`` per graph (``<NAME>=$(sbatch ... -J <NAME> ...)``
lines), runs it and returns at once. qalas-bids must not write reports before those jobs
ran, so it reads the job names back and polls ``squeue`` for this user until none is left.
"""
from __future__ import annotations

import getpass
import logging
import re
import subprocess
import time
from pathlib import Path
from typing import Callable

LOGGER = logging.getLogger("qalas_bids")
_SUBMIT_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=\$\(sbatch\b")


def submitted_job_names(work_dir: Path, since: float) -> list[str]:
    """Job names in ``submit_jobs.sh`` files under ``work_dir`` written at or after ``since``."""
    names: list[str] = []
    for script in sorted(Path(work_dir).rglob("submit_jobs.sh")):
        if script.stat().st_mtime + 1 < since:
            continue
        for line in script.read_text().splitlines():
            match = _SUBMIT_LINE.match(line)
            if match:
                names.append(match.group(1))
    return names


def _queued_names(user: str) -> set[str]:
    proc = subprocess.run(["squeue", "-h", "-u", user, "-o", "%j"], capture_output=True, text=True,
                          timeout=60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"squeue failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return set(proc.stdout.split())


def wait_for_slurm_jobs(names: list[str], *, poll_s: float = 5.0, report_s: float = 30.0,
                        timeout_s: float | None = None,
                        queued: Callable[[], set[str]] | None = None) -> None:
    """Block until no job of ``names`` is queued or running (squeue, this user).

    Logs how many are left every ``report_s`` seconds. Raises ``TimeoutError`` after
    ``timeout_s`` (``None``: wait for ever; the jobs' own time limits apply).
    """
    if not names:
        return
    wanted = set(names)
    if queued is None:
        user = getpass.getuser()
        queued = lambda: _queued_names(user)  # noqa: E731
    start = last_report = time.monotonic()
    LOGGER.info("SLURMGraph submitted %d job(s); waiting for them to finish", len(wanted))
    while True:
        left = wanted & queued()
        if not left:
            return
        now = time.monotonic()
        if timeout_s is not None and now - start > timeout_s:
            raise TimeoutError(f"{len(left)} SLURM job(s) still queued after {timeout_s:.0f} s: "
                               + ", ".join(sorted(left)[:5]))
        if now - last_report >= report_s:
            LOGGER.info("waiting for %d of %d SLURM job(s) (%.0f s so far)", len(left), len(wanted),
                        now - start)
            last_report = now
        time.sleep(poll_s)
