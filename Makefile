# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test check fmt perf perf-quick clean

$(VENV)/.base: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(VENV)/bin/hidra-ng demo

test: $(VENV)/.test
	$(PY) -m pytest -q -p no:cacheprovider

# ruff (lint + format), mypy (strict for wire/ and the state machines), import-linter
# (the layering of STYLE.md, pyproject.toml [tool.importlinter]), then the fast tests
check: $(VENV)/.test
	$(VENV)/bin/ruff check hidra_ng tests perf examples
	$(VENV)/bin/ruff format --check hidra_ng tests perf examples
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

fmt: $(VENV)/.test
	$(VENV)/bin/ruff check --fix hidra_ng tests perf examples
	$(VENV)/bin/ruff format hidra_ng tests perf examples

perf: $(VENV)/.test
	$(PY) perf/run.py

perf-quick: $(VENV)/.test
	$(PY) perf/run.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
