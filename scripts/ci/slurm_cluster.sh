#!/bin/bash
# A real single-node SLURM cluster for CI (Debian 12, root, no systemd), as described in
# shared/SLURM_CI.md: Debian's slurmctld/slurmd/slurm-client/munge packages, slurm.conf
# written per run into a fresh directory, daemons stopped by PID (never by name).
#
#   bash scripts/ci/slurm_cluster.sh start DIR   # install if needed, configure, start, wait idle
#   bash scripts/ci/slurm_cluster.sh stop DIR    # stop the daemons started by `start DIR`
#   bash scripts/ci/slurm_cluster.sh status DIR  # sinfo/squeue against DIR/slurm.conf
#
# or `source` it and call slurm_cluster_start / slurm_cluster_stop / slurm_cluster_logs.
# Clients need `export SLURM_CONF=DIR/slurm.conf` (start prints it; sourcing exports it).
#
# Environment: SLURM_CI_START_TIMEOUT (s, default 60) for the node to become idle;
# SLURM_CI_CTLD_PORT / SLURM_CI_SLURMD_PORT (default 6817 / 6818, SLURM's own defaults).

SLURM_CI_PACKAGES=(slurmctld slurmd slurm-client munge)
SLURM_CI_MUNGE_PID=/run/munge/munged.pid

_slurm_ci_log() { echo "slurm_cluster: $*" >&2; }

# Install the Debian packages when a command is missing. Fails loudly, never skips.
slurm_cluster_install() {
    local missing=0 cmd
    for cmd in slurmctld slurmd sbatch squeue sinfo scontrol scancel munged mungekey; do
        command -v "${cmd}" > /dev/null 2>&1 || PATH="${PATH}:/usr/sbin:/sbin" command -v "${cmd}" > /dev/null 2>&1 || missing=1
    done
    if [ "${missing}" = 0 ]; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        _slurm_ci_log "error: SLURM/munge are not installed and this is not root: install ${SLURM_CI_PACKAGES[*]}"
        return 1
    fi
    if ! command -v apt-get > /dev/null 2>&1; then
        _slurm_ci_log "error: SLURM/munge are not installed and there is no apt-get (Debian/Ubuntu expected)"
        return 1
    fi
    _slurm_ci_log "installing ${SLURM_CI_PACKAGES[*]} with apt-get"
    if ! apt-get update -qq; then
        _slurm_ci_log "error: apt-get update failed"
        return 1
    fi
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
            --no-install-recommends "${SLURM_CI_PACKAGES[@]}"; then
        _slurm_ci_log "error: apt-get install ${SLURM_CI_PACKAGES[*]} failed"
        return 1
    fi
}

_slurm_ci_pid_alive() {  # pid file -> 0 when it names a running process
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1" 2> /dev/null) || return 1
    [[ "${pid}" =~ ^[0-9]+$ ]] && kill -0 "${pid}" 2> /dev/null
}

_slurm_ci_write_conf() {
    local dir=$1 host cpus mem_total mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem_total=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)  # = free -m total
    mem=$((mem_total - 2048))
    [ "${mem}" -ge 1024 ] || mem=1024
    cat > "${dir}/slurm.conf" << EOF
ClusterName=ci
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${SLURM_CI_CTLD_PORT:-6817}
SlurmdPort=${SLURM_CI_SLURMD_PORT:-6818}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/backfill
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=${dir}/state
SlurmdSpoolDir=${dir}/spool
SlurmctldPidFile=${dir}/slurmctld.pid
SlurmdPidFile=${dir}/slurmd.pid
SlurmctldLogFile=${dir}/slurmctld.log
SlurmdLogFile=${dir}/slurmd.log
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# The last lines of each daemon log (for failure messages).
slurm_cluster_logs() {  # DIR [lines]
    local dir=$1 lines=${2:-40} log
    for log in "${dir}/slurmctld.log" "${dir}/slurmd.log"; do
        echo "----- ${log} (last ${lines} lines) -----" >&2
        tail -n "${lines}" "${log}" >&2 2> /dev/null || echo "(missing)" >&2
    done
    echo "----- sinfo -----" >&2
    sinfo 2>&1 | sed 's/^/  /' >&2 || true
}

