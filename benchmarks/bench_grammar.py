"""Per-token cost of a structured-output token mask on CPU: llguidance vs xgrammar vs outlines-core.

    python benchmarks/bench_grammar.py [--rounds 5] [--threads 1] [--smollm2 HF_DIR]

For each vocabulary (the real GPT-2, 50,257 ids, and SmolLM2-135M's, 49,152 ids) and each
constraint (a JSON schema; `{"type": "json_object"}`, i.e. any JSON object), every library
compiles the grammar once (timed apart), then walks a fixed valid answer token by token: at each
step it computes the mask of allowed next tokens into a bitmask and consumes the answer's token.
Correctness before timing: at every step each library must allow the answer's token, and accept
at the end. Contenders alternate within each round; the median over rounds of the mean per-token
time (mask + consume) is printed, with the ratios to the fastest. Grammar compilation runs on
`--threads` threads where a library takes the number (xgrammar); llguidance computes one mask
on the calling thread. The machine's load (os.getloadavg) is printed beside the figures: on a
shared machine they compare contenders within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
ANSWER = '{"name": "Friedrich Nietzsche", "age": 55, "tags": ["philosopher", "philologist", "poet"]}'
WHITESPACE = r"[ ]?"
"""outlines-core's whitespace between JSON tokens (its default, `[\n\t ]*`, made indexes of the
generic object grammar too large to build here); llguidance and xgrammar keep their defaults
(flexible whitespace)."""
CONSTRAINTS = {"json_schema": SCHEMA, "json_object": {"type": "object"}}


def byte_level_vocab(tokenizer_json: Path) -> tuple[list[bytes], list[int]]:
    """Each id's bytes (GPT-2 byte-level BPE: the printable stand-ins mapped back) and the special ids."""
    from lmfast.data.engines import _bytes_to_unicode as bytes_to_unicode

    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    decoder = {ch: b for b, ch in bytes_to_unicode().items()}
    vocab = data["model"]["vocab"]
    special = {t["id"]: t["content"] for t in data.get("added_tokens", []) if t.get("special")}
    size = max([*vocab.values(), *special]) + 1
    tokens: list[bytes] = [b""] * size
    for text, i in vocab.items():
        tokens[i] = bytes(decoder[ch] for ch in text)
    for i, text in special.items():
        tokens[i] = text.encode()
    return tokens, sorted(special)


class Contender:
    """Compiles once, then `walk(ids)` masks and consumes each id; returns seconds per token."""

    name: str

    def compile(self, constraint: dict[str, Any]) -> float: ...

    def walk(self, ids: list[int]) -> float: ...


