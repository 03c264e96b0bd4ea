"""How runs execute: device check without CUDA in the parent, worker start method,
progress lines, the stage-timing table and SLURMGraph waiting."""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
import torch

from qalas_bids.execution import prework as cli_run
from qalas_bids.config import Settings
from qalas_bids.qalas.fitting import device as device_mod
from qalas_bids.qalas.fitting import progress
from qalas_bids.qalas.fitting.device import DeviceInfo, probe_device
from qalas_bids.qalas.errors import DeviceError
from qalas_bids.utils.slurm_wait import submitted_job_names, wait_for_slurm_jobs
from qalas_bids.execution.stage_timing import StageClock, StageTime, format_table, read_timing_json, write_timing_json


# ------------------------------------------------------------------- device check
def test_probe_cpu_never_starts_a_child(monkeypatch):
    monkeypatch.setattr(device_mod.subprocess, "run", lambda *a, **k: pytest.fail("no child for cpu"))
    assert probe_device("cpu") == DeviceInfo("cpu")


def test_probe_runs_in_a_child_process_on_cuda_builds(monkeypatch):
    """With a CUDA build of torch the parent asks a child and never touches torch.cuda itself."""
    has_gpu = torch.cuda.is_available()
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    for name in ("is_available", "device_count", "init", "_lazy_init"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: pytest.fail("CUDA touched in the parent"))
    calls = []
    real_run = device_mod.subprocess.run
    monkeypatch.setattr(device_mod.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or real_run(cmd, **kw))
    info = probe_device("auto")  # the child has this machine's real torch: no GPU here -> cpu
    assert len(calls) == 1 and info.device == ("cuda:0" if has_gpu else "cpu")
    if not has_gpu:
        with pytest.raises(DeviceError, match=r"--device cuda:1 requested but no CUDA GPU.*--device cpu"):
            probe_device("cuda:1")


def test_probe_reports_a_broken_child_clearly(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)

    class Done:
        returncode, stdout, stderr = 1, "", "ImportError: libcuda.so.1: cannot open shared object file"

    monkeypatch.setattr(device_mod.subprocess, "run", lambda *a, **k: Done())
    with pytest.raises(DeviceError, match="device check failed.*libcuda"):
        probe_device("auto")


def test_cuda_only_build_message_names_the_fix(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)
    with pytest.raises(DeviceError, match="--gpus all.*--nv"):
        probe_device("cuda")
    with pytest.raises(DeviceError, match="invalid device"):
        probe_device("gpu")


def _settings(tmp_path: Path, **kw) -> Settings:
    return Settings(bids_dir=tmp_path, output_dir=tmp_path / "out", work_dir=tmp_path / "work", **kw)


@pytest.mark.parametrize("plugin, args, found, expected", [
    ("MultiProc", {"n_procs": 4}, "cuda:0", "spawn"),
    ("MultiProc", {"n_procs": 4, "mp_context": "forkserver"}, "cuda:0", "forkserver"),
    ("MultiProc", {"n_procs": 4}, "cpu", None),
    ("Linear", {}, "cuda:0", None),
])
def test_gpu_fits_start_multiproc_workers_with_spawn(monkeypatch, tmp_path, plugin, args, found, expected):
    monkeypatch.setattr(device_mod, "probe_device", lambda spec: DeviceInfo(found, name="test"))
    settings = cli_run.check_device(_settings(tmp_path, plugin=plugin, plugin_args=args))
    assert settings.resolved_device == found
    assert settings.plugin_args.get("mp_context") == expected


def test_slurmgraph_gets_non_empty_plugin_args(tmp_path):
    from qalas_bids.cli.parser import parse_args

    (tmp_path / "dataset_description.json").write_text("{}")
    (tmp_path / "graph.yml").write_text("plugin: SLURMGraph\n")
    opts = parse_args([str(tmp_path), str(tmp_path.parent / "o"), "participant", "--use-plugin",
                       str(tmp_path / "graph.yml")])
    assert Settings.from_namespace(opts).plugin_args == {"dont_resubmit_completed_jobs": True}


