# Two commands on a fresh machine: `make test` and `make demo`. Each creates or updates .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hmt-installed

.PHONY: test lint faults demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Habits as checks, configured in pyproject.toml: the wings' layers contract (an import that runs back up fails the
# build), ruff, and mypy (which reads the CLI's folder cli/ as the package hmt_cli through a link under build/).
lint: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check .
	mkdir -p build/mypy && ln -sfn ../../cli build/mypy/hmt_cli
	$(BIN)/mypy

# Fault injection: each tests/faults/*.patch plants a deliberate fault in a copy of the source, and the tests its
# header names must fail on it (tests/faults/run.py; under a minute). tests/test_faults.py keeps the patches applying.
faults: $(STAMP)
	$(BIN)/python tests/faults/run.py

test: lint faults
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/hmt demo

clean:
	rm -rf $(VENV) build *.egg-info
