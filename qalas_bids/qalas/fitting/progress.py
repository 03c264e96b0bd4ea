"""Progress lines on long work: phase, step, loss, elapsed time and ETA.

The fitting loops only *record* where they are (:func:`phase`, :func:`step`); a
:class:`ProgressReporter` started around the work prints that state every ``interval``
seconds from a background thread, so a line appears on schedule even while one long torch
call runs. Without an active reporter the calls are no-ops, so the core stays quiet when
used as a library. Lines go to ``stderr`` (a SLURM job's log, MultiProc workers' inherited
stream) and are flushed at once.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from contextvars import ContextVar
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 5.0
#: Environment variable that changes the interval (seconds; used by tests and impatient users).
INTERVAL_ENV = "QALAS_BIDS_PROGRESS_INTERVAL"
_ACTIVE: ContextVar["ProgressReporter | None"] = ContextVar("qalas_progress", default=None)


def _fmt_seconds(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class ProgressReporter:
    """Prints ``label | phase step/total (unit) | extra | elapsed | ETA`` every ``interval`` s.

    Use as a context manager; inside it :func:`phase` and :func:`step` update the state.
    The ETA is that of the current phase, from its mean rate so far.
    """

    def __init__(self, label: str = "", *, interval: float = DEFAULT_INTERVAL_S,
                 stream: TextIO | None = None, enabled: bool = True) -> None:
        self.label = label
        self.interval = float(interval)
        self.stream = stream
        self.enabled = enabled
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._token = None
        self._start = time.perf_counter()
        self._phase = "preparing"
        self._phase_start = self._start
        self._done = 0.0
        self._total: float | None = None
        self._unit = ""
        self._extra: dict[str, Any] = {}
        self.lines_printed = 0

    # -- state updates (called from the computing thread)
    def set_phase(self, name: str, total: float | None = None, unit: str = "") -> None:
        with self._lock:
            self._phase, self._total, self._unit = name, total, unit
            self._done, self._extra = 0.0, {}
            self._phase_start = time.perf_counter()

    def set_step(self, done: float, total: float | None = None, **extra: Any) -> None:
        with self._lock:
            self._done = float(done)
            if total is not None:
                self._total = total
            self._extra.update(extra)

    # -- output
    def line(self) -> str:
        with self._lock:
            now = time.perf_counter()
            parts = [self.label] if self.label else []
            text = self._phase
            if self._total:
                unit = f" {self._unit}" if self._unit else ""
                text += f"{unit} {self._done:.0f}/{self._total:.0f}"
            parts.append(text)
            for key, value in self._extra.items():
                parts.append(f"{key} {value:.3e}" if isinstance(value, float) else f"{key} {value}")
            parts.append(f"elapsed {_fmt_seconds(now - self._start)}")
            if self._total and self._done > 0:
                rate = (now - self._phase_start) / self._done
                parts.append(f"ETA {_fmt_seconds(rate * (self._total - self._done))}")
            else:
                parts.append("ETA -")
        return "qalas-bids progress: " + " | ".join(parts)

    def emit(self) -> None:
        if not self.enabled:
            return
        stream = self.stream or sys.stderr
        try:
            stream.write(self.line() + "\n")
            stream.flush()
            self.lines_printed += 1
        except (OSError, ValueError):  # closed stream at shutdown: progress is best effort
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.emit()

    def __enter__(self) -> "ProgressReporter":
        self._token = _ACTIVE.set(self)
        if self.enabled and self.interval > 0:
            self._thread = threading.Thread(target=self._loop, name="qalas-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval + 1)
        if self._token is not None:
            _ACTIVE.reset(self._token)


def interval_from_env(default: float = DEFAULT_INTERVAL_S) -> float:
    """The progress interval in seconds: ``$QALAS_BIDS_PROGRESS_INTERVAL`` or ``default``."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, default))
    except ValueError:
        return default
    return value if value > 0 else default


def active() -> ProgressReporter | None:
    """The reporter of the current context (``None`` when progress is off)."""
    return _ACTIVE.get()


def phase(name: str, total: float | None = None, unit: str = "") -> None:
    """Start a new phase (``total`` steps of ``unit``) on the active reporter, if any."""
    reporter = _ACTIVE.get()
    if reporter is not None:
        reporter.set_phase(name, total, unit)


def step(done: float, total: float | None = None, **extra: Any) -> None:
    """Record progress within the current phase (cheap: no I/O)."""
    reporter = _ACTIVE.get()
    if reporter is not None:
        reporter.set_step(done, total, **extra)
