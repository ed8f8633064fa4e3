# Two entry points for a fresh machine: `make story` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PROMPT ?= Once upon a time
# torch is pinned in the same pip command as everything else (an unpinned torch pulls a CUDA build).
TORCH ?= torch==2.13.0

.PHONY: story test setup setup-dev clean

$(BIN)/tinytales: pyproject.toml setup.py tinytales/_decode.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" -e .
	touch $@

$(VENV)/.dev: pyproject.toml setup.py tinytales/_decode.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)" -e ".[dev]"
	touch $@

setup: $(BIN)/tinytales
setup-dev: $(VENV)/.dev

story: setup
	$(BIN)/tinytales generate "$(PROMPT)"

test: setup-dev
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) .pytest_cache
