#!/bin/bash
# `make slurm-test`: qalas-bids on a real single-node SLURM cluster (root, Debian 12).
#
# 1. starts a cluster (scripts/ci/slurm_cluster.sh, after shared/SLURM_CI.md);
# 2. generates a 3-participant demo dataset (2 mm, no sessions);
# 3. submits docs/examples/qalas-bids_array.sbatch UNMODIFIED as a 3-task array, configured
#    only by environment variables and sbatch options (--partition, --gres=none,
#    --cpus-per-task, --output/--error), with QALAS_RUNNER=native (.venv's qalas-bids);
# 4. submits the group level with the same script as an afterok job;
# 5. checks every derivative, the group TSV, the BIDS validator and the job logs;
# 6. runs one participant through --use-plugin with nipype's SLURMGraph plugin
#    (docs/examples/slurmgraph_plugin.yml with sbatch_args for this partition).
# Prints the time of each phase and a PASS/FAIL summary; exits 1 on any failure.
# The daemons are stopped by PID on any exit. KEEP_TMP=1 keeps the temporary folder.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
VENV=${VENV:-${ROOT}/.venv}
SBATCH_SCRIPT=${ROOT}/docs/examples/qalas-bids_array.sbatch
GRAPH_PLUGIN=${ROOT}/docs/examples/slurmgraph_plugin.yml
SUBJECTS=(01 02 03)
PARTITION=debug
JOB_TIMEOUT=${SLURM_TEST_JOB_TIMEOUT:-420}   # seconds for each wait on the queue
FIT_ARGS="--fit-mode pretrained"
# shellcheck source=scripts/ci/slurm_cluster.sh
source "${ROOT}/scripts/ci/slurm_cluster.sh"

for tool in qalas-bids qalas-bids-demo-data python bids-validator-deno; do
    [ -x "${VENV}/bin/${tool}" ] || { echo "slurm_test: ${VENV}/bin/${tool} is missing: run make install" >&2; exit 1; }
done
export PATH="${VENV}/bin:${PATH}"
export LOGNAME=${LOGNAME:-$(id -un)}   # nipype's SLURM plugins need it

# One folder that every "node" sees (single node here): dataset, outputs, logs, cluster.
TMP=$(mktemp -d "${TMPDIR:-/tmp}/qalas-slurm-test.XXXXXX")
CLUSTER=${TMP}/cluster
BIDS=${TMP}/bids
OUT=${TMP}/derivatives/qalas-bids
OUT_GRAPH=${TMP}/derivatives/qalas-bids-slurmgraph
WORK_GRAPH=${TMP}/work-slurmgraph
LOGS=${TMP}/logs
mkdir -p "${LOGS}"

FAILURES=()
TIMINGS=()
T_TOTAL=$(date +%s.%N)
T_PHASE=${T_TOTAL}
PHASE=""

log() { echo "slurm_test: $*"; }
fail() {
    FAILURES+=("$1")
    echo "slurm_test: FAIL: $1" >&2
}
phase() {  # name: close the previous phase (timed) and open the next one
    local now
    now=$(date +%s.%N)
    [ -z "${PHASE}" ] || TIMINGS+=("$(awk -v a="${T_PHASE}" -v b="${now}" -v p="${PHASE}" 'BEGIN {printf "%6.1f s  %s", b - a, p}')")
    PHASE=$1
    T_PHASE=${now}
    [ -z "${PHASE}" ] || echo "=== ${PHASE}"
}
show() {  # file [lines]: the end of a log file
    echo "----- $1 (last ${2:-40} lines) -----" >&2
    tail -n "${2:-40}" "$1" >&2 2> /dev/null || echo "(missing)" >&2
}

