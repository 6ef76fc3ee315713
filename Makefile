PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SAMPLE ?= src/ctriage/testing/data/sample_ct.nii.gz

.PHONY: venv install install-train demo test lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"

install-train: install
	$(BIN)/pip install -q -e ".[train]"

## Analyse the bundled sample CT (or SAMPLE=path) into out/demo
demo: install
	$(BIN)/ctriage analyze $(SAMPLE) -o out/demo

## Run the whole test suite (what CI runs)
test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/analyze_speed.py
