"""Fixtures for the prepare tests: the GPT-2 tokenizer and a slow, obviously-correct reference."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lmfast.data.chunking import native_available
from lmfast.data.tokenizers import Tokenizer, load_tokenizer

# without the built extension, native-only tests skip -- unless CI demands it (then they fail loudly)
NATIVE_MISSING = not native_available() and os.environ.get("LMFAST_REQUIRE_NATIVE") != "1"
needs_native = pytest.mark.skipif(
    NATIVE_MISSING, reason="Cython kernels not built (python setup.py build_ext --inplace)"
)
KERNEL_BACKENDS = ["python"] if NATIVE_MISSING else ["cython", "python"]

ASCII_WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "


def samples_of_documents(documents: list[list[int]], max_len: int, min_len: int) -> list[list[int]]:
    """The test oracle, prepare's semantics in one line per step: whole documents' ids -> kept samples."""
    samples = []
    for tokens in documents:
        for i in range(0, len(tokens), max_len):
            if len(tokens[i : i + max_len]) >= min_len:
                samples.append(tokens[i : i + max_len])
    return samples


def reference_documents(path: Path, delimiter: str, errors: str = "strict") -> list[str]:
    """docs/architecture.md §1 in plain Python: lines equal to the delimiter (stripped) separate documents."""
    text = path.read_bytes().decode("utf-8", errors=errors).replace("\r\n", "\n")
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    documents, current = [], []
    for line in lines:
        if line.strip(ASCII_WHITESPACE) == delimiter:
            documents.append("\n".join(current))
            current = []
        else:
            current.append(line)
    if current:
        documents.append("\n".join(current))
    return [d for d in documents if d.strip(ASCII_WHITESPACE)]


def reference_split(
    tokenizer: Tokenizer, path: Path, delimiter: str, max_len: int, min_len: int, errors: str = "strict"
) -> tuple[np.ndarray, np.ndarray]:
    """(corpus, sample start positions) computed the slow way, with the HF reference tokenizer."""
    documents = [tokenizer.encode_document(d) for d in reference_documents(path, delimiter, errors)]
    samples = samples_of_documents(documents, max_len, min_len)
    lengths = np.array([len(s) for s in samples], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64) if samples else lengths
    corpus = np.array([t for s in samples for t in s], dtype=np.int64)
    return corpus, starts


@pytest.fixture(scope="session")
def gpt2() -> Tokenizer:
    return load_tokenizer("GPT2Tokenizer")


@pytest.fixture(scope="session")
def reference() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    return reference_split


@pytest.fixture(scope="session")
def documents_of() -> Callable[..., list[str]]:
    return reference_documents
