# Two commands for a newcomer (see README, "Quick start"):
#   make demo   set up .venv (pinned torch + the project) and segment a phrase on the example photo
#   make test   set up .venv with every extra and run the whole test suite (what CI runs)
# Other targets: make test-fast (the tests not marked slow, about a minute), make lint (ruff,
# format check, mypy), make wheel-check (build the wheel and try it in a fresh virtual
# environment), make ci (lint, test, wheel-check), make clean.
# The environment is set up by scripts/setup.sh, once per change of pyproject.toml.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PYTHON VENV

.PHONY: help demo test test-fast lint wheel-check ci clean

help:
	@sed -n '1,9p' Makefile

demo: $(VENV)/.setup-base
	scripts/demo.sh

test: $(VENV)/.setup-all
	$(BIN)/python -m pytest -q

test-fast: $(VENV)/.setup-all
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(VENV)/.setup-all
	$(BIN)/ruff check .
	$(BIN)/ruff format --check $$(git ls-files '*.py')
	$(BIN)/mypy src/hybridgl

wheel-check: $(VENV)/.setup-all
	PY_BUILD=$(BIN)/python scripts/check_wheel.sh

ci: lint test wheel-check

# base: the project alone; all: every extra in pyproject.toml
$(VENV)/.setup-%: pyproject.toml scripts/setup.sh scripts/extras.py
	scripts/setup.sh $*
	@touch $@

clean:
	rm -rf build dist demo-out .pytest_cache .mypy_cache .ruff_cache
