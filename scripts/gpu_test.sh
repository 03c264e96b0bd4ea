#!/usr/bin/env bash
# The GPU tier (tests marked `gpu`) with the card's name and a per-stage timing table, then
# the throughput benchmark on the card (benchmarks/bench_throughput.py).
#
#   make gpu-test                      # a workstation: .venv (make install TORCH_SPEC=torch
#                                      # for a CUDA build of torch)
#   make gpu-test GPU_PYTHON=python3   # an offline GPU machine whose python3 has CUDA torch;
#                                      # missing libraries as wheels in .whl/ (scripts/gpu_wheels.sh)
# Without a CUDA GPU every test skips with the reason (QALAS_GPU_TIER_ON_CPU=1: dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PYTHON:-}
if [ -z "$PY" ]; then
    make install
    PY=.venv/bin/python
fi
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    site=${TMPDIR:-/tmp}/qalas-gpu-site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" MPLBACKEND=Agg PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || \
    echo "gpu-test: nvidia-smi not found"
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none')"
"$PY" -m pytest -m gpu -v -rs -p no:cacheprovider --durations=10 ${PYTEST_ARGS:-} tests
# Throughput rows of docs/performance.md (issue 15): real CLI, 1 mm digital brain, one subject
# per call and a cohort in one call, with GPU utilisation. QALAS_GPU_BENCH=0 skips it.
if [ "${QALAS_GPU_BENCH:-1}" != 0 ] && "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    "$PY" benchmarks/bench_throughput.py --device cuda --subjects "${QALAS_GPU_BENCH_SUBJECTS:-8}" \
        --single 2 --fit-modes pretrained scan-specific --json "${OUT:-${TMPDIR:-/tmp}}/throughput-gpu.json"
fi
