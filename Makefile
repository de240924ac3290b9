# Two entry points: `make run` (pipeline on the built-in phantom cohort) and `make test` (pytest).
# Both create .venv with the pinned dependencies first; torch is installed on its own, pinned, so that
# no other package can pull the multi-GB CUDA build.
# Any CPython 3.11-3.13 works (`make test PYTHON=python3.12`); a .venv made with another version is not reused.
PYTHON ?= python3.11
VENV ?= .venv
CORES ?= 2
BIN := $(VENV)/bin
# Text files (sources, configs, manifests with non-ASCII paths) are UTF-8 whatever the machine's locale says.
export PYTHONUTF8 := 1
PYVER := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
STAMP := $(VENV)/.installed-py$(PYVER)

.PHONY: venv run test lint clean-results

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml tools/install_pyradiomics.sh
	@test -n "$(PYVER)" || { echo "$(PYTHON) not found: set PYTHON=python3.X"; exit 1; }
	@if [ -x $(BIN)/python ] && [ "$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != "$(PYVER)" ]; then \
	  echo "$(VENV) holds another Python than $(PYTHON) ($(PYVER)): remove it or set VENV=.venv-$(PYVER)"; exit 1; fi
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# pyradiomics 3.0.1 from source against the installed numpy, the same way on 3.11-3.13 (see the script).
	bash tools/install_pyradiomics.sh $(BIN)/python
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
