# Two commands: `make run` (install + start the gateway on the embedded defaults) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test install lint bench

$(STAMP): pyproject.toml tests/node/package-lock.json
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# CPU torch first: a bare torch requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# the openai npm SDK for tests/gateway/test_node_sdk.py (skipped where there is no npm)
	if command -v npm >/dev/null; then npm ci --prefix tests/node --no-audit --no-fund --silent; fi
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/flywheel --config config.toml serve

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check gateway policies retrieval learners flywheel tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
