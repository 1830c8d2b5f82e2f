"""A real bf16 export runs on lmfast's Bf16MatMul when lmfast opens it, the file stays standard
ONNX, and greedy decoding gives the same tokens as ONNX Runtime's own ops."""

from __future__ import annotations

import shutil

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
