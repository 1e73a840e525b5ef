# Two commands, both work on a fresh machine: `make demo` and `make test`.
# The first run creates .venv and installs everything (PyTorch first, pinned, then the package).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint install

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/serve-drift demo

# Two runs: one Ray for the unit and integration tests, then the multi-node cluster tests
# (a cluster needs a Ray of its own).
test: $(VENV)/.installed
	$(BIN)/pytest
	$(BIN)/pytest -m multinode tests/multinode

lint: $(VENV)/.installed
	$(BIN)/ruff check serve_drift tests benchmarks
	$(BIN)/mypy serve_drift
