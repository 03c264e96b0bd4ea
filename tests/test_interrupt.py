"""Ctrl-C during a run: exit 130, one line, no traceback from the main process or workers."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from test_e2e_cli import CLI, demo_bids, small_bids  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slow


def test_ctrl_c_exits_130_with_one_line(small_bids, tmp_path):
    proc = subprocess.Popen([*CLI, str(small_bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                             "--nprocs", "2", "--skip-bids-validation", "--epochs", "300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # as in a terminal, even when the test runner ignores SIGINT (a
                            # background job of a non-interactive shell does; the app then
                            # keeps ignoring it, on purpose)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lock = tmp_path / "work" / "qalas_bids_0_1_wf" / ".sub-01.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(5)  # the fit is running in a worker
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert time.monotonic() - started < 30
    assert "Traceback" not in err and "BrokenProcessPool" not in err, err[-3000:]
    assert err.count("qalas-bids: interrupted (Ctrl-C)") == 1
