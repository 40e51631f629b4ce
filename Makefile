# deepfix: `make demo` runs the main job end to end on the local stack; `make test` runs the
# test suite. Both do all set-up from a fresh clone and are fast when it is already done.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.deepfix-installed
# torch first and pinned: on these machines torch==2.13.0 is a local CPU wheel, and a looser
# spec resolved by pip later would pull a multi-GB CUDA build. GPU users: install your CUDA
# build of torch into the venv first (see README); this line then finds it satisfied.
TORCH  ?= torch==2.13.0

CHROMIUM ?= /usr/bin/chromium
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint typecheck bench up down status clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

setup: $(STAMP)

demo: setup
	$(PY) -m deepfix.demo

# The browser tests drive Debian's chromium (never a browser that playwright downloads).
$(CHROMIUM):
	@echo "installing Debian's chromium for the browser tests"
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium

test: setup $(CHROMIUM)
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: setup
	$(BIN)/mypy config_store deepfix jobs serve bench

# Each script measures its baseline in the same run and rewrites its own section of
# docs/benchmarks.md. Run them on a quiet machine.
bench: setup
	$(PY) -m bench.config_store --doc
	$(PY) -m bench.prepare --doc
	$(PY) -m bench.prepare --no-faces --doc
	$(PY) -m bench.train --doc
	$(PY) -m bench.infer --doc
	$(PY) -m bench.serve --doc

up: setup
	$(BIN)/deepfix up

status: setup
	$(BIN)/deepfix status

down: setup
	$(BIN)/deepfix down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts *.egg-info
