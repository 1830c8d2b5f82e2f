"""`bench_prepare.py --files N`: many small files (text, JSONL, Parquet) vs one file; sharded vs one run.

The documents are bench_prepare's Gutenberg corpus (`--mb`, default 8), written once under
`data/bench/files_<N>/` as one delimited file and as N files of each format (contiguous runs of
the documents). Each contender is a fresh `lmfast prepare` process at the same explicit thread count
and reports prepare's own wall time (description.json's `wall_time_s`: interpreter start-up is not
the subject); contenders alternate within each round and the best round counts. Correctness
first: every contender's train `corpus.npy` and start positions must be byte-identical to the
single file's. Sharded: N=2 `--num_shards` processes run at once with half the threads each, then
`lmfast prepare merge`; its time is the slower shard plus the merge (and the outside wall time).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_prepare import BENCH_DIR, DELIMITER, MAX_LEN, MIN_LEN, REPO, build_corpus, read_documents


def _write_inputs(documents: list[str], n_files: int, root: Path) -> dict[str, Path]:
    """One delimited file, and N files per format; returns contender -> input argument."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    done = root / ".complete"
    paths = {
        "single": root / "single.txt",
        "text": root / "text",
        "jsonl": root / "jsonl",
        "parquet": root / "parquet",
    }
    if done.is_file():
        return paths
    shutil.rmtree(root, ignore_errors=True)
    for name in ("text", "jsonl", "parquet"):
        (root / name).mkdir(parents=True)
    paths["single"].write_text("".join(f"{d}\n{DELIMITER}\n" for d in documents), encoding="utf-8")
    for k, part in enumerate(np.array_split(np.arange(len(documents)), n_files)):
        chunk = [documents[i] for i in part]
        stem = f"part-{k:05d}"
        (root / "text" / f"{stem}.txt").write_text(
            "".join(f"{d}\n{DELIMITER}\n" for d in chunk), encoding="utf-8"
        )
        (root / "jsonl" / f"{stem}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in chunk))
        pq.write_table(pa.table({"text": pa.array(chunk, pa.string())}), root / "parquet" / f"{stem}.parquet")
    done.write_text("")
    return paths


def _prepare(train: Path, valid: Path, out: Path, name: str, threads: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    command = [
        sys.executable, "-m", "lmfast.prepare", "--quiet", "--documents_train_file", str(train),
        "--documents_valid_file", str(valid), "--end_of_document", DELIMITER, "--tokenizer_cls_name",
        "GPT2Tokenizer", "--max_sample_length", str(MAX_LEN), "--min_sample_length", str(MIN_LEN),
        "--datasets_root", str(out), "--dataset_name", name, "--num_threads", str(threads), *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen) -> Path:
    out, err = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"lmfast prepare failed: {err.strip()[-2000:]}")
    return Path(out.strip().splitlines()[-1])


def _wall(directory: Path) -> float:
    return float(json.loads((directory / "description.json").read_text())["wall_time_s"])


def _arrays(directory: Path) -> bytes:
    return b"".join(
        (directory / "train" / n).read_bytes() for n in ("corpus.npy", "sample_start_positions.npy")
    )


def _sharded(train: Path, valid: Path, out: Path, threads: int) -> tuple[Path, float, float]:
    """2 shard processes at once (half the threads each), then the merge: (dataset, inner s, outer s)."""
    shutil.rmtree(out / "sharded", ignore_errors=True)
    started = time.perf_counter()
    jobs = [
        _prepare(
            train, valid, out, "sharded", max(1, threads // 2), "--num_shards", "2", "--shard_index", str(i)
        )
        for i in range(2)
    ]
    shards = [_finish(job) for job in jobs]
    shard_seconds = max(_wall(shard) for shard in shards)  # read before the merge removes them
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    merge = subprocess.run(
        [sys.executable, "-m", "lmfast.prepare", "merge", "--quiet", *map(str, shards), "--remove_shards"],
        env=env, cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    outer = time.perf_counter() - started
    merged = Path(merge.stdout.strip().splitlines()[-1])
    return merged, shard_seconds + _wall(merged), outer


def run_files(n_files: int, megabytes: float, rounds: int, threads: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    documents = read_documents(build_corpus(megabytes, f"gutenberg_{megabytes:g}mb"))
    valid = build_corpus(0.2, "gutenberg_valid")
    root = BENCH_DIR / f"files_{n_files}_{megabytes:g}mb"
    inputs = _write_inputs(documents, n_files, root)
    out = BENCH_DIR / "files_out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    best: dict[str, float] = {}
    reference: bytes | None = None
    for round_index in range(rounds):
        for name, train in inputs.items():  # alternate the contenders within each round
            shutil.rmtree(out / name, ignore_errors=True)
            directory = _finish(_prepare(train, valid, out, name, threads))
            if round_index == 0:  # correctness before any figure counts
                arrays = _arrays(directory)
                reference = arrays if reference is None else reference
                if arrays != reference:
                    raise SystemExit(f"{name}: train arrays differ from the single file's")
            best[name] = min(best.get(name, float("inf")), _wall(directory))
        # sharded N=2 vs the single process, on the N text files
        merged, inner, outer = _sharded(inputs["text"], valid, out, threads)
        if round_index == 0 and _arrays(merged) != reference:
            raise SystemExit("sharded + merged train arrays differ from the single file's")
        best["sharded2_inner"] = min(best.get("sharded2_inner", float("inf")), inner)
        best["sharded2_outer"] = min(best.get("sharded2_outer", float("inf")), outer)
        shutil.rmtree(out / "single_outer", ignore_errors=True)
        started = time.perf_counter()
        _finish(_prepare(inputs["text"], valid, out, "single_outer", threads))
        best["text_outer"] = min(best.get("text_outer", float("inf")), time.perf_counter() - started)
    size = sum(p.stat().st_size for p in Path(inputs["text"]).iterdir())
    return {
        "files": n_files,
        "train_mb": round(size / 1e6, 2),
        "threads": threads,
        "rounds": rounds,
        "correct": "every contender's train arrays byte-identical to the single file's",
        "seconds": {k: round(v, 3) for k, v in best.items()},
        "mb_per_s": {k: round(size / 1e6 / best[k], 2) for k in ("single", "text", "jsonl", "parquet")},
        "ratio_vs_single_file": {k: round(best["single"] / best[k], 3) for k in ("text", "jsonl", "parquet")},
        "sharded2_speedup_inner": round(best["text"] / best["sharded2_inner"], 3),
        "sharded2_speedup_outer": round(best["text_outer"] / best["sharded2_outer"], 3),
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "cpu_count": os.cpu_count(),
    }


def print_files(results: dict[str, Any]) -> None:
    print(f"\n{results['files']} files, {results['train_mb']} MB of train text, {results['threads']} threads, "
          f"best of {results['rounds']} (prepare's own wall time)")  # fmt: skip
    for name, speed in results["mb_per_s"].items():
        ratio = results["ratio_vs_single_file"].get(name)
        print(f"  {name:>8}: {results['seconds'][name]:7.3f} s  {speed:6.2f} MB/s"
              + (f"  {ratio:.3f} x the single file" if ratio else ""))  # fmt: skip
    s = results["seconds"]
    print(f"  sharded N=2 (+ merge): {s['sharded2_inner']:.3f} s vs one process {s['text']:.3f} s -> "
          f"{results['sharded2_speedup_inner']:.2f}x; outside wall {s['sharded2_outer']:.2f} s vs "
          f"{s['text_outer']:.2f} s -> {results['sharded2_speedup_outer']:.2f}x")  # fmt: skip
    print(f"  load average before/after: {results['load_average_before_after']} on {results['cpu_count']} cores "
          "(a machine shared with other jobs)")  # fmt: skip
