"""A real in-place Llama export (grouped heads: 3 query heads per key/value head), with an fp32 or an
fp16 cache, runs its attention on lmfast.GroupQueryAttention when lmfast opens it, the file stays
standard ONNX, and greedy decoding gives the same tokens as ONNX Runtime's own GroupQueryAttention,
alone and in a batch of rows of different lengths, on every kernel path."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from lmfast.export import ExportConfig, export_onnx
from lmfast.generation import GenerationParams, Generator, native_ops

pytestmark = pytest.mark.skipif(
    native_ops.library_path() is None and not native_ops._required(),
    reason="lmfast's ONNX Runtime ops not built (setup.py build_ext)",
)
ISAS = ["scalar", "avx2"] if native_ops.isa() == "avx2" else ["scalar"]


@pytest.fixture(scope="module")
def grouped_llama(tmp_path_factory) -> Path:
    import torch
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("grouped_llama")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50257,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.3,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    LlamaForCausalLM(config).eval().save_pretrained(root / "hf")
    GPT2TokenizerFast.from_pretrained(
        Path(__file__).parents[2] / "lmfast" / "assets" / "gpt2"
    ).save_pretrained(root / "hf")
    return root / "hf"


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def grouped_llama_export(request, grouped_llama, tmp_path_factory) -> Path:
    """The in-place export with an fp32 cache, or an fp16 one (its GroupQueryAttention nodes are fp16)."""
    output = tmp_path_factory.mktemp(f"export_{request.param}") / "export"
    config = ExportConfig(
        source=grouped_llama,
        output=output,
        kv_cache="inplace",
        kv_cache_precision=request.param,
        accept_quality_loss=True,  # fp16 keys/values may change a random model's greedy tokens vs torch
    )
    export = export_onnx(config)
    cache = next(i for i in onnx.load(str(export / "model.onnx")).graph.input if i.name.startswith("past_"))
    wanted = onnx.TensorProto.FLOAT16 if request.param == "fp16" else onnx.TensorProto.FLOAT
    assert cache.type.tensor_type.elem_type == wanted
    return export


@pytest.mark.parametrize("isa", ISAS)
def test_gqa_export_greedy_equal_with_and_without_lmfast_ops(
    grouped_llama_export, prompts, monkeypatch, tmp_path, isa
):
    monkeypatch.setenv("LMFAST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LMFAST_ORTOPS_ISA", isa)
    model = onnx.load(str(grouped_llama_export / "model.onnx"))
    attention = [node for node in model.graph.node if node.op_type == "GroupQueryAttention"]
    assert len(attention) == 2 and {node.domain for node in attention} == {"com.microsoft"}

    monkeypatch.setenv("LMFAST_NATIVE_OPS", "gqa")
    ours = Generator.load(grouped_llama_export)
    assert ours.backend.swapped_ops == 2  # both layers' attention
    monkeypatch.setenv("LMFAST_NATIVE_OPS", "0")
    stock = Generator.load(grouped_llama_export)
    assert stock.backend.swapped_ops == 0

    params = GenerationParams(max_new_tokens=24, temperature=0.0)
    alone = [stock([p], params)[0] for p in prompts]
    assert [ours([p], params)[0] for p in prompts] == alone
    assert ours(prompts, params) == stock(prompts, params)  # rows of different lengths