class Llguidance(Contender):
    name = "llguidance"

    def __init__(self, tokenizer_json: Path, eos: int) -> None:
        import llguidance

        self.llg = llguidance
        self.tokenizer = llguidance.LLTokenizer(str(tokenizer_json), eos_token=eos)
        self.mask = np.zeros((1, (self.tokenizer.vocab_size + 31) // 32), dtype=np.int32)

    def compile(self, constraint: dict[str, Any]) -> float:
        started = time.perf_counter()
        self.grammar = self.llg.LLMatcher.grammar_from_json_schema(constraint)
        matcher = self.llg.LLMatcher(self.tokenizer, self.grammar)
        assert not matcher.is_error(), matcher.get_error()
        return time.perf_counter() - started

    def walk(self, ids: list[int]) -> float:
        from llguidance.numpy import fill_next_token_bitmask

        matcher = self.llg.LLMatcher(self.tokenizer, self.grammar)
        started = time.perf_counter()
        for token in ids:
            fill_next_token_bitmask(matcher, self.mask)
            assert _allowed(self.mask[0], token), f"llguidance refused token {token}"
            assert matcher.consume_token(token), matcher.get_error()
        elapsed = time.perf_counter() - started
        assert matcher.is_accepting()
        return elapsed / len(ids)


class Xgrammar(Contender):
    name = "xgrammar"

    def __init__(self, tokens: list[bytes], eos: int, threads: int) -> None:
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo(
            tokens,
            vocab_type=xgrammar.VocabType.RAW,
            stop_token_ids=[eos],
        )
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=threads, cache_enabled=False)
        self.mask = xgrammar.allocate_token_bitmask(1, info.vocab_size)
        self.eos = eos

    def compile(self, constraint: dict[str, Any]) -> float:
        started = time.perf_counter()
        self.grammar = self.compiler.compile_json_schema(json.dumps(constraint))
        return time.perf_counter() - started

    def walk(self, ids: list[int]) -> float:
        matcher = self.xgr.GrammarMatcher(self.grammar)
        started = time.perf_counter()
        for token in ids:
            matcher.fill_next_token_bitmask(self.mask)
            assert _allowed(self.mask[0].numpy(), token), f"xgrammar refused token {token}"
            assert matcher.accept_token(token)
        elapsed = time.perf_counter() - started
        assert matcher.accept_token(self.eos) and matcher.is_terminated(), "xgrammar did not accept"
        return elapsed / len(ids)


class OutlinesCore(Contender):
    name = "outlines-core"

    def __init__(self, tokens: list[bytes], special: list[int], eos: int) -> None:
        import outlines_core

        self.oc = outlines_core
        mapping: dict[bytes, list[int]] = {}
        for i, token in enumerate(tokens):
            if i not in special and token:
                mapping.setdefault(token, []).append(i)
        self.vocabulary = outlines_core.Vocabulary(eos, mapping)
        self.mask = np.zeros(((len(tokens) + 31) // 32,), dtype=np.int32)

    def compile(self, constraint: dict[str, Any]) -> float:
        from outlines_core.json_schema import build_regex_from_schema

        started = time.perf_counter()
        regex = build_regex_from_schema(json.dumps(constraint), whitespace_pattern=WHITESPACE)
        self.index = self.oc.Index(regex, self.vocabulary)
        return time.perf_counter() - started

    def walk(self, ids: list[int]) -> float:
        guide = self.oc.Guide(self.index)
        started = time.perf_counter()
        for token in ids:
            guide.write_mask_into(self.mask.ctypes.data, self.mask.size, 4)
            assert _allowed(self.mask, token), f"outlines-core refused token {token}"
            guide.advance(token)
        elapsed = time.perf_counter() - started
        assert guide.is_finished() or self.vocabulary.get_eos_token_id() in guide.get_tokens()
        return elapsed / len(ids)


def _allowed(bitmask: np.ndarray, token: int) -> bool:
    return bool((int(bitmask[token // 32]) >> (token % 32)) & 1)


def vocabularies(smollm2: Path | None) -> dict[str, Path]:
    """tokenizer.json of each vocabulary: GPT-2 (built from lmfast's assets) and SmolLM2 if found."""
    from transformers import GPT2TokenizerFast

    found: dict[str, Path] = {}
    gpt2 = Path(os.environ.get("TMPDIR", "/tmp")) / "lmfast-bench-grammar-gpt2"
    if not (gpt2 / "tokenizer.json").is_file():
        GPT2TokenizerFast.from_pretrained(REPO / "lmfast" / "assets" / "gpt2").save_pretrained(gpt2)
    found["gpt2 (50257)"] = gpt2 / "tokenizer.json"
    if smollm2 is None:
        from lmfast.models.gguf import converted_dir, find_smollm2_gguf

        gguf = find_smollm2_gguf()
        smollm2 = converted_dir(gguf) if gguf is not None else None
    if smollm2 is not None and (Path(smollm2) / "tokenizer.json").is_file():
        found["smollm2 (49152)"] = Path(smollm2) / "tokenizer.json"
    return found


def run(rounds: int = 5, threads: int = 1, smollm2: Path | None = None) -> dict[str, Any]:
    from tokenizers import Tokenizer

    results: dict[str, Any] = {"load_before": os.getloadavg(), "threads": threads, "rounds": rounds}
    for vocab_name, tokenizer_json in vocabularies(smollm2).items():
        tokenizer = Tokenizer.from_file(str(tokenizer_json))
        eos = tokenizer.token_to_id("<|endoftext|>")
        tokens, special = byte_level_vocab(tokenizer_json)
        answer = tokenizer.encode(ANSWER, add_special_tokens=False).ids
        assert b"".join(tokens[i] for i in answer) == ANSWER.encode()
        contenders: dict[str, Contender] = {
            "llguidance": Llguidance(tokenizer_json, eos),
            "xgrammar": Xgrammar(tokens, eos, threads),
            "outlines-core": OutlinesCore(tokens, special, eos),
        }
        for constraint_name, constraint in CONSTRAINTS.items():
            row: dict[str, Any] = {"answer_tokens": len(answer)}
            compile_s = {name: c.compile(constraint) for name, c in contenders.items()}
            for contender in contenders.values():  # correctness first (asserts inside), untimed
                contender.walk(answer)
            per_token: dict[str, list[float]] = {name: [] for name in contenders}
            for r in range(rounds):
                order = list(contenders.items())
                order = order[r % len(order) :] + order[: r % len(order)]  # rotate who goes first
                for name, contender in order:
                    per_token[name].append(contender.walk(answer))
            medians = {name: statistics.median(times) for name, times in per_token.items()}
            fastest = min(medians.values())
            for name in contenders:
                row[name] = {
                    "compile_ms": round(compile_s[name] * 1e3, 2),
                    "us_per_token": round(medians[name] * 1e6, 1),
                    "ratio_to_fastest": round(medians[name] / fastest, 2),
                }
            results[f"{vocab_name} / {constraint_name}"] = row
    results["load_after"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smollm2", type=Path, default=None, help="SmolLM2 HF dir (default: the GGUF)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = run(args.rounds, args.threads, args.smollm2)
    print(f"load average before {results['load_before']}, after {results['load_after']} (shared machine)")
    for key, row in results.items():
        if not isinstance(row, dict):
            continue
        print(f"\n{key}: {row['answer_tokens']} answer tokens")
        for name, figures in row.items():
            if isinstance(figures, dict):
                print(
                    f"  {name:14s} compile {figures['compile_ms']:9.2f} ms   mask+consume "
                    f"{figures['us_per_token']:8.1f} us/token   x{figures['ratio_to_fastest']}"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
