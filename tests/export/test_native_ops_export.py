"""A real bf16 export runs on lmfast's Bf16MatMul when lmfast opens it, the file stays standard
ONNX, and greedy decoding gives the same tokens as ONNX Runtime's own ops."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from lmfast.export.onnx import bf16_weights
from lmfast.generation import GenerationParams, Generator, native_ops

pytestmark = pytest.mark.skipif(
    native_ops.library_path() is None and not native_ops._required(),
    reason="lmfast's ONNX Runtime ops not built (setup.py build_ext)",
)


def test_bf16_export_greedy_equal_with_and_without_lmfast_ops(
    onnx_dir, tmp_path, prompts, monkeypatch, caplog
):
    """The fp32 export's weights stored as `--precision bf16` stores them (no second torch export)."""
    bf16_dir = tmp_path / "bf16"
    shutil.copytree(onnx_dir, bf16_dir, ignore=shutil.ignore_patterns("model.onnx"))
    onnx.save(bf16_weights(onnx.load(str(onnx_dir / "model.onnx"))), str(bf16_dir / "model.onnx"))
    file_ops = {(node.domain, node.op_type) for node in onnx.load(str(bf16_dir / "model.onnx")).graph.node}
    assert not any(domain == native_ops.DOMAIN for domain, _ in file_ops)  # the file needs no lmfast

    params = GenerationParams(max_new_tokens=16, temperature=0.0)
    batch = [prompts[0], prompts[1], prompts[3]]
    with caplog.at_level("INFO", logger="lmfast.generation.native_ops"):
        ours = Generator.load(bf16_dir)
    assert "ops swapped for lmfast's" in caplog.text and ours.backend.swapped_ops > 0
    monkeypatch.setenv("LMFAST_NATIVE_OPS", "0")
    stock = Generator.load(bf16_dir)
    assert stock.backend.swapped_ops == 0
    assert ours(batch, params) == stock(batch, params)
    assert [ours([p], params)[0] for p in batch] == ours(batch, params)  # batch-invariant too


def _bf16_export(onnx_dir, target):
    shutil.copytree(onnx_dir, target, ignore=shutil.ignore_patterns("model.onnx"))
    onnx.save(bf16_weights(onnx.load(str(onnx_dir / "model.onnx"))), str(target / "model.onnx"))
    return target


def _first_logits(generator) -> np.ndarray:
    ids = np.array([[1, 5, 9, 2, 7]], dtype=np.int64)
    mask = np.ones_like(ids)
    positions = np.arange(ids.shape[1], dtype=np.int64)[None]
    logits, _ = generator.backend.forward(ids, mask, positions, None, all_logits=True)
    return logits


def test_cached_rewrite_equals_the_in_memory_one_and_rebuilds_bad_entries(
    onnx_dir, tmp_path, prompts, monkeypatch
):
    """The rewritten graph kept on disk gives the same logits and greedy tokens as the one handed
    over in memory (the cache cannot be written); an entry corrupted on disk, or made stale by a
    changed export, is rebuilt rather than used."""
    monkeypatch.setenv("LMFAST_CACHE", str(tmp_path / "cache"))
    bf16_dir = _bf16_export(onnx_dir, tmp_path / "bf16")
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    batch = [prompts[0], prompts[2]]

    with monkeypatch.context() as unwritable:
        unwritable.setattr(native_ops, "_write_entry", _raise_oserror)
        in_memory = Generator.load(bf16_dir)
    entry = native_ops.cache_entry(
        bf16_dir / "model.onnx", native_ops.DEFAULT_SWAPS, native_ops.library_path()
    )
    assert not entry.exists()
    expected_logits, expected_tokens = _first_logits(in_memory), in_memory(batch, params)

    built = Generator.load(bf16_dir)  # rewrites and writes the entry
    assert (entry / "model.onnx").is_file() and not list(entry.parent.glob(".partial-*"))
    cached = Generator.load(bf16_dir)  # opens the entry without rewriting
    for generator in (built, cached):
        assert generator.backend.swapped_ops == in_memory.backend.swapped_ops > 0
        np.testing.assert_array_equal(_first_logits(generator), expected_logits)
        assert generator(batch, params) == expected_tokens

    data = entry / "model.onnx"
    data.write_bytes(b"\x00garbage" * (data.stat().st_size // 8) + b"\x00" * (data.stat().st_size % 8))
    rebuilt = Generator.load(bf16_dir)  # same size, so only ONNX Runtime notices
    np.testing.assert_array_equal(_first_logits(rebuilt), expected_logits)
    assert onnx.load(str(data), load_external_data=False).graph.node  # the entry was rewritten

    (entry / native_ops._EXTERNAL_DATA).write_bytes(b"cut short")  # a truncated write
    assert native_ops._cached_count(entry) is None
    np.testing.assert_array_equal(_first_logits(Generator.load(bf16_dir)), expected_logits)

    onnx.save(onnx.load(str(bf16_dir / "model.onnx")), str(bf16_dir / "model.onnx"))  # a new mtime
    stale = entry
    entry = native_ops.cache_entry(
        bf16_dir / "model.onnx", native_ops.DEFAULT_SWAPS, native_ops.library_path()
    )
    assert entry != stale
    assert Generator.load(bf16_dir)(batch, params) == expected_tokens
    assert entry.is_dir() and not stale.exists()  # the stale entry was replaced


def _raise_oserror(*args, **kwargs):
    raise OSError("read-only cache")
