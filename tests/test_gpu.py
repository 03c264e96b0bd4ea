"""GPU tier (``make gpu-test``): the real CLI and the fitting core on a CUDA GPU.

Skipped with a reason where CUDA is absent (CI). ``QALAS_GPU_TIER_ON_CPU=1`` dry-runs the
same tests on the CPU on a cropped 2 mm slab, to check the tier itself (1 mm cases need
the GPU). Every CLI case adds a row to the stage-timing table printed at the end.

Tolerances: the demo brain is simulated at SNR 60, where the measured WM/GM median bias of
every fit mode is < 0.3 % (1 mm H200 run of issue 11); the CLI cases assert < 1 %. CPU and
GPU fits of the same data agree to a median |relative difference| < 0.5 % in WM/GM.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import crop_slab, gpu_tier_device, tissue_bias
from qalas_bids.cli.demo_accuracy import _tissue_masks
from qalas_bids.qalas.fitting.fit_volume import METHODS

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

CLI = [sys.executable, "-c", "from qalas_bids.cli.run import main; main()"]
N_SLICES_DRY_RUN = 8
BIAS_TOLERANCE = 0.01
AGREEMENT_TOLERANCE = 0.005


@pytest.fixture(scope="session")
def tier_device() -> str:
    device = gpu_tier_device()
    if device is None:
        pytest.skip("needs a CUDA GPU")
    return device


@pytest.fixture(scope="session")
def device_name(tier_device) -> str:
    if tier_device == "cpu":
        return "CPU (dry run of the GPU tier)"
    import torch

    props = torch.cuda.get_device_properties(0)
    return f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"


@pytest.fixture(scope="session")
def demo_datasets(tmp_path_factory, tier_device):
    """``make(resolution, runs)`` -> a demo BIDS root (cached; cropped for a CPU dry run)."""
    from qalas_bids.demo.dataset import write_demo_dataset

    cache: dict = {}

    def make(resolution: float, runs: tuple[int, ...] = (1,)) -> Path:
        key = (resolution, runs)
        if key not in cache:
            if tier_device == "cpu" and resolution < 2:
                pytest.skip("dry run on the CPU: the 1 mm cases run on a GPU only")
            root = tmp_path_factory.mktemp(f"demo_{resolution:g}mm") / "bids"
            write_demo_dataset(root, subjects=("01",), sessions=(), runs=runs, resolution=resolution,
                               snr=60, seed=0)
            if tier_device == "cpu":
                crop_slab(root, N_SLICES_DRY_RUN)
            cache[key] = root
        return cache[key]

    return make


def run_cli(cwd: Path, *args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


def timing_row(case: str, out: Path, device_name: str) -> dict:
    """One row of the table from the run's ``logs/timing-*.json``."""
    (path,) = sorted(out.glob("logs/timing-*.json"))[-1:]
    stages = json.loads(path.read_text())["stages"]
    row: dict = {"case": case, "device_name": device_name, "total": 0.0}
    names = {"device check": "device check", "preflight (validation, discovery)": "preflight",
             "input checks (read once: order, head mask, B1)": "input checks",
             "workflow run (all nodes, wall)": "workflow", "boilerplate, QC gate and reports": "reports"}
    for stage in stages:
        if stage["scope"] == "invocation":
            row["total"] += stage["seconds"]
            if stage["stage"] in names:
                row[names[stage["stage"]]] = stage["seconds"]
        elif stage["stage"] == "fit":
            row["fit"] = row.get("fit", 0.0) + stage["seconds"]
        elif stage["stage"].startswith("fit: "):
            key = stage["stage"][5:].replace("fit", "network")
            row[key] = row.get(key, 0.0) + stage["seconds"]
    return row


def fitted_device(out: Path, prefix: str) -> str:
    side = json.loads(next(out.glob(f"sub-01/anat/{prefix}_T1map.json")).read_text())
    return side["FitInfo"]["Device"]


