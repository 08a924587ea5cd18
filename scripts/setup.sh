#!/usr/bin/env bash
# Create .venv (if missing), install torch and the build/test dependencies, and build cosmos-engine
# in editable mode against that torch. Re-running is cheap: pip skips what is installed and the
# CMake build directory (build/) is incremental.
#
#   TORCH_SPEC=torch==2.14.1   the torch to install (its CUDA build lets the CUDA kernels compile)
#   COSMOS_ENGINE_CUDA=AUTO    AUTO | ON | OFF: build the CUDA kernels (ON fails when it cannot)
#   PYTHON=python3             the interpreter that creates the venv
#   EXTRAS=test                the optional dependency groups to install (e.g. test,dali)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-test}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
# This machine's pip configuration names local package folders that may not exist; drop that noise.
exec 2> >(grep --line-buffered -v "is ignored: it is neither a file nor a directory" >&2)
"${PIP[@]}" install -q --upgrade pip
"${PIP[@]}" install -q "$TORCH_SPEC" "scikit-build-core>=0.10" "cmake>=3.26" ninja
# CUTLASS/CuTe headers only: the wheel's Python dependencies are not needed to compile against them.
"${PIP[@]}" install -q --no-deps nvidia-cutlass==4.2.0.0
"${PIP[@]}" install -q --no-build-isolation -e ".[$EXTRAS]"
"$VENV/bin/cosmos-engine" info
