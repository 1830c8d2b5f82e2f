"""Precision tiers of `lmfast export onnx`: int4 and bf16 run, record quality, and stay batch-invariant."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from lmfast.export import ExportConfig
from lmfast.export.cli import main
from lmfast.generation import GenerationParams, Generator


def _initializer_types(directory: Path) -> set[int]:
    return {t.data_type for t in onnx.load(str(directory / "model.onnx")).graph.initializer}


@pytest.mark.slow
def test_int4_and_bf16_tiers_record_quality_and_are_batch_invariant(
    varied_model_dir, tmp_path, prompts, capsys
):
    """Two tiny-model exports (~5 s each on 2 cores): int4 with an fp16 in-place cache through the
    CLI, bf16 through the API."""
    from lmfast.export import export_onnx

    int4 = tmp_path / "int4"
    argv = ["onnx", str(varied_model_dir), "--output", str(int4), "--quantize", "int4", "--block_size", "32"]
    argv += ["--kv_cache_precision", "fp16"]
    argv += ["--recipe", "plain"]  # the one-format tier; the mixed recipe: test_calibration.py
    assert main([*argv, "--asymmetric", "--parity_steps", "8", "--accept_quality_loss"]) == 0
    assert capsys.readouterr().out.startswith(str(int4))
    bf16 = export_onnx(
        ExportConfig(
            source=varied_model_dir,
            output=tmp_path / "bf16",
            precision="bf16",
            parity_steps=8,
            accept_quality_loss=True,
        )
    )
    described = {d.name: json.loads((d / "export.json").read_text()) for d in (int4, bf16)}
    assert described["int4"]["quantization"] == {
        "recipe": "plain",
        "operator": "MatMulNBits",
        "bits": 4,
        "block_size": 32,
        "symmetric": False,
        "rounding": "min/max",
        "accuracy_level": 4,
        "lm_head_bits": 8,
    }
    assert (
        described["bf16"]["precision"] == "bf16"
        and described["bf16"]["quantization"]["weights"] == "bfloat16"
    )
    assert [described[n]["kv_cache_precision"] for n in ("int4", "bf16")] == ["fp16", "fp32"]
    for name, description in described.items():
        parity = description["parity"]
        assert len(parity["greedy_tokens_until_divergence"]) == parity["prompts"] == 4, name
        assert all(0 <= n <= parity["greedy_steps"] for n in parity["greedy_tokens_until_divergence"]), name
        assert parity["greedy_batch_invariant"] is True, name
        quality = parity["quality"]
        assert quality["perplexity_delta"] == pytest.approx(
            quality["perplexity"] - quality["perplexity_reference"]
        )
    ops = {node.op_type for node in onnx.load(str(int4 / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops
    assert onnx.TensorProto.BFLOAT16 in _initializer_types(bf16)
    # the same prompt alone and in a left-padded batch of 3 gives the same greedy tokens, per tier
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    for directory in (int4, bf16):
        generator = Generator.load(directory)
        batch = [prompts[2], prompts[1], prompts[3]]  # the long prompt pads the other two
        alone = [generator([p], params)[0] for p in batch]
        assert generator(batch, params) == alone, directory.name
        expected = "float16" if directory == int4 else "float32"
        assert generator.backend.cache_dtype.__name__ == expected, directory.name


def test_tier_combinations_and_levels_are_checked():
    with pytest.raises(ValueError, match="--rounding must be least_squares or nearest"):
        ExportConfig(source="m", output="o", quantize="int8", rounding="stochastic")
    with pytest.raises(ValueError, match="--quantize int4 applies to fp32"):
        ExportConfig(source="a", output="b", precision="bf16", quantize="int4")
    with pytest.raises(ValueError, match="--accuracy_level"):
        ExportConfig(source="a", output="b", quantize="int4", accuracy_level=7)
    with pytest.raises(ValueError, match="--quantize must be int8 or int4"):
        ExportConfig(source="a", output="b", quantize="int2")
    with pytest.raises(ValueError, match="--kv_cache_precision fp16 needs the in-place cache"):
        ExportConfig(source="a", output="b", kv_cache="concat", kv_cache_precision="fp16")
    with pytest.raises(ValueError, match="--kv_cache must be"):
        ExportConfig(source="a", output="b", kv_cache="paged")