SUMMARY_DONE=0
cleanup() {
    local rc=$?
    trap - EXIT
    if [ "${SUMMARY_DONE}" = 0 ]; then
        echo "=== slurm-test: FAIL (aborted with status ${rc} in phase '${PHASE}')" >&2
        [ "${#FAILURES[@]}" = 0 ] || printf '  - %s\n' "${FAILURES[@]}" >&2
        [ "${rc}" != 0 ] || rc=1
    fi
    if [ -n "${SLURM_CONF:-}" ] && [ -s "${CLUSTER}/slurmctld.pid" ]; then
        # Jobs are cancelled by job id first: with proctrack/linuxproc a stopped slurmd
        # would leave their processes running.
        local jobs
        jobs=$(squeue -h -o %A 2> /dev/null | sort -u | tr '\n' ' ' || true)
        if [ -n "${jobs// /}" ]; then
            log "cancelling jobs still queued: ${jobs}"
            # shellcheck disable=SC2086
            scancel ${jobs} 2> /dev/null || true
            for _ in $(seq 1 20); do
                [ -z "$(squeue -h 2> /dev/null)" ] && break
                sleep 0.5
            done
        fi
    fi
    slurm_cluster_stop "${CLUSTER}"
    if [ "${rc}" = 0 ] && [ "${KEEP_TMP:-0}" = 0 ]; then
        rm -rf "${TMP}"
    else
        log "kept ${TMP} (logs in ${LOGS}, cluster logs in ${CLUSTER})"
    fi
    exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits until the queue of this private cluster is empty.
wait_queue() {  # what
    local start=${SECONDS}
    while [ -n "$(squeue -h -o %i 2> /dev/null)" ] || ! squeue -h > /dev/null 2>&1; do
        if [ $((SECONDS - start)) -ge "${JOB_TIMEOUT}" ]; then
            fail "$1: jobs still queued after ${JOB_TIMEOUT} s"
            squeue >&2 || true
            return 1
        fi
        sleep 1
    done
    log "$1: queue empty after $((SECONDS - start)) s"
}

# "JobId ArrayTaskId JobState ExitCode" per job of an id (completed jobs stay in
# slurmctld's memory for MinJobAge = 300 s; there is no accounting database).
job_states() {  # job id
    scontrol -o show job "$1" 2> /dev/null | tr ' ' '\n' \
        | awk -F= '/^JobId=/ {id=$2} /^ArrayTaskId=/ {task=$2} /^JobState=/ {state=$2}
                   /^ExitCode=/ {print id, (task == "" ? "-" : task), state, $2; task=""}' \
        | sort -k2,2n
}

check_job() {  # what job-id expected-count
    local states n
    states=$(job_states "$2")
    n=$(grep -c . <<< "${states}" || true)
    echo "${states}" | sed "s/^/  $1: /"
    [ "${n}" = "$3" ] || fail "$1: scontrol shows ${n} job(s) for ${2}, expected $3"
    if grep -v " COMPLETED 0:0$" <<< "${states}" | grep -q .; then
        fail "$1: not every job COMPLETED with exit code 0:0"
    fi
}

# Job log checks: no Traceback, the script's success line last in .out, and (participant
# level) qalas-bids' own success line in .err.
check_log() {  # out-file err-file expected-last-line [expected-in-err]
    local ok=1
    if [ ! -s "$1" ]; then
        fail "missing or empty job log $1"; ok=0
    elif [ "$(tail -n 1 "$1")" != "$3" ]; then
        fail "$1 does not end with '$3'"; ok=0
    fi
    if grep -q Traceback "$1" "$2" 2> /dev/null; then
        fail "Traceback in $1 or $2"; ok=0
    fi
    if [ -n "${4:-}" ] && ! grep -qF "$4" "$2" 2> /dev/null; then
        fail "$2 lacks '$4'"; ok=0
    fi
    [ "${ok}" = 1 ] || { show "$1"; show "$2"; }
}

# Every derivative of each subject (with its sidecar), readable, in the QALAS grid.
check_derivatives() {  # out-dir subject...
    python - "$@" << 'EOF' || fail "derivatives in $1 are incomplete (see above)"
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

out = Path(sys.argv[1])
anat = ["T1map", "T2map", "PDmap", "IEmap",
        "desc-crlb_T1map", "desc-crlb_T2map", "desc-crlb_PDmap", "desc-crlb_IEmap",
        "desc-residual_QALAS", "desc-brain_mask"]
anat += [f"desc-synthetic_{c}" for c in ("T1w", "T2w", "PDw", "FLAIR", "DIR", "PSIR", "STIR")]
problems = []
for sub in sys.argv[2:]:
    if not (out / f"sub-{sub}").is_dir():
        problems.append(f"sub-{sub}: no output folder {out / f'sub-{sub}'}")
        continue
    prefix = f"sub-{sub}_run-1"
    expected = [out / f"sub-{sub}" / "anat" / f"{prefix}_{key}" for key in anat]
    expected.append(out / f"sub-{sub}" / "fmap" / f"{prefix}_space-QALAS_TB1map")
    grid = None
    for stem in expected:
        nii, sidecar = stem.with_name(stem.name + ".nii.gz"), stem.with_name(stem.name + ".json")
        if not sidecar.is_file():
            problems.append(f"missing {sidecar}")
        if not nii.is_file():
            problems.append(f"missing {nii}")
            continue
        img = nib.load(nii)
        data = np.asanyarray(img.dataobj)
        if grid is None:
            grid = img.shape[:3]
        if img.shape[:3] != grid:
            problems.append(f"{nii.name}: shape {img.shape} differs from {grid}")
        if not np.isfinite(data).any() or not np.any(data):
            problems.append(f"{nii.name}: no finite non-zero voxel")
    if not (out / f"sub-{sub}.html").is_file():
        problems.append(f"missing {out / f'sub-{sub}.html'}")
    print(f"  sub-{sub}: {len(expected)} maps with sidecars checked, grid {grid}")
for problem in problems[:20]:
    print("  " + problem, file=sys.stderr)
if len(problems) > 20:
    print(f"  ... and {len(problems) - 20} more problem(s)", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
}

check_validator() {  # out-dir
    local report=${LOGS}/validator_$(basename "$1").json
    bids-validator-deno "$1" --format json > "${report}" 2> "${report%.json}.err" || true
    python - "${report}" << 'EOF' || { fail "BIDS validator: errors in $1 (see above)"; [ ! -s "${report%.json}.err" ] || show "${report%.json}.err" 10; }
import json
import sys
from collections import Counter

try:
    issues = json.load(open(sys.argv[1]))["issues"]["issues"]
except (OSError, ValueError, KeyError) as exc:
    print(f"  no validator report: {exc}", file=sys.stderr)
    sys.exit(1)
errors = [i for i in issues if i.get("severity") == "error"]
warnings = Counter(i.get("code") for i in issues if i.get("severity") == "warning")
print(f"  {len(errors)} error(s), warnings: {dict(warnings)}")
for issue in errors:
    print(f"  error {issue.get('code')}: {issue.get('location')}", file=sys.stderr)
sys.exit(1 if errors else 0)
EOF
}

# ------------------------------------------------------------------------ 1. the cluster
phase "start the SLURM cluster"
slurm_cluster_start "${CLUSTER}" || { fail "the SLURM cluster did not start"; exit 1; }
sinfo

# ------------------------------------------------------------------------ 2. the dataset
phase "generate the dataset (${SUBJECTS[*]})"
qalas-bids-demo-data "${BIDS}" --subjects "${SUBJECTS[@]}" --sessions --resolution 2 \
    --snr 60 --seed 0 > "${LOGS}/demo-data.log" 2>&1 \
    || { fail "qalas-bids-demo-data failed"; show "${LOGS}/demo-data.log"; exit 1; }
printf '%s\n' "${SUBJECTS[@]}" > "${TMP}/participants.txt"

# ------------------------------------------------------------------------ 3. the array job
phase "participant level: ${#SUBJECTS[@]}-task array job (sbatch script unmodified)"
SBATCH_OPTS=(--partition="${PARTITION}" --gres=none --cpus-per-task=1)
# The header asks for --mem=16G; only a node with less memory needs an override.
NODE_MEM=$(sinfo -h -o %m | head -n 1 | tr -dc 0-9)
if [ "${NODE_MEM:-0}" -lt 16384 ]; then
    log "node has ${NODE_MEM} MB (< the header's 16G): adding --mem=$((NODE_MEM / 2))M"
    SBATCH_OPTS+=(--mem="$((NODE_MEM / 2))M")
fi
cd "${TMP}"
# Progress lines every 0.5 s (default 5 s), so that even these short fits show them in the log.
ARRAY_JOB=$(env BIDS_DIR="${BIDS}" OUT_DIR="${OUT}" PARTICIPANTS="${TMP}/participants.txt" \
        QALAS_RUNNER=native QALAS_BIDS_PROGRESS_INTERVAL=0.5 \
    sbatch --parsable --array=1-${#SUBJECTS[@]} "${SBATCH_OPTS[@]}" \
        --export=ALL,QALAS_EXTRA_ARGS="${FIT_ARGS}" \
        --output="${LOGS}/qalas-bids_%A_%a.out" --error="${LOGS}/qalas-bids_%A_%a.err" \
        "${SBATCH_SCRIPT}") || { fail "sbatch of the array job was refused"; exit 1; }
ARRAY_JOB=${ARRAY_JOB%%;*}
log "array job ${ARRAY_JOB} submitted"

# ------------------------------------------------------------------------ 4. the group job
GROUP_JOB=$(env BIDS_DIR="${BIDS}" OUT_DIR="${OUT}" QALAS_RUNNER=native \
    sbatch --parsable --array=1 "${SBATCH_OPTS[@]}" --dependency=afterok:"${ARRAY_JOB}" \
        --export=ALL,QALAS_ANALYSIS_LEVEL=group \
        --output="${LOGS}/qalas-bids-group_%A_%a.out" --error="${LOGS}/qalas-bids-group_%A_%a.err" \
        "${SBATCH_SCRIPT}") || { fail "sbatch of the group job was refused"; exit 1; }
GROUP_JOB=${GROUP_JOB%%;*}
log "group job ${GROUP_JOB} submitted (afterok:${ARRAY_JOB})"
squeue
wait_queue "array + group jobs" || true

# ------------------------------------------------------------------------ 5. the checks
phase "check the array and group jobs, derivatives, group TSV, validator"
check_job "array" "${ARRAY_JOB}" "${#SUBJECTS[@]}"
check_job "group" "${GROUP_JOB}" 1
for i in "${!SUBJECTS[@]}"; do
    task=$((i + 1))
    check_log "${LOGS}/qalas-bids_${ARRAY_JOB}_${task}.out" "${LOGS}/qalas-bids_${ARRAY_JOB}_${task}.err" \
        "qalas-bids_array: participant sub-${SUBJECTS[i]} finished with exit code 0" \
        "qalas-bids finished successfully"
    err="${LOGS}/qalas-bids_${ARRAY_JOB}_${task}.err"
    grep -q "^qalas-bids progress: sub-${SUBJECTS[i]}_run-1 pretrained fit | .*elapsed .*ETA" "${err}" \
        || fail "${err} shows no progress line of the fit"
    grep -q "^qalas-bids stage timing" "${err}" || fail "${err} has no stage-timing table"
done
check_log "${LOGS}/qalas-bids-group_${GROUP_JOB}_1.out" "${LOGS}/qalas-bids-group_${GROUP_JOB}_1.err" \
    "qalas-bids_array: group level finished with exit code 0"
check_derivatives "${OUT}" "${SUBJECTS[@]}"
TSV=${OUT}/group_T1T2PDIE.tsv
if [ -s "${TSV}" ]; then
    rows=$(tail -n +2 "${TSV}" | grep -c . || true)
    ids=$(tail -n +2 "${TSV}" | cut -f1 | sort | tr '\n' ' ')
    log "group TSV: ${rows} data row(s): ${ids}"
    [ "${rows}" = "${#SUBJECTS[@]}" ] || fail "${TSV} has ${rows} data rows, expected ${#SUBJECTS[@]}"
    [ "${ids}" = "$(printf 'sub-%s ' "${SUBJECTS[@]}")" ] || fail "${TSV}: participant_id column is '${ids}'"
else
    fail "missing ${TSV}"
fi
check_validator "${OUT}"

# ------------------------------------------------------------------------ 6. SLURMGraph
phase "one participant through --use-plugin (nipype SLURMGraph)"
PLUGIN=${TMP}/slurmgraph_plugin.yml
# The documented plugin file, with sbatch_args for this CPU partition.
python - "${GRAPH_PLUGIN}" "${PLUGIN}" "--partition=${PARTITION} --gres=none --cpus-per-task=1 --mem=4G" << 'EOF'
import sys

import yaml

plugin = yaml.safe_load(open(sys.argv[1]))
assert plugin["plugin"] == "SLURMGraph", plugin
plugin["plugin_args"]["sbatch_args"] = sys.argv[3]
yaml.safe_dump(plugin, open(sys.argv[2], "w"))
print(f"  {sys.argv[2]}: {plugin}")
EOF
graph_rc=0
timeout "${JOB_TIMEOUT}" qalas-bids "${BIDS}" "${OUT_GRAPH}" participant --participant-label 01 \
    --use-plugin "${PLUGIN}" -w "${WORK_GRAPH}" ${FIT_ARGS} --skip-bids-validation \
    > "${LOGS}/slurmgraph.log" 2>&1 || graph_rc=$?
log "qalas-bids --use-plugin (SLURMGraph) exited with ${graph_rc}"
njobs=$(grep -c 'sbatch ' "${WORK_GRAPH}"/*/batch/submit_jobs.sh 2> /dev/null || true)
log "SLURMGraph submitted ${njobs:-0} job(s)"
wait_queue "SLURMGraph jobs" || true
[ "${graph_rc}" = 0 ] || { fail "qalas-bids --use-plugin SLURMGraph exited with ${graph_rc}"; show "${LOGS}/slurmgraph.log" 60; }
[ "${njobs:-0}" -gt 1 ] || fail "SLURMGraph submitted ${njobs:-0} jobs (expected one per workflow node)"
grep -q "qalas-bids finished successfully" "${LOGS}/slurmgraph.log" \
    || fail "${LOGS}/slurmgraph.log lacks 'qalas-bids finished successfully'"
bad_logs=$(grep -l Traceback "${WORK_GRAPH}"/*/batch/batchscript_*.sh.[eo] 2> /dev/null || true)
if [ -n "${bad_logs}" ]; then
    fail "Traceback in SLURMGraph job logs"
    for f in ${bad_logs}; do show "${f}" 30; done
fi
check_derivatives "${OUT_GRAPH}" 01
check_validator "${OUT_GRAPH}"
phase ""

# ------------------------------------------------------------------------ summary
echo "=== timings"
printf '  %s\n' "${TIMINGS[@]}"
awk -v a="${T_TOTAL}" -v b="$(date +%s.%N)" 'BEGIN {printf "  %6.1f s  total\n", b - a}'
SUMMARY_DONE=1
if [ "${#FAILURES[@]}" -gt 0 ]; then
    slurm_cluster_logs "${CLUSTER}" 15 || true
    echo "=== slurm-test: FAIL (${#FAILURES[@]} problem(s))"
    printf '  - %s\n' "${FAILURES[@]}"
    exit 1
fi
echo "=== slurm-test: PASS (array job ${ARRAY_JOB}, group job ${GROUP_JOB}, SLURMGraph ${njobs} jobs)"
