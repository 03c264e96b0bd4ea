"""Fast checks of the HPC scripts (no SLURM needed; `make slurm-test` runs them for real).

- docs/examples/qalas-bids_array.sbatch: GPU header kept, environment contract, the command
  line each runner forms (with fake qalas-bids/apptainer/podman on PATH), clear errors;
- scripts/ci/slurm_cluster.sh and slurm_test.sh: valid bash, slurm.conf as in SLURM_CI.md,
  daemons stopped by PID only;
- docs/examples/slurmgraph_plugin.yml: accepted by the CLI.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from qalas_bids.cli import validators

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "docs" / "examples" / "qalas-bids_array.sbatch"
CLUSTER = ROOT / "scripts" / "ci" / "slurm_cluster.sh"
SLURM_TEST = ROOT / "scripts" / "ci" / "slurm_test.sh"
GRAPH_PLUGIN = ROOT / "docs" / "examples" / "slurmgraph_plugin.yml"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="bash is not installed")

# A fake command: records its arguments (NUL-separated) and exits with FAKE_RC.
FAKE = """#!/bin/bash
if [ "${1:-}" = image ] && [ "${2:-}" = exists ]; then exit "${FAKE_IMAGE_EXISTS:-0}"; fi
printf '%s\\0' "$@" > "${FAKE_LOG}"
exit "${FAKE_RC:-0}"
"""


def header(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#SBATCH")]


# ------------------------------------------------------------------------------ static
@pytest.mark.parametrize("script", [SBATCH, CLUSTER, SLURM_TEST], ids=lambda p: p.name)
def test_script_is_valid_bash(script):
    result = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert script.read_text().startswith("#!/bin/bash")


def test_sbatch_header_keeps_the_gpu_request():
    lines = header(SBATCH.read_text())
    for option in ("--partition=gpu", "--gres=gpu:1", "--cpus-per-task=", "--mem=", "--time=",
                   "--array=", "--output=", "--error="):
        assert any(option in line for line in lines), option


def test_sbatch_has_no_hard_coded_paths_and_reads_the_environment_contract():
    text = SBATCH.read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"^\s*\w+=['\"]?/", code, re.MULTILINE), "hard-coded path"
    for name in ("BIDS_DIR", "OUT_DIR", "PARTICIPANTS", "QALAS_EXTRA_ARGS", "QALAS_RUNNER",
                 "QALAS_IMAGE", "QALAS_ANALYSIS_LEVEL", "SLURM_ARRAY_TASK_ID",
                 "SLURM_CPUS_PER_TASK", "SLURM_MEM_PER_NODE"):
        assert "${" + name in code, name
    # The CPU-partition override is documented next to the header.
    assert "--gres=none" in text and "--device cpu" in text


def test_ci_scripts_stop_daemons_by_pid_only():
    for script in (CLUSTER, SLURM_TEST):
        text = script.read_text()
        assert not re.search(r"\b(pkill|killall)\b", text), script
    cluster = CLUSTER.read_text()
    assert "apt-get install" in cluster and "--no-install-recommends" in cluster
    for pid_file in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
        assert pid_file in cluster


def test_slurm_test_submits_the_documented_script_unmodified():
    text = SLURM_TEST.read_text()
    assert "docs/examples/qalas-bids_array.sbatch" in text
    assert not re.search(r"\bsed\b[^\n]*SBATCH_SCRIPT|cp [^\n]*SBATCH_SCRIPT", text)
    for needle in ("--gres=none", "--cpus-per-task=1", "--partition=", "--array=1-",
                   "--dependency=afterok:", "QALAS_ANALYSIS_LEVEL=group", "QALAS_RUNNER=native",
                   "trap cleanup EXIT", "docs/examples/slurmgraph_plugin.yml"):
        assert needle in text, needle


def test_cluster_config_follows_slurm_ci(tmp_path):
    script = f'source "{CLUSTER}"; _slurm_ci_write_conf "{tmp_path}"'
    result = subprocess.run([BASH, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    conf = (tmp_path / "slurm.conf").read_text()
    for line in ("AuthType=auth/munge", "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
                 "DependencyParameters=kill_invalid_depend", "SelectType=select/cons_tres",
                 "AccountingStorageType=accounting_storage/none", "ReturnToService=2",
                 f"StateSaveLocation={tmp_path}/state", f"SlurmdPidFile={tmp_path}/slurmd.pid",
                 "PartitionName=debug Nodes=ALL Default=YES"):
        assert line in conf, line
    assert re.search(r"^NodeName=\S+ NodeAddr=127\.0\.0\.1 CPUs=\d+ RealMemory=\d+", conf, re.M)


def test_cluster_script_usage():
    result = subprocess.run([BASH, str(CLUSTER)], capture_output=True, text=True)
    assert result.returncode == 2 and "usage" in result.stderr


def test_slurmgraph_plugin_example_is_accepted_by_the_cli():
    plugin = validators.plugin_file(str(GRAPH_PLUGIN))
    assert plugin["plugin"] == "SLURMGraph"
    # nipype 1.11's SLURMGraph crashes on empty plugin_args.
    assert plugin["plugin_args"].get("dont_resubmit_completed_jobs") is True
    assert "--gres=gpu:1" in plugin["plugin_args"]["sbatch_args"]


# ------------------------------------------------------------------------------ runs
@pytest.fixture()
def env(tmp_path):
    """Clean environment (no SLURM_*/QALAS_*), fake tools in tmp/bin, a BIDS dir."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (tmp_path / "bids").mkdir()
    (tmp_path / "scratch").mkdir()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "QALAS_", "SBATCH_")) and k not in ("BIDS_DIR", "OUT_DIR",
                                                                               "PARTICIPANTS")}
    base.update(PATH=f"{fake_bin}:/usr/bin:/bin", TMPDIR=str(tmp_path / "scratch"),
                FAKE_LOG=str(tmp_path / "argv"), BIDS_DIR=str(tmp_path / "bids"),
                OUT_DIR=str(tmp_path / "out"), SLURM_ARRAY_TASK_ID="2",
                SLURM_ARRAY_JOB_ID="77", SLURM_JOB_ID="78")
    return base


