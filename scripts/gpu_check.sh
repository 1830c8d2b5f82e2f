#!/usr/bin/env bash
# The prepared device check (issue 32); see scripts/gpu_check.py and docs/gpu.md.
#   bash scripts/gpu_check.sh --prepare [--wheels]   on a CPU machine: data/bench/gpu_check (+ .whl/)
#   bash scripts/gpu_check.sh                        on the GPU machine: report.json/report.md in $OUT
#   bash scripts/gpu_check.sh --cpu_smoke            every phase at toy sizes on the CPU
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -d .whl ]] && compgen -G ".whl/*.whl" >/dev/null && [[ " $* " != *" --prepare "* ]]; then
  # the serving wheels the GPU image lacks (prepared with --prepare --wheels), never the network
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_check_site .whl/*.whl \
    && export PYTHONPATH="/tmp/gpu_check_site${PYTHONPATH:+:$PYTHONPATH}" \
    || echo "gpu_check: the carried wheels did not install; the serve phase may fail" >&2
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec python3 scripts/gpu_check.py "$@"
