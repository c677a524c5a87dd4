# distst: `make demo` and `make test` work on a fresh Debian/Ubuntu machine with Python 3.11 and no GPU.
# Install order matters: DeepSpeed's sdist imports torch while it builds, so torch goes in first and
# DeepSpeed is built with --no-build-isolation (against that torch) and DS_BUILD_OPS=0 (no C++/CUDA ops
# are pre-built; distst passes a torch optimizer, so none is ever needed on a CPU).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# The versions distst is tested with. A laptop may prefer the CPU-only wheels:
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
TORCH_INDEX ?=
PIP := $(BIN)/python -m pip --disable-pip-version-check
STAMP := $(VENV)/.distst-installed
PYTEST_ARGS ?=
# Two pytest-xdist workers (tests that share the Slurm cluster or Ray stay on one worker); PYTEST_JOBS= runs
# everything in one process.
PYTEST_JOBS ?= -n 2 --dist loadgroup

export DS_ACCELERATOR ?= cpu
export DS_BUILD_OPS ?= 0

.PHONY: install demo test test-fast test-integration test-cluster lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel "setuptools>=77"
	$(PIP) install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install -q --no-build-isolation deepspeed
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/distst imp jobs/local/imp_adain.yaml

# Every layer (CI); the slowest tests are listed at the end.
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_JOBS) --durations=15 $(PYTEST_ARGS)

# The edit-test loop: tests/unit only (no process group, no DeepSpeed engine, no services).
test-fast: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_JOBS) $(PYTEST_ARGS) tests/unit

test-integration: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_JOBS) $(PYTEST_ARGS) tests/integration

test-cluster: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_JOBS) $(PYTEST_ARGS) tests/cluster

lint: $(STAMP)
	$(BIN)/ruff check distst tests tune

bench: $(STAMP)
	$(BIN)/distst bench all

clean:
	rm -rf $(VENV) runs .pytest_cache
