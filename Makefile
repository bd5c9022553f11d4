# The Model Optimization Lab. Every target installs what it needs into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
JOBS   ?= 2
NB     ?=

.PHONY: install report test lab bench paper clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

## Execute every notebook at its default parameters, render HTML, write reports/index.html
report: install
	$(BIN)/python -m nbhelpers.reporting.runner $(NB) --jobs $(JOBS)

## ruff check (modules, tests and notebooks), the layer contract (lint-imports), then unit tests and every notebook through papermill with tests/params/<stem>.yaml
test: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -n $(JOBS) --dist loadgroup

## Execute every notebook at its defaults, one at a time, from an empty model cache, and write docs/benchmarks.md
bench: install
	$(BIN)/python -m nbhelpers.reporting.bench --empty-cache $(NB)

## The papers' own MNIST tables: notebooks at docs/paper/<stem>.yaml (full MNIST), one at a time -> docs/papers.md
paper: install
	$(BIN)/python -m nbhelpers.reporting.paper $(NB)

## JupyterLab on notebooks/ (token authentication stays on; the kernel imports nbhelpers)
lab: install
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)"
	$(BIN)/jupyter lab --notebook-dir=notebooks $(if $(filter 0,$(shell id -u)),--allow-root)

clean:
	rm -rf reports .pytest_cache
