# qalas-bids developer entry points. Two commands for a newcomer:
#   make demo   - create .venv, install, generate the demo BIDS dataset, run the app on it
#   make test   - create .venv, install with test extras, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build of torch for tests/CI (the Docker image installs a CUDA build instead).
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= demo
DEMO_RES ?= 2
DEMO_SNR ?= 60
PYTEST_ARGS ?=

.PHONY: install demo test gpu-test slurm-test container-test bench clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(BIN)/.installed

demo: install
	rm -rf "$(DEMO_DIR)/bids"
	$(BIN)/qalas-bids-demo-data "$(DEMO_DIR)/bids" --resolution $(DEMO_RES) --snr $(DEMO_SNR) --seed 0
	$(BIN)/qalas-bids "$(DEMO_DIR)/bids" "$(DEMO_DIR)/out" participant -w "$(DEMO_DIR)/work" --nprocs 2
	$(BIN)/python -m qalas_bids.cli.demo_accuracy "$(DEMO_DIR)/bids" "$(DEMO_DIR)/out"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# GPU tier (needs a CUDA GPU; on a CPU-only machine every test skips with the reason).
# On an offline GPU machine: make gpu-test GPU_PYTHON=python3 (see scripts/gpu_test.sh).
GPU_PYTHON ?=
gpu-test:
	GPU_PYTHON="$(GPU_PYTHON)" PYTEST_ARGS="$(PYTEST_ARGS)" bash scripts/gpu_test.sh

# A real single-node SLURM cluster (Debian packages, root): array job + group level +
# nipype's SLURMGraph plugin on a generated dataset.
slurm-test: install
	bash scripts/ci/slurm_test.sh

# A real podman build of the Dockerfile on a locally made Debian base, then the image
# run on the demo (leaves qalas-bids:latest in podman's store).
container-test:
	bash scripts/ci/container_test.sh

bench: install
	$(BIN)/python benchmarks/bench_dictionary.py
	$(BIN)/python benchmarks/bench_fit.py
	$(BIN)/python benchmarks/bench_throughput.py --subjects 2 --nprocs 2

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