slurm_cluster_start() {
    local dir=${1:?usage: slurm_cluster_start DIR}
    local timeout=${SLURM_CI_START_TIMEOUT:-60} waited=0 state=""
    export PATH="${PATH}:/usr/sbin:/sbin"
    slurm_cluster_install || return 1
    if [ "$(id -u)" != 0 ]; then
        _slurm_ci_log "error: the CI cluster runs its daemons as root (SlurmUser=root)"
        return 1
    fi
    mkdir -p "${dir}"
    dir=$(cd "${dir}" && pwd)
    if [ -e "${dir}/slurm.conf" ]; then
        _slurm_ci_log "error: ${dir} already holds a slurm.conf: use a fresh directory per run"
        return 1
    fi
    mkdir -p "${dir}/state" "${dir}/spool"
    _slurm_ci_write_conf "${dir}"
    export SLURM_CONF="${dir}/slurm.conf"

    # munge: one key per machine, one munged (reused when one already runs).
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile=/etc/munge/munge.key || { _slurm_ci_log "error: mungekey failed"; return 1; }
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    install -d -o munge -g munge -m 0755 /run/munge
    if _slurm_ci_pid_alive "${SLURM_CI_MUNGE_PID}"; then
        _slurm_ci_log "munged already runs (pid $(cat "${SLURM_CI_MUNGE_PID}")): reusing it, it will not be stopped"
    else
        runuser -u munge -- /usr/sbin/munged || { _slurm_ci_log "error: munged did not start"; return 1; }
        # Only a munged started here is stopped by slurm_cluster_stop.
        cp "${SLURM_CI_MUNGE_PID}" "${dir}/munged.pid"
    fi

    slurmctld -i || { _slurm_ci_log "error: slurmctld did not start"; slurm_cluster_logs "${dir}"; return 1; }
    slurmd || { _slurm_ci_log "error: slurmd did not start"; slurm_cluster_logs "${dir}"; return 1; }

    while :; do
        state=$(sinfo -h -o %T 2> /dev/null || true)
        [ "${state}" = idle ] && break
        if [ "${waited}" -ge $((timeout * 2)) ]; then
            _slurm_ci_log "error: the node is not idle after ${timeout} s (state '${state}')"
            slurm_cluster_logs "${dir}"
            return 1
        fi
        sleep 0.5
        waited=$((waited + 1))
    done
    _slurm_ci_log "cluster up in ${dir} (node $(hostname -s), $(nproc) CPUs); export SLURM_CONF=${SLURM_CONF}"
}

_slurm_ci_stop_pid() {  # name pid-file: TERM, wait up to 10 s, then KILL, by PID only
    local name=$1 file=$2 pid i
    _slurm_ci_pid_alive "${file}" || return 0
    pid=$(cat "${file}")
    kill -TERM "${pid}" 2> /dev/null || true
    for i in $(seq 1 40); do
        kill -0 "${pid}" 2> /dev/null || { _slurm_ci_log "stopped ${name} (pid ${pid})"; return 0; }
        sleep 0.25
    done
    _slurm_ci_log "${name} (pid ${pid}) ignored TERM: KILL"
    kill -KILL "${pid}" 2> /dev/null || true
}

slurm_cluster_stop() {
    local dir=${1:?usage: slurm_cluster_stop DIR}
    [ -d "${dir}" ] || return 0
    _slurm_ci_stop_pid slurmd "${dir}/slurmd.pid"
    _slurm_ci_stop_pid slurmctld "${dir}/slurmctld.pid"
    _slurm_ci_stop_pid munged "${dir}/munged.pid"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    case "${1:-}" in
        start) slurm_cluster_start "${2:?usage: $0 start DIR}" ;;
        stop) slurm_cluster_stop "${2:?usage: $0 stop DIR}" ;;
        status)
            export SLURM_CONF="${2:?usage: $0 status DIR}/slurm.conf"
            sinfo && squeue ;;
        *)
            echo "usage: $0 {start|stop|status} DIR" >&2
            exit 2 ;;
    esac
fi