@pytest.mark.parametrize("resolution", [2.0, 1.0], ids=["2mm", "1mm"])
@pytest.mark.parametrize("mode", METHODS)
def test_cli_default_options(resolution, mode, demo_datasets, tier_device, device_name, gpu_timings,
                             tmp_path):
    """The CLI as a user runs it (default device, nprocs, plugin, work dir): exit 0 on the GPU."""
    bids = demo_datasets(resolution)
    proc = run_cli(tmp_path, bids, tmp_path / "out", "participant", "--fit-mode", mode)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Traceback" not in proc.stderr and "re-initialize CUDA" not in proc.stderr
    out = tmp_path / "out"
    assert fitted_device(out, "sub-01_run-1").startswith(tier_device)
    for name, value in tissue_bias(bids, out, "sub-01_run-1").items():
        assert abs(value) < BIAS_TOLERANCE, f"{mode} {resolution} mm {name} median bias {value:+.4f}"
    gpu_timings.append(timing_row(f"{resolution:g} mm {mode}", out, device_name))


@pytest.mark.parametrize("options", [
    ["--nprocs", "1"],
    ["--nprocs", "3"],
    ["--device", "cuda"],
    ["--device", "cuda:0"],
    ["--use-plugin", "multiproc.yml"],
    ["--use-plugin", "linear.yml"],
], ids=["nprocs1-linear", "nprocs3", "device-cuda", "device-cuda0", "plugin-multiproc", "plugin-linear"])
def test_cli_execution_options(options, demo_datasets, tier_device, tmp_path):
    """Every execution option that decides how workers start keeps the fit on the GPU."""
    if tier_device == "cpu" and "--device" in options:
        options = ["--device", "cpu"]
    (tmp_path / "multiproc.yml").write_text("plugin: MultiProc\nplugin_args:\n  n_procs: 2\n")
    (tmp_path / "linear.yml").write_text("plugin: Linear\n")
    proc = run_cli(tmp_path, demo_datasets(2.0), tmp_path / "out", "participant", "--fit-mode",
                   "pretrained", "--skip-bids-validation", *options)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert fitted_device(tmp_path / "out", "sub-01_run-1").startswith(tier_device)


def test_two_runs_in_one_invocation(demo_datasets, tier_device, device_name, gpu_timings, tmp_path):
    """Two QALAS runs of one participant, default MultiProc: both fitted on the GPU."""
    bids = demo_datasets(2.0, runs=(1, 2))
    proc = run_cli(tmp_path, bids, tmp_path / "out", "participant", "--fit-mode", "pretrained",
                   "--skip-bids-validation")
    assert proc.returncode == 0, proc.stderr[-5000:]
    for prefix in ("sub-01_run-1", "sub-01_run-2"):
        assert fitted_device(tmp_path / "out", prefix).startswith(tier_device)
        assert max(abs(v) for v in tissue_bias(bids, tmp_path / "out", prefix).values()) < BIAS_TOLERANCE
    gpu_timings.append(timing_row("2 mm pretrained, 2 runs", tmp_path / "out", device_name))


def test_missing_gpu_index_is_a_usage_error(demo_datasets, tier_device, tmp_path):
    proc = run_cli(tmp_path, demo_datasets(2.0), tmp_path / "out", "participant", "--device", "cuda:64",
                   "--skip-bids-validation")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert ("only" in proc.stderr and "CUDA device(s) visible" in proc.stderr) or "no CUDA GPU" in proc.stderr


def _volume_inputs(bids: Path):
    """QALAS 4D, ground-truth brain mask and B1 (QALAS space) of sub-01 run-1."""
    from qalas_bids.qalas.physics.timing import get_preset

    anat = bids / "sub-01" / "anat"
    qalas = np.stack([np.asarray(nib.load(anat / f"sub-01_run-1_inv-{k}_QALAS.nii.gz").dataobj, dtype=np.float32)
                      for k in range(5)], axis=-1)
    truth = bids / "derivatives" / "groundtruth" / "sub-01"
    masks = _tissue_masks(truth / "anat", "sub-01_run-1")
    b1 = np.asarray(nib.load(truth / "fmap" / "sub-01_run-1_space-QALAS_TB1map.nii.gz").dataobj, dtype=np.float32)
    assert b1.shape == qalas.shape[:3]
    return qalas, masks, b1, get_preset("siemens")


