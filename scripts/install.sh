#!/usr/bin/env bash
# Installs lmfast with every extra into the current Python, from scratch, on a CPU-only machine.
# torch is pinned first: a bare `torch` requirement would pull a multi-GB CUDA build, while
# torch==2.13.0 resolves to a local CPU wheel here in seconds. Later requirements (`torch>=2.4`)
# are then already satisfied.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
"$PY" -m pip install -q "torch==2.13.0"
# LMFAST_REQUIRE_NATIVE=1: a failed Cython build is an error, not a silent fallback to Python
LMFAST_REQUIRE_NATIVE=1 "$PY" -m pip install -q -e ".[all]"
"$PY" -c "import lmfast.data._chunking" || { echo "install.sh: native kernels did not build" >&2; exit 1; }