def fake(tmp_path: Path, name: str) -> None:
    path = tmp_path / "bin" / name
    path.write_text(FAKE)
    path.chmod(0o755)


def run_sbatch(env: dict, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, str(SBATCH)], env={**env, **extra}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def argv(tmp_path: Path) -> list[str]:
    return (tmp_path / "argv").read_text().split("\0")[:-1]


def test_native_participant_command_line(env, tmp_path):
    fake(tmp_path, "qalas-bids")
    (tmp_path / "participants.txt").write_text("01\nsub-02\n03\n")
    result = run_sbatch(env, tmp_path, QALAS_RUNNER="native", SLURM_CPUS_PER_TASK="3",
                        SLURM_MEM_PER_NODE="4000",
                        QALAS_EXTRA_ARGS="--fit-mode pretrained  --device cpu")
    assert result.returncode == 0, result.stderr
    args = argv(tmp_path)
    work = args[args.index("-w") + 1]
    assert args[:3] == [str(tmp_path / "bids"), str(tmp_path / "out"), "participant"]
    assert work.startswith(str(tmp_path / "scratch" / "qalas-bids_77_2_"))
    assert not Path(work).exists(), "the work dir is removed at exit"
    joined = " ".join(args)
    assert "--participant-label 02 " in joined
    assert "--nprocs 3 --omp-nthreads 3" in joined and "--mem 4000M" in joined
    assert "--skip-bids-validation" in args
    assert args[-4:] == ["--fit-mode", "pretrained", "--device", "cpu"]
    assert (tmp_path / "out").is_dir()
    first = result.stdout.splitlines()[0]
    assert "sub-02" in first and "native" in first and os.uname().nodename in first
    assert result.stdout.splitlines()[-1].endswith("finished with exit code 0")


def test_native_inline_labels_default_resources_and_exit_code(env, tmp_path):
    fake(tmp_path, "qalas-bids")
    result = run_sbatch(env, tmp_path, QALAS_RUNNER="native", PARTICIPANTS="01,02 sub-03",
                        SLURM_ARRAY_TASK_ID="3", FAKE_RC="1")
    assert result.returncode == 1
    args = argv(tmp_path)
    assert args[args.index("--participant-label") + 1] == "03"
    assert args[args.index("--nprocs") + 1] == "1"
    assert "--mem" not in args
    assert "exit code 1" in result.stdout


def test_mem_per_cpu_is_converted(env, tmp_path):
    fake(tmp_path, "qalas-bids")
    result = run_sbatch(env, tmp_path, QALAS_RUNNER="native", PARTICIPANTS="01 02",
                        SLURM_CPUS_PER_TASK="4", SLURM_MEM_PER_CPU="2000")
    assert result.returncode == 0, result.stderr
    args = argv(tmp_path)
    assert args[args.index("--mem") + 1] == "8000M"


def test_group_level(env, tmp_path):
    fake(tmp_path, "qalas-bids")
    result = run_sbatch(env, tmp_path, QALAS_RUNNER="native", QALAS_ANALYSIS_LEVEL="group",
                        SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_COUNT="1")
    assert result.returncode == 0, result.stderr
    args = argv(tmp_path)
    assert args[:3] == [str(tmp_path / "bids"), str(tmp_path / "out"), "group"]
    assert "--participant-label" not in args
    # In an array (the header's --array), only the first task runs the group level.
    (tmp_path / "argv").unlink()
    result = run_sbatch(env, tmp_path, QALAS_RUNNER="native", QALAS_ANALYSIS_LEVEL="group",
                        SLURM_ARRAY_TASK_ID="2", SLURM_ARRAY_TASK_MIN="1", SLURM_ARRAY_TASK_COUNT="10")
    assert result.returncode == 0 and not (tmp_path / "argv").exists()


@pytest.mark.skipif(bool(shutil.which("apptainer", path="/usr/bin:/bin")
                         or shutil.which("singularity", path="/usr/bin:/bin")),
                    reason="a real apptainer/singularity is installed")
