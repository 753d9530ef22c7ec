# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv (if needed) and installs what it needs into it.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test lint pytest slow example bench clean

$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(VENV)/.core
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

## demo: compile the shipped example model with its property and print the report
demo: $(VENV)/.core
	$(BIN)/relugate inspect examples/collision.onnx
	$(BIN)/relugate compile examples/collision.onnx --spec examples/collision.vnnlib \
		-o build/demo --force --verify-each --time-passes

## test: lint, type-check and run the default (fast) test suite
test: lint pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy relugate

pytest: $(VENV)/.dev
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

## slow: the tests marked slow (long soundness sweeps over the public benchmarks)
slow: $(VENV)/.dev
	$(BIN)/python -m pytest -m slow $(PYTEST_ARGS)

## example: regenerate examples/ from compiler/example.py (deterministic)
example: $(VENV)/.core
	$(BIN)/relugate example -o examples

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache

## bench: run every benchmark (hours: verification gives each instance its full
## timeout); JSON and Markdown results land in benchmarks/results/.
## One of them: make bench BENCH=stability
BENCH ?=
bench: $(VENV)/.dev
	OPENBLAS_NUM_THREADS=1 $(BIN)/python -m benchmarks $(BENCH)
