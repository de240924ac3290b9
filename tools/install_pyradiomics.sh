#!/usr/bin/env bash
# Installs pyradiomics 3.0.1 into the environment of PYTHON (default: the `python` on PATH), the same way on every
# Python version (3.11, 3.12, 3.13): the published 3.0.1 source, checked against its sha256, built against the
# numpy already installed there. Used by the Makefile (`tools/install_pyradiomics.sh .venv/bin/python`) and, as
# envs/taskalign.post-deploy.sh (a link to this file), by `snakemake --sdm conda` in the activated conda env.
#
# Why not a plain `pip install pyradiomics`: PyPI has no pyradiomics wheel for Python >= 3.10, its 3.1.0 sdist
# is broken (reports version 3.0.1a1), and the 3.0.1 sdist's setup.py imports numpy (so pip's isolated build
# fails: hence --no-build-isolation, which needs setuptools installed; Python >= 3.12 venvs have none). On Python
# >= 3.12 its bundled versioneer (build time only, not installed) calls configparser.SafeConfigParser and
# ConfigParser.readfp, both removed in 3.12: the build runs with a sitecustomize that restores the two names as
# aliases of ConfigParser / read_file (a no-op on 3.11). pyradiomics' own code and C sources are built unchanged.
set -euo pipefail

py=${1:-python}
pyradiomics=3.0.1
sdist_sha256=47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5  # pyradiomics-3.0.1.tar.gz
setuptools=84.2.1   # still ships setuptools.command.test and the distutils shim that 3.0.1's setup.py imports

"$py" -c 'import numpy' 2>/dev/null || { echo "install_pyradiomics.sh: install numpy into $py first" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/compat"
cat > "$tmp/compat/sitecustomize.py" <<'EOF'
import configparser
if not hasattr(configparser, "SafeConfigParser"):
    configparser.SafeConfigParser = configparser.ConfigParser
if not hasattr(configparser.RawConfigParser, "readfp"):
    configparser.RawConfigParser.readfp = configparser.RawConfigParser.read_file
EOF
echo "pyradiomics==$pyradiomics --hash=sha256:$sdist_sha256" > "$tmp/requirements.txt"

"$py" -m pip install --quiet "setuptools==$setuptools"
# The source build, hash-checked (--no-deps: hash mode would want hashes for the dependencies too) ...
PYTHONPATH="$tmp/compat${PYTHONPATH:+:$PYTHONPATH}" \
  "$py" -m pip install --quiet --no-deps --no-build-isolation --no-binary pyradiomics --require-hashes \
  -r "$tmp/requirements.txt"
# ... then its dependencies (PyWavelets, pykwalify, six; numpy and SimpleITK are already there).
"$py" -m pip install --quiet "pyradiomics==$pyradiomics"
"$py" -c 'import radiomics, radiomics._cmatrices, radiomics._cshape; print("pyradiomics", radiomics.__version__)'
