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

.PHONY: install demo test bench clean

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

bench: install
	$(BIN)/python benchmarks/bench_dictionary.py
	$(BIN)/python benchmarks/bench_fit.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