@pytest.mark.parametrize("command", ["apptainer", "singularity"])
def test_apptainer_command_line(env, tmp_path, command):
    fake(tmp_path, command)
    (tmp_path / "qalas-bids.sif").write_text("not a real image")
    result = run_sbatch(env, tmp_path, PARTICIPANTS="01 02", SLURM_CPUS_PER_TASK="2")
    assert result.returncode == 0, result.stderr
    args = argv(tmp_path)
    bids, out = tmp_path / "bids", tmp_path / "out"
    assert args[:3] == ["run", "--cleanenv", "--nv"]
    assert args[3:9:2] == ["-B"] * 3
    assert args[4] == f"{bids}:/data:ro" and args[6] == f"{out}:/out"
    assert re.fullmatch(rf"{tmp_path}/scratch/qalas-bids_77_2_\w+:/work", args[8])
    assert args[9:15] == ["qalas-bids.sif", "/data", "/out", "participant", "-w", "/work"]
    assert args[args.index("--participant-label") + 1] == "02"


@pytest.mark.skipif(bool(shutil.which("apptainer", path="/usr/bin:/bin")
                         or shutil.which("singularity", path="/usr/bin:/bin")),
                    reason="a real apptainer/singularity is installed")
def test_apptainer_errors(env, tmp_path):
    result = run_sbatch(env, tmp_path, PARTICIPANTS="01 02")
    assert result.returncode == 2 and "neither apptainer nor singularity" in result.stderr
    fake(tmp_path, "apptainer")
    result = run_sbatch(env, tmp_path, PARTICIPANTS="01 02", QALAS_IMAGE="missing.sif")
    assert result.returncode == 2 and "missing.sif" in result.stderr
    assert not (tmp_path / "argv").exists()


def test_podman_command_line(env, tmp_path):
    fake(tmp_path, "podman")
    env = {**env, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"}
    result = run_sbatch(env, tmp_path, QALAS_RUNNER="podman", PARTICIPANTS="01 02")
    assert result.returncode == 0, result.stderr
    args = argv(tmp_path)
    uid_gid = f"{os.getuid()}:{os.getgid()}"
    assert args[:4] == ["run", "--rm", "-u", uid_gid]
    assert "--device" not in args
    assert args[4:10:2] == ["-v"] * 3 and args[5] == f"{tmp_path / 'bids'}:/data:ro"
    assert args[10:14] == ["qalas-bids:latest", "/data", "/out", "participant"]
    result = run_sbatch(env, tmp_path, QALAS_RUNNER="podman", PARTICIPANTS="01 02",
                        QALAS_PODMAN_GPU="1", QALAS_IMAGE="localhost/qalas-bids:0.1.0")
    assert result.returncode == 0, result.stderr
    args = argv(tmp_path)
    assert args[4:6] == ["--device", "nvidia.com/gpu=all"]
    assert "localhost/qalas-bids:0.1.0" in args
    result = run_sbatch(env, tmp_path, QALAS_RUNNER="podman", PARTICIPANTS="01 02",
                        FAKE_IMAGE_EXISTS="1")
    assert result.returncode == 2 and "no such podman image" in result.stderr


@pytest.mark.parametrize("unset, extra, message", [
    ("BIDS_DIR", {}, "BIDS_DIR is not set"),
    ("OUT_DIR", {}, "OUT_DIR is not set"),
    (None, {"PARTICIPANTS": "01"}, "no participant on label 2"),
    (None, {"PARTICIPANTS": "missing.txt"}, "PARTICIPANTS=missing.txt: no such file"),
    ("SLURM_ARRAY_TASK_ID", {"PARTICIPANTS": "01"}, "sbatch --array"),
    (None, {"PARTICIPANTS": "01 02", "QALAS_RUNNER": "docker"}, "QALAS_RUNNER=docker"),
    (None, {"PARTICIPANTS": "01 02", "QALAS_ANALYSIS_LEVEL": "session"}, "QALAS_ANALYSIS_LEVEL"),
])
def test_clear_errors_exit_2(env, tmp_path, unset, extra, message):
    fake(tmp_path, "qalas-bids")
    env = {k: v for k, v in env.items() if k != unset}
    result = run_sbatch(env, tmp_path, **{"QALAS_RUNNER": "native", **extra})
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert not (tmp_path / "argv").exists()


def test_missing_line_of_a_participants_file(env, tmp_path):
    fake(tmp_path, "qalas-bids")
    (tmp_path / "participants.txt").write_text("01\n")
    result = run_sbatch(env, tmp_path, QALAS_RUNNER="native")
    assert result.returncode == 2 and "no participant on line 2 of participants.txt" in result.stderr


@pytest.mark.skipif(bool(shutil.which("qalas-bids", path="/usr/bin:/bin")),
                    reason="qalas-bids is installed system-wide")
def test_native_without_qalas_bids_on_path(env, tmp_path):
    result = run_sbatch(env, tmp_path, QALAS_RUNNER="native", PARTICIPANTS="01 02")
    assert result.returncode == 2 and "qalas-bids is not on PATH" in result.stderr