@pytest.mark.parametrize("mode", METHODS)
def test_cpu_and_gpu_fits_agree(mode, demo_datasets, tier_device):
    """Median |relative difference| CPU vs GPU < 0.5 % in WM and GM, for all four maps."""
    from qalas_bids.qalas.fitting.fit_volume import fit_volume

    qalas, masks, b1, timing = _volume_inputs(demo_datasets(2.0))
    fits = {dev: fit_volume(qalas, b1, masks["brain"], timing, method=mode, device=dev, seed=0,
                            progress=False, ssl_options={"num_threads": os.cpu_count()} if mode != "dictionary" else None)
            for dev in ("cpu", tier_device)}
    assert fits[tier_device].info["device"].startswith(tier_device)
    for key in ("t1", "t2", "pd", "ie"):
        a, b = fits["cpu"].maps[key], fits[tier_device].maps[key]
        for tissue in ("WM", "GM"):
            sel = masks[tissue] & (a > 0)
            diff = float(np.median(np.abs(b[sel] - a[sel]) / a[sel]))
            assert diff < AGREEMENT_TOLERANCE, f"{mode} {key} {tissue}: median |rel diff| {diff:.4f}"


def _voxels(n: int = 2000, seed: int = 3):
    from qalas_bids.qalas.physics.signal_model import qalas_magnitude
    from qalas_bids.qalas.physics.timing import get_preset

    import torch

    rng = np.random.default_rng(seed)
    t1, t2 = rng.uniform(0.6, 2.0, n), rng.uniform(0.05, 0.15, n)
    ie, b1 = rng.uniform(0.8, 0.95, n), rng.uniform(0.7, 1.3, n)
    timing = get_preset("siemens")
    mags = qalas_magnitude(*(torch.as_tensor(v, dtype=torch.float64) for v in (t1, t2, np.ones(n), ie, b1)),
                           timing).numpy()
    return mags, (t1, t2, np.ones(n), ie), b1, timing


def test_core_dictionary_ssl_refinement_crlb_on_device(tier_device):
    """Each core stage runs on the device and matches the CPU."""
    import torch

    from qalas_bids.qalas.fitting.dictionary import fit_dictionary
    from qalas_bids.qalas.fitting.ssl import fit_ssl, refine_least_squares
    from qalas_bids.qalas.fitting.uncertainty import crlb_std

    mags, truth, b1, timing = _voxels()
    dct = {d: fit_dictionary(mags, b1, timing, device=d, progress=False) for d in ("cpu", tier_device)}
    assert dct[tier_device].info["device"].startswith(tier_device)
    assert np.mean(dct["cpu"].t1 == dct[tier_device].t1) > 0.98
    np.testing.assert_allclose(dct[tier_device].t1, dct["cpu"].t1, rtol=0.05)

    ssl = fit_ssl(mags, b1, timing, mode="scan-specific", device=tier_device, epochs=20, seed=0, progress=False)
    assert ssl.info["device"].startswith(tier_device)
    assert ssl.info["loss_history"][-1] < ssl.info["loss_history"][0]
    np.testing.assert_allclose(ssl.t1, truth[0], rtol=0.02)

    start = torch.as_tensor(np.stack([t * 1.1 for t in truth[:3]] + [truth[3]], axis=1), dtype=torch.float32)
    targets = torch.as_tensor(mags, dtype=torch.float32)
    b1_t = torch.as_tensor(b1, dtype=torch.float32)
    refined = {d: refine_least_squares(start.to(d), targets.to(d), b1_t.to(d), timing, steps=8, pd_max=10.0)[0].cpu()
               for d in ("cpu", tier_device)}
    np.testing.assert_allclose(refined[tier_device].numpy(), refined["cpu"].numpy(), rtol=1e-3)
    np.testing.assert_allclose(refined[tier_device][:, 0].numpy(), truth[0], rtol=1e-3)

    crlb = {d: crlb_std(*truth, b1, timing, sigma=0.001, device=d) for d in ("cpu", tier_device)}
    for name in ("t1", "t2", "pd", "ie"):
        np.testing.assert_allclose(crlb[tier_device][name], crlb["cpu"][name], rtol=1e-3)
