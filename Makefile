# Set-up and entry points. `make demo` and `make test` create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: venv test demo lint format clean-venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

# One run on 2 workers: the slow end-to-end tests start first (tests/conftest.py orders them
# first; --no-loadscope-reorder keeps that order), the fast ones fill the gaps. `-m slow` or
# `-m "not slow"` in PYTEST_ADDOPTS runs one set; exit status 5 (no test selected, e.g. with
# PYTEST_ADDOPTS="-k ...") is not a failure.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup --no-loadscope-reorder || [ $$? -eq 5 ]

demo: $(STAMP)
	bash experiments/digits/demo.sh

# ruff (lint and format) and mypy (types; its settings in pyproject.toml's [tool.mypy])
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean-venv:
	rm -rf $(VENV)
