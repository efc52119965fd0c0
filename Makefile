# segbench: `make run` runs the demo study, `make test` runs the tests. Both set up .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= config/demo.yaml
CORES  ?= all
# Slots of the `gpu` resource: one per NVIDIA GPU; on a machine without one, one per CPU core, so that the
# GPU jobs (train, evaluate; one thread each there) share the cores instead of queueing for a GPU that is not there.
GPUS   ?= $(shell n=$$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true); [ "$${n:-0}" -gt 0 ] && echo $$n || nproc)
PIP_QUIET ?= -q
SHELL  := bash
.SHELLFLAGS := -eo pipefail -c
# pip's notes about absent local index folders are noise.
QUIET_PIP := { grep -v '^WARNING: Location' || true; }

.PHONY: setup run test lint mlflow-ui gpu-check clean

setup: $(STAMP)

# Re-installs only when the package metadata changes; a second `make setup` does nothing.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import segmodels, torch, torchvision, mlflow"
	touch $@

# The rules call `segmodels`, so the environment's bin/ goes first on PATH.
run: setup
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --resources gpu=$(GPUS) \
		--configfile $(CONFIG) --rerun-incomplete --show-failed-logs

# The tests run in TEST_WORKERS processes (one per core, at most 4), each test file whole in one of them; the tests
# marked serial (the SLURM cluster, which keeps its own time budget) run first, alone.
TEST_WORKERS ?= $(shell n=$$(nproc); echo $$(( n < 4 ? n : 4 )))
test: setup
	$(BIN)/python -m pytest -q -m serial
	$(BIN)/python -m pytest -q -m "not serial" -n $(TEST_WORKERS) --dist loadfile

lint: setup
	$(BIN)/ruff check segmodels tests

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///results/mlflow.db --default-artifact-root results/mlartifacts --host 127.0.0.1

# A few minutes on a lent GPU machine: results/gpu-check/report.{md,json}. `make gpu-check GPU_CHECK_ARGS=--plan`
# shows what it runs; GPU_CHECK_ARGS="--only latency,ddp" reruns some sections.
gpu-check: setup
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf results logs reports/figures reports/report.pdf .snakemake
