"""Prepare with the real SmolLM2 tokenizer: the default engine, ids equal to `AutoTokenizer`,
document boundaries from the tokenizer's own conventions, and forced engines refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmfast.data import engines
from lmfast.data.boundaries import resolve_boundaries
from lmfast.data.tokenizers import load_tokenizer
from tests.data.conftest import reference_documents

REPO = Path(__file__).resolve().parents[2]
DELIMITER = "[END_OF_DOCUMENT]"

pytestmark = pytest.mark.slow


def _prepare(nietzsche_dir: Path, root: Path, tokenizer: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "lmfast.prepare",
        "--documents_train_file", str(nietzsche_dir / "valid.txt"),
        "--documents_valid_file", str(nietzsche_dir / "valid.txt"),
        "--end_of_document", DELIMITER, "--tokenizer_cls_name", str(tokenizer),
        "--max_sample_length", "64", "--min_sample_length", "1", "--datasets_root", str(root), *flags,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def test_smollm2_default_engine_gives_autotokenizer_ids(tmp_path, smollm2_dir, nietzsche_dir):
    """The README command with SmolLM2's tokenizer: auto picks a fast engine, ids == AutoTokenizer,
    and documents end with <|endoftext|> (its pretraining separator), not the chat tokens."""
    from transformers import AutoTokenizer

    result = _prepare(nietzsche_dir, tmp_path, smollm2_dir)
    assert result.returncode == 0, result.stderr
    directory = Path(result.stdout.strip())
    description = json.loads((directory / "description.json").read_text())
    assert description["tokenizer_engine_used"] == "gigatoken"
    hf = AutoTokenizer.from_pretrained(smollm2_dir)
    separator = hf.convert_tokens_to_ids("<|endoftext|>")
    assert description["document_bos_token_used"] is None and description["bos_token_id"] is None
    assert description["document_eos_token_used"] == "<|endoftext|>"
    assert description["eos_token_id"] == separator == 0
    assert description["prompt_prefix_token_ids"] == []
    expected = []
    for text in reference_documents(nietzsche_dir / "valid.txt", DELIMITER):
        expected += hf(text, add_special_tokens=False).input_ids + [separator]
    corpus = np.load(directory / "valid" / "corpus.npy")
    assert corpus.tolist() == expected
    assert (
        hf.convert_tokens_to_ids("<|im_start|>") not in corpus
        and hf.convert_tokens_to_ids("<|im_end|>") not in corpus
    )


def _error_lines(stderr: str) -> list[str]:
    """stderr without its warnings (`_prepare` reads one file as train and valid, which warns)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("WARNING ")]


def test_smollm2_boundary_flags(tmp_path, smollm2_dir, nietzsche_dir):
    result = _prepare(
        nietzsche_dir,
        tmp_path,
        smollm2_dir,
        "--document_bos_token",
        "<|im_start|>",
        "--document_eos_token",
        "none",
    )
    assert result.returncode == 0, result.stderr
    directory = Path(result.stdout.strip())
    description = json.loads((directory / "description.json").read_text())
    assert (description["bos_token_id"], description["eos_token_id"]) == (1, None)
    assert description["prompt_prefix_token_ids"] == [1]
    corpus = np.load(directory / "valid" / "corpus.npy")
    n_documents = description["number_of_valid_documents"]
    assert int((corpus == 1).sum()) == n_documents and 0 not in corpus
    bad = _prepare(nietzsche_dir, tmp_path / "bad", smollm2_dir, "--document_eos_token", "<|nope|>")
    assert bad.returncode == 2 and len(_error_lines(bad.stderr)) == 1
    assert "--document_eos_token" in bad.stderr and "<|nope|>" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_a_forced_engine_that_cannot_serve_the_tokenizer_is_one_line(tmp_path, smollm2_dir, nietzsche_dir):
    result = _prepare(nietzsche_dir, tmp_path / "out", smollm2_dir, "--tokenizer_engine", "tiktoken")
    assert result.returncode == 2, result.stderr
    assert len(_error_lines(result.stderr)) == 1 and "tiktoken" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_auto_falls_back_when_an_engine_raises_anything(smollm2_dir, monkeypatch):
    """A panic or RuntimeError while building or running a fast engine is a fallback, not a crash."""
    tokenizer = load_tokenizer(str(smollm2_dir))

    def broken(name, *args, **kwargs):
        if name == "tokenizers":
            return engines.TokenizersEngine(tokenizer)
        raise RuntimeError(
            "Byte remapping failed: no single-byte vocab entry for byte 0x04\n\nLocation:\n  x.rs"
        )

    monkeypatch.setattr(engines, "build_engine", broken)
    assert engines.select_engine(tokenizer, "auto").name == "tokenizers"
    with pytest.raises(ValueError, match=r"^tokenizer engine 'gigatoken' cannot serve .*0x04$"):
        engines.select_engine(tokenizer, "gigatoken")


def test_smollm2_conventions(smollm2_dir):
    tokenizer = load_tokenizer(str(smollm2_dir))
    boundaries = resolve_boundaries(tokenizer)
    assert (boundaries.bos_token, boundaries.eos_token) == (None, "<|endoftext|>")
    gpt2 = resolve_boundaries(load_tokenizer("GPT2Tokenizer"))
    assert (gpt2.bos_token_id, gpt2.eos_token_id) == (50256, 50256)
