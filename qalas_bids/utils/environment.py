"""Process environment set before nipype/torch/matplotlib are imported (offline-safe)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _writable(path: Path) -> bool:
    if path.exists() and not path.is_dir():
        return False
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
        return True
    except OSError:
        return False


def check_writable(path: Path) -> None:
    """Raise ``PermissionError`` with a hint if ``path`` cannot be created/written."""
    if not _writable(path):
        what = "is a file, not a folder" if path.exists() and not path.is_dir() else "is not writable"
        raise PermissionError(f"cannot write to {path}: it {what}; choose another folder (check "
                              "permissions and, in containers, the bind mounts)")


def prepare_environment(work_dir: Path, omp_nthreads: int) -> dict[str, str]:
    """Set environment variables so that nothing phones home or writes to an unwritable $HOME.

    - ``NIPYPE_NO_ET=1``: no nipype version check (it can hang on offline nodes);
    - ``TEMPLATEFLOW_HOME``, ``MPLCONFIGDIR``, ``NIPYPE_CONFIG_DIR``, ``TORCH_HOME``: under
      ``<work_dir>/.cache`` unless already set or ``$HOME`` is writable;
    - ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` default to ``omp_nthreads``.
    Returns the variables it set.
    """
    changed: dict[str, str] = {}

    def setdefault(name: str, value: str) -> None:
        if name not in os.environ:
            os.environ[name] = value
            changed[name] = value

    setdefault("NIPYPE_NO_ET", "1")
    home = Path(os.environ.get("HOME") or "/nonexistent")
    cache = work_dir / ".cache"
    home_ok = home.is_dir() and os.access(home, os.W_OK)
    for name, sub in (("TEMPLATEFLOW_HOME", "templateflow"), ("MPLCONFIGDIR", "matplotlib"),
                      ("NIPYPE_CONFIG_DIR", "nipype"), ("TORCH_HOME", "torch")):
        if not home_ok:
            setdefault(name, str(cache / sub))
    if not home_ok:
        setdefault("HOME", str(cache / "home"))
        Path(os.environ["HOME"]).mkdir(parents=True, exist_ok=True)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        setdefault(name, str(omp_nthreads))
    return changed
