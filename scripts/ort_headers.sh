#!/usr/bin/env bash
# Prints a directory holding ONNX Runtime's C/C++ API headers (onnxruntime_c_api.h,
# onnxruntime_lite_custom_op.h, ...) that lmfast's custom-op library (csrc/ortops) is built against.
# Order: $LMFAST_ORT_INCLUDE, a system libonnxruntime-dev (/usr/include/onnxruntime), then a cached
# copy of Debian 13's libonnxruntime-dev (1.21; the C API is append-only, so a library built against
# it loads in newer runtimes), fetched once with apt-get under a private configuration: the
# system's apt sources, lists and cache are never touched. Nothing is linked: the library takes the
# API from the OrtApiBase* that RegisterCustomOps receives.
# Cache: ${LMFAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lmfast}/ort-headers. Exit 1 (message on
# stderr) when no headers can be had.
set -euo pipefail
has_headers() { [[ -f "$1/onnxruntime_lite_custom_op.h" && -f "$1/onnxruntime_c_api.h" ]]; }
if [[ -n "${LMFAST_ORT_INCLUDE:-}" ]]; then
    has_headers "$LMFAST_ORT_INCLUDE" || { echo "ort_headers.sh: LMFAST_ORT_INCLUDE=$LMFAST_ORT_INCLUDE has no onnxruntime_lite_custom_op.h" >&2; exit 1; }
    echo "$LMFAST_ORT_INCLUDE"; exit 0
fi
if has_headers /usr/include/onnxruntime; then echo /usr/include/onnxruntime; exit 0; fi
CACHE=${LMFAST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lmfast}/ort-headers
INCLUDE=$CACHE/usr/include/onnxruntime
if has_headers "$INCLUDE"; then echo "$INCLUDE"; exit 0; fi
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || { echo "ort_headers.sh: no apt-get/dpkg-deb to fetch libonnxruntime-dev; set LMFAST_ORT_INCLUDE" >&2; exit 1; }
SOURCES=/etc/apt/sources.list.d/debian.sources
[[ -f $SOURCES ]] || { echo "ort_headers.sh: $SOURCES missing (not Debian?); set LMFAST_ORT_INCLUDE" >&2; exit 1; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lmfast-ort-apt.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/lists/partial" "$WORK/cache/archives/partial"
# the system's own main source (its first stanza), pointed at Debian 13
awk 'NF==0{exit} {print}' "$SOURCES" | sed 's/^Suites:.*/Suites: trixie/' >"$WORK/trixie.sources"
O=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$WORK" -o "Dir::State::Lists=$WORK/lists"
   -o "Dir::Cache=$WORK/cache" -o Debug::NoLocking=1)
if ! (apt-get "${O[@]}" -qq update && cd "$WORK" && apt-get "${O[@]}" -qq download libonnxruntime-dev) >"$WORK/log" 2>&1; then
    echo "ort_headers.sh: could not fetch libonnxruntime-dev from Debian 13: $(tail -n 1 "$WORK/log")" >&2; exit 1
fi
mkdir -p "$CACHE.partial"
dpkg-deb -x "$WORK"/libonnxruntime-dev_*.deb "$CACHE.partial"
has_headers "$CACHE.partial/usr/include/onnxruntime" || { echo "ort_headers.sh: libonnxruntime-dev has no onnxruntime_lite_custom_op.h" >&2; rm -rf "$CACHE.partial"; exit 1; }
rm -rf "$CACHE" && mv "$CACHE.partial" "$CACHE"
echo "$INCLUDE"
