"""Shared fixtures: paths to the real offline assets the tests run on."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NIETZSCHE_DIR = REPO_ROOT / "data" / "documents" / "nietzsche"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# keep CPU tests polite on a 2-core machine
os.environ.setdefault("OMP_NUM_THREADS", "2")
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
