# Two set-up commands for a newcomer: `make demo` and `make test`. Each builds the project venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.guardrt-installed
PYTEST_ARGS ?=

.PHONY: venv test test-fast demo bench bench-serve gpu-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not triton" $(PYTEST_ARGS)

demo: venv
	$(PY) -m guardrt demo

clean:
	rm -rf build *.egg-info .pytest_cache