# ------------------------------------------------------------------------ progress
def test_progress_lines_show_phase_step_loss_elapsed_and_eta():
    stream = io.StringIO()
    with progress.ProgressReporter("sub-01_run-1 fit", interval=0.05, stream=stream) as rep:
        progress.phase("SSL training", total=10, unit="batch")
        for k in range(1, 6):
            progress.step(k, epoch=f"{k}/10", loss=1e-3 / k)
            time.sleep(0.03)
        time.sleep(0.2)  # at least one line with the final state
        assert progress.active() is rep
    assert progress.active() is None
    lines = stream.getvalue().splitlines()
    assert lines, "no progress line printed"
    last = [ln for ln in lines if "batch 5/10" in ln][-1]
    assert last.startswith("qalas-bids progress: sub-01_run-1 fit | SSL training batch 5/10")
    assert "epoch 5/10" in last and "loss 2.000e-04" in last and "elapsed" in last
    assert "ETA" in last and "ETA -" not in last


def test_progress_is_silent_when_disabled_or_inactive():
    stream = io.StringIO()
    progress.phase("nothing active")  # a no-op outside a reporter
    with progress.ProgressReporter(interval=0.01, stream=stream, enabled=False):
        progress.phase("x", total=2)
        time.sleep(0.05)
    assert stream.getvalue() == ""


def test_progress_interval_from_env(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.5")
    assert progress.interval_from_env() == 0.5
    monkeypatch.setenv(progress.INTERVAL_ENV, "soon")
    assert progress.interval_from_env() == progress.DEFAULT_INTERVAL_S


def test_fit_core_reports_its_phases():
    """A real (tiny) fit moves through the named phases while a reporter is active."""
    import numpy as np

    from qalas_bids.qalas.fitting.fit_volume import fit_volume
    from qalas_bids.qalas.physics.timing import get_preset

    rng = np.random.default_rng(0)
    data = rng.uniform(0.5, 1.0, (6, 6, 2, 5)).astype(np.float32)
    mask = np.ones((6, 6, 2), bool)
    seen = []

    class Spy(progress.ProgressReporter):
        def set_phase(self, name, total=None, unit=""):
            seen.append(name)
            super().set_phase(name, total, unit)

    with Spy(interval=60):
        fit = fit_volume(data, None, mask, get_preset("siemens"), method="scan-specific", device="cpu",
                         ssl_options={"epochs": 2}, progress=False)
    assert seen[:3] == ["noise level", "SSL training", "SSL network prediction"]
    assert {"per-voxel refinement", "noise level", "CRLB", "residual map"} <= set(seen)
    assert set(fit.info["stage_times_s"]) == {"network", "refinement", "noise_sigma", "crlb", "residual"}


# ---------------------------------------------------------------------- stage timing
def test_stage_table_and_json_roundtrip(tmp_path):
    clock = StageClock()
    with clock.stage("preflight"):
        time.sleep(0.01)
    rows = clock.rows + [StageTime("sub_01/qalas_run_1", "fit", 12.5), StageTime("sub_01/qalas_run_1", "fit: crlb", 3.25, "cached")]
    table = format_table(rows)
    assert "preflight" in table and "12.50" in table and "(cached)" in table
    path = write_timing_json(tmp_path / "logs" / "timing.json", rows, device="cpu")
    assert json.loads(path.read_text())["device"] == "cpu"
    assert read_timing_json(path) == rows


# ----------------------------------------------------------------------- SLURMGraph
def test_slurmgraph_job_names_are_read_back_and_waited_for(tmp_path):
    batch = tmp_path / "work" / "wf" / "batch"
    batch.mkdir(parents=True)
    (batch / "submit_jobs.sh").write_text(
        "#!/usr/bin/env bash\n"
        "j0_load=$(sbatch -o x -e y  -J j0_load /b/s0.sh | awk '/^Submitted/ {print $4}')\n"
        "j1_fit=$(sbatch -o x -e y --dependency=afterok:${j0_load} -J j1_fit /b/s1.sh | awk '{print $4}')\n")
    names = submitted_job_names(tmp_path / "work", since=time.time() - 5)
    assert names == ["j0_load", "j1_fit"]
    assert submitted_job_names(tmp_path / "work", since=time.time() + 60) == []
    queue = iter([{"j0_load", "j1_fit", "other"}, {"j1_fit"}, {"other"}])
    wait_for_slurm_jobs(names, poll_s=0.01, queued=lambda: next(queue))
    with pytest.raises(TimeoutError, match="still queued"):
        wait_for_slurm_jobs(names, poll_s=0.01, timeout_s=0.02, queued=lambda: {"j1_fit"})
