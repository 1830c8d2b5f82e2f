"""How long opening an export takes with lmfast's ONNX Runtime ops, and the peak RSS it costs.

Each load runs in a fresh process (so peak RSS is that load's alone), alternating, `--rounds`
times: "first" with an empty `$LMFAST_CACHE` (the graph is rewritten and its cache entry written),
"cached" (the entry is opened), and "stock" (`LMFAST_NATIVE_OPS=0`: ONNX Runtime's own ops on the
file as it is). `--before REPO` adds a checkout of another lmfast (one that rewrites in memory on
every load) as "before". os.getloadavg() is printed beside each round.

    python benchmarks/bench_native_ops_load.py EXPORT_DIR [--rounds 3] [--before /path/to/lmfast]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = """
import json, resource, sys, time
from lmfast.generation import Generator
start = time.perf_counter()
generator = Generator.load(sys.argv[1])
print(json.dumps({"seconds": time.perf_counter() - start, "swapped": generator.backend.swapped_ops,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _load_once(export: Path, repo: Path, cache: Path, native: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "LMFAST_CACHE": str(cache)}
    if not native:
        env["LMFAST_NATIVE_OPS"] = "0"
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(export)],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="an ONNX export directory (e.g. a --precision bf16 one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another lmfast checkout to time as 'before'")
    args = parser.parse_args(argv)
    if not (args.export / "model.onnx").is_file():
        parser.error(f"{args.export}: no model.onnx in this directory")
    cache = Path(tempfile.mkdtemp(prefix="lmfast-load-bench-"))
    try:
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}, load average {os.getloadavg()[0]:.2f}")
            contenders = [("before", args.before, True)] if args.before else []
            contenders += [("first", REPO, True), ("cached", REPO, True), ("stock", REPO, False)]
            for name, repo, native in contenders:
                if name == "first":
                    shutil.rmtree(cache / "native_ops", ignore_errors=True)
                figures = _load_once(args.export, repo, cache, native)
                print(
                    f"  {name:7s} {figures['seconds']:6.2f} s  peak RSS {figures['peak_rss_mb']:6.0f} MB"
                    f"  ops swapped {figures['swapped']}"
                )
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
