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

.PHONY: setup run test lint mlflow-ui gpu-check clean wheelhouse

# Machines without an index (GPU nodes): `make wheelhouse [NODE=1] [REPORT=0] [PY=3.12]` where the index is, then
# `make setup|run|gpu-check WHEELHOUSE=wheelhouse [SYSTEM_TORCH=1]` there. tools/wheelhouse.py holds the sets.
WHEELHOUSE   ?=
SYSTEM_TORCH ?=
NODE         ?=
REPORT       ?=
PY           ?=
on = $(filter-out 0 no false,$(1))
WH := $(PYTHON) tools/wheelhouse.py
# From the wheelhouse and nothing else: no index, and no find-links of pip's configuration.
PIP_WH = env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null $(BIN)/python -m pip install $(PIP_QUIET) --no-index \
	--find-links $(abspath $(WHEELHOUSE)) $(if $(call on,$(SYSTEM_TORCH)),-c $(VENV)/system-torch.txt)

setup: $(STAMP)

# Re-installs only when the package metadata changes; a second `make setup` does nothing.
$(STAMP): pyproject.toml $(if $(WHEELHOUSE),$(wildcard $(WHEELHOUSE)/wheelhouse.json))
ifeq ($(WHEELHOUSE)$(call on,$(SYSTEM_TORCH)),)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_QUIET) -e '.[dev]' 2>&1 | $(QUIET_PIP)
	$(BIN)/python -c "import segmodels, torch, torchvision, mlflow"
	touch $@
else
# SYSTEM_TORCH=1: a venv that sees the base interpreter's torch and torchvision and pins them, so pip never
# replaces them. WHEELHOUSE: every other package from that folder (the set it was made as), the project editable.
# The build backend (setuptools) goes into the venv and builds there: an isolated build would see the base's.
	@$(WH) check --venv $(VENV) $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE)) $(if $(call on,$(SYSTEM_TORCH)),--system-torch)
	test -x $(BIN)/python || $(PYTHON) -m venv $(if $(call on,$(SYSTEM_TORCH)),--system-site-packages) $(VENV)
	$(if $(call on,$(SYSTEM_TORCH)),$(WH) link-torch $(VENV))
	$(BIN)/python tools/wheelhouse.py requirements $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE)) > $(VENV)/setup-requirements.txt
ifeq ($(WHEELHOUSE),)
	$(BIN)/python -m pip install $(PIP_QUIET) -c $(VENV)/system-torch.txt -r $(VENV)/setup-requirements.txt 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install $(PIP_QUIET) -c $(VENV)/system-torch.txt --no-build-isolation -e '.[dev]' 2>&1 | $(QUIET_PIP)
else
	$(PIP_WH) -r $(VENV)/setup-requirements.txt
	$(PIP_WH) --no-deps --no-build-isolation -e .
endif
	$(BIN)/python tools/wheelhouse.py verify $(VENV) $(if $(call on,$(SYSTEM_TORCH)),--system-torch)
	touch $@
endif

# Every wheel the project needs for this platform and Python PY (default: PYTHON's) in WHEELHOUSE (default
# wheelhouse/). NODE=1: without torch and torchvision (the node's), MLflow's client only; REPORT=0 with it: without
# Typst and the figures' libraries too, for a node whose report is made elsewhere.
wheelhouse:
	$(WH) build --out $(or $(WHEELHOUSE),wheelhouse) $(if $(call on,$(NODE)),--node) \
		$(if $(filter 0 no false,$(REPORT)),--no-report) $(if $(PY),--python-version $(PY))

# TARGETS: Snakemake's targets (rules or files), default the whole study. In an environment made from a REPORT=0
# wheelhouse, `make run TARGETS="summarize compare"` runs every job but the figures and the report.
TARGETS ?=
# The rules call `segmodels`, so the environment's bin/ goes first on PATH.
run: setup
	$(if $(TARGETS),,$(BIN)/python tools/wheelhouse.py can-report)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/snakemake --cores $(CORES) --resources gpu=$(GPUS) \
		--configfile $(CONFIG) --rerun-incomplete --show-failed-logs $(TARGETS)

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
