"""Real int8 / int4 exports run on lmfast.PackedQuantizedMatMul when lmfast opens them with the
`nbits` swap: the file stays standard ONNX, the rewritten graph holds the repacked weights, the
logits match the file-layout op's (the same integer dots), and greedy decoding is batch-invariant."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest

from lmfast.export import ExportConfig
from lmfast.export.onnx import apply_tier
from lmfast.generation import GenerationParams, Generator, native_ops, quant_pack

pytestmark = pytest.mark.skipif(
    native_ops.library_path() is None and not native_ops._required(),
    reason="lmfast's ONNX Runtime ops not built (setup.py build_ext)",
)


@pytest.mark.parametrize(
    ("quantize", "asymmetric"),
    [("int8", False), ("int4", False), ("int4", True)],
    ids=["int8", "int4", "int4-zp"],
)
def test_quantized_export_greedy_equal_packed_and_file_layout(
    onnx_dir, tmp_path, prompts, monkeypatch, quantize, asymmetric
):
    target = tmp_path / quantize
    shutil.copytree(onnx_dir, target, ignore=shutil.ignore_patterns("model.onnx*"))
    config = ExportConfig(
        source=onnx_dir, output=target, quantize=quantize, recipe="plain", asymmetric=asymmetric
    )
    onnx.save(apply_tier(onnx.load(str(onnx_dir / "model.onnx")), config), str(target / "model.onnx"))
    assert not any(
        node.domain == native_ops.DOMAIN for node in onnx.load(str(target / "model.onnx")).graph.node
    )

    monkeypatch.setenv("LMFAST_NATIVE_OPS", "nbits")
    monkeypatch.setenv("LMFAST_CACHE", str(tmp_path / "packed-cache"))
    packed = Generator.load(target)
    entry = native_ops.cache_entry(target / "model.onnx", ("nbits",), native_ops.library_path())
    ops = {node.op_type for node in onnx.load(str(entry / "model.onnx"), load_external_data=False).graph.node}
    assert "PackedQuantizedMatMul" in ops and "MatMulNBits" not in ops and packed.backend.swapped_ops > 0

    monkeypatch.setenv("LMFAST_CACHE", str(tmp_path / "file-layout-cache"))
    with monkeypatch.context() as unpacked:
        unpacked.setattr(quant_pack, "pack_nbits", lambda *args: None)  # every node keeps the file layout
        file_layout = Generator.load(target)
    assert file_layout.backend.swapped_ops == packed.backend.swapped_ops

    # the same integer dots; the file-layout op subtracts zero point x sum(xq) in float after the
    # sum over blocks, so the two round differently: logits agree to float tolerance, and greedy
    # tokens may part at a near-tie
    ids = np.array([[1, 5, 9, 2, 7]], dtype=np.int64)
    feeds = (ids, np.ones_like(ids), np.arange(5, dtype=np.int64)[None], None)
    ours = packed.backend.forward(*feeds, all_logits=True)[0]
    theirs = file_layout.backend.forward(*feeds, all_logits=True)[0]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3 * float(np.abs(theirs).max()))
    params = GenerationParams(max_new_tokens=16, temperature=0.0)
    batch = [prompts[0], prompts[1], prompts[3]]
    assert [packed([p], params)[0] for p in batch] == packed(batch, params)  # batch-invariant
