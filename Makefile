# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP_CORE := $(VENV)/.installed-core
STAMP_TEST := $(VENV)/.installed-test

.PHONY: demo test test-all lint bench accuracy clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel

# Core install: inference, simulation, demo. No torch.
$(STAMP_CORE): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Test install: + torch (train extra; pinned to the local CPU wheel), bm3d, pytest, ruff, mypy.
$(STAMP_TEST): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@ $(STAMP_CORE)

demo: $(STAMP_CORE)
	$(BIN)/bluesky-tomogan demo --out tomogan-demo

# The suite in TEST_WORKERS processes (pytest-xdist): 13-16 instead of 19-23 min on 2 cores, since much
# of it waits on subprocesses, servers and threads. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

test: $(STAMP_TEST)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q -n $(TEST_WORKERS)

# Everything, including slow tests (training runs, exports that need TensorFlow).
test-all: $(STAMP_TEST)
	$(BIN)/pip install --quiet -e ".[test,export]"
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "slow or not slow"

lint: $(STAMP_TEST)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

accuracy: $(STAMP_TEST)
	$(BIN)/python benchmarks/accuracy.py --json benchmarks/results/accuracy.json

bench: $(STAMP_TEST)
	$(BIN)/pip install --quiet -e ".[export,bench]"
	$(BIN)/python benchmarks/speed.py --json benchmarks/results/speed.json --plot docs/speed.png

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache .mypy_cache tomogan-demo
