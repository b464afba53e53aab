# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test check fmt perf perf-quick perf-peers perf-peers-quick perf-bridge perf-bridge-quick perf-shards perf-shards-quick clean

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

# hidra_ng beside RabbitMQ streams and NATS JetStream (SPEC §17); installs the Debian
# packages of both brokers as root (without root it says how and exits 2)
$(VENV)/.perf: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[perf]'
	touch $@

perf-peers: $(VENV)/.perf
	$(PY) perf/peers.py

perf-peers-quick: $(VENV)/.perf
	$(PY) perf/peers.py --quick

# the facility bridge against raw rstream publishing (starts its own RabbitMQ node)
perf-bridge: $(VENV)/.test
	$(PY) perf/bridge.py

perf-bridge-quick: $(VENV)/.test
	$(PY) perf/bridge.py --quick

# aggregate ingest over 1, 2 and 3 receivers (SPEC §14) against raw LMDB appends, on tmpfs
perf-shards: $(VENV)/.test
	$(PY) perf/shards.py

perf-shards-quick: $(VENV)/.test
	$(PY) perf/shards.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
