"""The native quantization kernels (csrc/_blockquant.pyx) against their NumPy references in
lmfast.export.quantize, bit for bit: the export's results must not depend on whether the
extension was built."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.export import quantize
from lmfast.export.quantize import (
    SEARCH_RANGE_STEPS,
    SEARCH_STEPS,
    gptq_factor,
    gptq_levels,
    native_available,
    quantize_blocks,
    searched_reference,
    symmetric_reference,
)

pytestmark = pytest.mark.skipif(
    not native_available() and os.environ.get("LMFAST_REQUIRE_NATIVE") != "1",
    reason="lmfast.export._blockquant not built (python setup.py build_ext --inplace)",
)


def _blocks(seed: int, rows: int, blocks: int, size: int) -> np.ndarray:
    """Blocks of very different magnitudes with the edge cases: all zero, one sign, repeats."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, blocks, size)) * np.exp(rng.uniform(-8, 4, (rows, blocks, 1)))
    x = x.astype(np.float32)
    x[0, 0] = 0.0
    if rows > 1:
        x[1, -1] = np.abs(x[1, -1])
    if rows > 2:
        x[2, 0] = -np.abs(x[2, 0])
    if rows > 3:
        x[3, -1] = 0.25
        x[3, 0, ::2] = -0.0
    return x


def _assert_identical(native: tuple, reference: tuple) -> None:
    assert len(native) == len(reference)
    for a, b in zip(native, reference, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 12),
    blocks=st.integers(1, 4),
    size=st.sampled_from([8, 16, 24, 32, 64, 128, 200, 256]),
    bits=st.sampled_from([4, 8]),
    uniform=st.booleans(),
)
def test_searched_kernel_is_the_reference_bit_for_bit(seed, rows, blocks, size, bits, uniform):
    x = _blocks(seed, rows, blocks, size)
    rng = np.random.default_rng(seed + 1)
    channel = np.ones((blocks, size), np.float32) if uniform else rng.uniform(0, 3, (blocks, size))
    channel = channel.astype(np.float32)
    channel[0, : size // 4] = 0.0  # padding rows weigh nothing
    kernel = quantize._native()
    _assert_identical(
        kernel.searched_blocks(x, channel, bits, SEARCH_RANGE_STEPS), searched_reference(x, bits, channel)
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(1, 12),
    blocks=st.integers(1, 4),
    size=st.sampled_from([8, 16, 24, 32, 64, 128, 200]),
    bits=st.sampled_from([4, 8]),
    least_squares=st.booleans(),
)
def test_symmetric_kernel_is_the_reference_bit_for_bit(seed, rows, blocks, size, bits, least_squares):
    x = _blocks(seed, rows, blocks, size)
    kernel = quantize._native()
    _assert_identical(
        kernel.symmetric_blocks(x, bits, least_squares, SEARCH_STEPS),
        symmetric_reference(x, bits, least_squares),
    )


def _calibration(seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A Gram matrix of correlated inputs with a dead channel, and its diagonal."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * k, k)) @ rng.standard_normal((k, k)) * 0.3 + rng.standard_normal((2 * k, k))
    x[:, k // 2] = 0.0
    gram = x.T @ x / len(x)
    return gram, np.diag(gram).astype(np.float32)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    k=st.integers(1, 260),
    n=st.integers(1, 40),
    block_size=st.sampled_from([16, 32, 64, 128]),
    bits=st.sampled_from([4, 8]),
)
def test_quantize_blocks_natively_is_the_reference(seed, k, n, block_size, bits):
    """Every rounding quantize_blocks offers (GPTQ's included, whose row loop is native too)
    gives the same bytes with and without the extension."""
    weight = np.random.default_rng(seed).standard_normal((k, n)).astype(np.float32) * 0.05
    gram, importance = _calibration(seed, k)
    cases = [
        dict(symmetric=True, least_squares=True),
        dict(symmetric=True, least_squares=False),
        dict(symmetric=False, least_squares=False, importance=importance, searched=True),
        dict(symmetric=False, least_squares=False, importance=importance, searched=True, gram=gram),
    ]
    for case in cases:
        native = quantize_blocks(weight, bits, block_size, **case)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(quantize, "_native", lambda: None)
            reference = quantize_blocks(weight, bits, block_size, **case)
        for a, b in zip(native, reference, strict=True):
            assert (a is None and b is None) or a.tobytes() == b.tobytes()


def test_gptq_splits_its_columns_over_threads_without_changing_them(monkeypatch):
    """Many columns: the row kernel runs on column ranges in threads; one thread gives the same."""
    k, n = 64, 3000
    weight = np.random.default_rng(3).standard_normal((k, n)).astype(np.float32)
    gram, importance = _calibration(3, k)
    channel = importance.reshape(2, 32)
    monkeypatch.setattr(quantize, "threads", lambda: 4)
    threaded = gptq_levels(weight, gram, 4, 32, channel, gptq_factor(gram))
    monkeypatch.setattr(quantize, "threads", lambda: 1)
    single = gptq_levels(weight, gram, 4, 32, channel)
    _assert_identical(threaded, single)


def test_kernels_check_their_arguments():
    kernel = quantize._native()
    x = np.zeros((2, 1, 16), np.float32)
    with pytest.raises(ValueError, match="bits"):
        kernel.searched_blocks(x, np.ones((1, 16), np.float32), 3, SEARCH_RANGE_STEPS)
    with pytest.raises(ValueError, match="channel"):
        kernel.searched_blocks(x, np.ones((2, 16), np.float32), 4, SEARCH_RANGE_STEPS)
    with pytest.raises(ValueError, match="bits"):
        kernel.symmetric_blocks(x, 5, True, SEARCH_STEPS)
    work, factor = np.zeros((32, 4)), np.eye(32)
    column = np.ones(4)
    with pytest.raises(ValueError, match="rows out of range"):
        kernel.gptq_rows(
            work, factor, 0, 33, column, column, column, 4, np.zeros((4, 33), np.uint8), np.zeros((33, 4))
        )
    with pytest.raises(ValueError, match="columns out of range"):
        kernel.gptq_rows(
            work,
            factor,
            0,
            32,
            column,
            column,
            column,
            4,
            np.zeros((4, 32), np.uint8),
            np.zeros((32, 4)),
            0,
            5,
        )
