# Two entry points: `make run` (pipeline on the built-in phantom cohort) and `make test` (pytest).
# Both create .venv with the pinned dependencies first; torch is installed on its own, pinned, so that
# no other package can pull the multi-GB CUDA build.
PYTHON ?= python3.11
VENV ?= .venv
CORES ?= 2
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint clean-results

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# pyradiomics 3.0.1 builds only against the already installed numpy (its PyPI 3.1.0 sdist is broken).
	$(BIN)/python -m pip install --quiet --no-build-isolation pyradiomics==3.0.1
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

run: venv
	$(BIN)/snakemake --cores $(CORES)

# lint-imports checks the layers contract in pyproject.toml (arrows point down only) before the tests run.
test: venv
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/snakemake --lint

clean-results:
	rm -rf results/cohorts results/manifests results/cache results/qc results/logs
