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

# On a host with an NVIDIA GPU: install the gpu extra (TensorRT 10.5 comes from NVIDIA's pip index and needs Python
# 3.8-3.12: one line says so when it cannot install), run the gpu-marked tests, check the Triton container's TensorRT,
# build fp16/int8 engines for the demo models, compare them with ONNX Runtime fp32 (and fp16 pinned / unpinned /
# strongly typed side by side), benchmark, print the Triton container command. Without a GPU: one line, exit 3,
# nothing installed. A quick smoke run: make gpu-check GPU_CHECK_ARGS="--size tiny"
GPU_CHECK_ARGS ?=
gpu-check: venv
	$(PY) benchmarks/gpu_check.py --probe
	$(PY) benchmarks/gpu_check.py --install
	$(PY) -m pytest -q -m gpu tests/
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Benchmarks are programs (tables + benchmarks/results/*.json + PNG), not tests. BENCH_ARGS passes options through.
BENCH_ARGS ?=
bench: venv
	$(PY) benchmarks/inprocess.py $(BENCH_ARGS)

bench-serve: venv
	$(PY) benchmarks/serve.py $(BENCH_ARGS)

clean:
	rm -rf build *.egg-info .pytest_cache
