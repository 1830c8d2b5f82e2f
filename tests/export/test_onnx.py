"""`lmfast export onnx`: the export dir's files, its options, and refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lmfast.export import ExportConfig
from lmfast.export.cli import main
from lmfast.generation import GenerationParams, Generator


def test_export_dir_holds_what_design_3_lists(onnx_dir: Path, varied_model_dir: Path):
    for name in ("model.onnx", "tokenizer.json", "config.json", "generation_config.json", "export.json"):
        assert (onnx_dir / name).is_file(), name
    assert GenerationParams.from_file(onnx_dir / "generation_config.json") == GenerationParams()
    description = json.loads((onnx_dir / "export.json").read_text())
    assert description["source"] == {"kind": "hf", "path": str(varied_model_dir.resolve())}
    assert description["opset"] >= 17 and description["precision"] == "fp32"
    parity = description["parity"]
    assert parity["passed"] and parity["greedy_tokens_identical"] and parity["greedy_steps"] == 32
    assert 0 <= parity["max_abs_logit_diff"] <= parity["tolerance"]
    assert not list(onnx_dir.parent.glob(".*partial*"))  # the staging dir was renamed into place


def test_graph_has_dynamic_batch_sequence_and_past(onnx_dir: Path):
    import onnx

    graph = onnx.load(str(onnx_dir / "model.onnx"), load_external_data=False).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    # the default for GPT-2: the in-place cache (decoder.InPlaceDecoder)
    assert json.loads((onnx_dir / "export.json").read_text())["kv_cache"] == "inplace"
    assert set(dims) >= {"input_ids", "position_ids", "seqlens_k", "total_sequence_length", "logits_index"}
    assert "attention_mask" not in dims and dims["total_sequence_length"] == []
    assert all(isinstance(d, str) for d in dims["input_ids"] + dims["position_ids"] + dims["seqlens_k"])
    batch, heads, capacity, head_dim = dims["past_key_values.1.value"]
    assert isinstance(batch, str) and isinstance(capacity, str) and (heads, head_dim) == (4, 16)
    outputs = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output
    }
    assert outputs["present.1.value"] == dims["past_key_values.1.value"]  # the same buffer
    # tied input/output embeddings are stored once
    initializers = [i for i in graph.initializer if 50257 in i.dims]
    assert len(initializers) == 1


def test_existing_output_is_refused_without_overwrite(onnx_dir, varied_model_dir, capsys):
    assert main(["onnx", str(varied_model_dir), "--output", str(onnx_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_source_that_is_not_a_model_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["onnx", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "not a checkpoint or model" in capsys.readouterr().err
    assert main(["onnx", str(tmp_path / "missing"), "--output", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture_names_what_is_supported(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 10}))
    assert main(["onnx", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unsupported architecture 'bert'" in err and "gpt2" in err


def test_bad_option_combinations_are_refused():
    with pytest.raises(ValueError, match="int8"):
        ExportConfig(source="a", output="b", precision="fp16", quantize="int8")
    with pytest.raises(ValueError, match="opset"):
        ExportConfig(source="a", output="b", opset=13)


def test_failed_fp32_parity_refuses_to_finish(onnx_dir, varied_model_dir, monkeypatch):
    import lmfast.export.onnx as export_module
    import lmfast.export.parity as parity_module
    from lmfast.export.source import load_source

    failing = {
        "passed": False,
        "max_abs_logit_diff": 3.0,
        "tolerance": 1e-3,
        "greedy_tokens_identical": False,
    }
    monkeypatch.setattr(parity_module, "measure_parity", lambda *args, **kwargs: dict(failing))
    config = ExportConfig(source=varied_model_dir, output=onnx_dir.parent / "never")
    with pytest.raises(export_module.ParityError, match="fp32 parity failed"):
        export_module._parity(load_source(varied_model_dir), onnx_dir, config)
    # int8 is refused too, unless the user accepts the loss; then its figures are kept
    quantized = ExportConfig(source=varied_model_dir, output=onnx_dir.parent / "never", quantize="int8")
    with pytest.raises(export_module.ParityError, match="--accept_quality_loss"):
        export_module._parity(load_source(varied_model_dir), onnx_dir, quantized)
    quantized.accept_quality_loss = True
    assert export_module._parity(load_source(varied_model_dir), onnx_dir, quantized)["passed"] is False


@pytest.mark.slow
def test_export_of_an_lmfast_trained_checkpoint_with_fusions(trained_experiment, tmp_path, capsys, prompts):
    from lmfast.export.source import load_source
    from lmfast.generation.torch_backend import TorchBackend

    output = tmp_path / "export"
    ckpt = trained_experiment / "checkpoints" / "last.ckpt"
    assert main(["onnx", str(ckpt), "--output", str(output), "--optimize", "--parity_steps", "16"]) == 0
    assert capsys.readouterr().out.startswith(str(output))
    description = json.loads((output / "export.json").read_text())
    assert description["source"]["kind"] == "checkpoint" and description["source"]["global_step"] > 0
    assert description["parity"]["passed"] and description["fusions"].get("SkipLayerNormalization", 0) > 0

    # the export reproduces the checkpoint's model (its vocabulary padded past the tokenizer's)
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    exported = Generator.load(output)
    assert exported.info.vocab_size > exported.codec.vocab_size
    from_ckpt = Generator(TorchBackend(load_source(ckpt).model), exported.codec, exported.info)
    assert exported(prompts, params) == from_ckpt(prompts, params)
    # prompts begin as the dataset's documents did (GPT2Tokenizer keeps its bos_token), in hf/ and the export
    dataset_dir = trained_experiment.parents[2] / "datasets" / "nietzsche" / "0"
    dataset = json.loads((dataset_dir / "description.json").read_text())
    prefix = dataset["prompt_prefix_token_ids"]
    assert prefix == [dataset["bos_token_id"]]
    for directory in (trained_experiment / "hf", output):
        assert json.loads((directory / "prompt_encoding.json").read_text())["prefix_token_ids"] == prefix
    plain = exported.codec.tokenizer.encode(prompts[0], add_special_tokens=False).ids
    assert exported.codec.encode(prompts[0]) == [*prefix, *plain]


def _graph_ops(export_dir: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(export_dir / "model.onnx"), load_external_data=False).graph.node}


@pytest.mark.slow
def test_cache_layouts_and_fused_attention_agree_on_padded_batches_and_the_cache(
    onnx_dir: Path, varied_model_dir: Path, tmp_path: Path, prompts
):
    """Three graphs of one model: the default in-place cache (GroupQueryAttention over buffers
    written in place), --kv_cache concat in standard operators, and --attention fused (ONNX
    Runtime's MultiHeadAttention, concat cache). They must give the same logits for a left-padded
    prompt batch and for decode steps over their caches, and hold the same keys and values: the
    in-place row b's first n columns are the concat cache's n real columns."""
    import numpy as np

    fused_dir, concat_dir = tmp_path / "fused", tmp_path / "concat"
    assert main(["onnx", str(varied_model_dir), "--output", str(fused_dir), "--attention", "fused"]) == 0
    assert main(["onnx", str(varied_model_dir), "--output", str(concat_dir), "--kv_cache", "concat"]) == 0
    described = {d: json.loads((d / "export.json").read_text()) for d in (onnx_dir, fused_dir, concat_dir)}
    assert [described[d]["kv_cache"] for d in (onnx_dir, fused_dir, concat_dir)] == [
        "inplace",
        "concat",
        "concat",
    ]
    assert described[fused_dir]["attention"] == "fused" and described[concat_dir]["attention"] == "plain"
    assert "MultiHeadAttention" in _graph_ops(fused_dir)
    assert "GroupQueryAttention" in _graph_ops(onnx_dir) and "GroupQueryAttention" not in _graph_ops(
        concat_dir
    )

    generators = {
        name: Generator.load(d)
        for name, d in (("inplace", onnx_dir), ("fused", fused_dir), ("concat", concat_dir))
    }
    ids = [generators["concat"].codec.encode(p) for p in prompts]
    width = max(map(len, ids))
    input_ids = np.zeros((len(ids), width), dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for row, tokens in enumerate(ids):
        input_ids[row, width - len(tokens) :], mask[row, width - len(tokens) :] = tokens, 1
    positions = np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
    steps = [(input_ids, mask, positions)]
    for step in range(3):  # three decode steps on top of the padded prompt
        mask = np.concatenate([mask, np.ones((len(ids), 1), dtype=np.int64)], axis=1)
        steps.append((np.full((len(ids), 1), 11 + step), mask, positions[:, -1:] + 1 + step))
    past = dict.fromkeys(generators)
    for step_ids, step_mask, step_positions in steps:
        logits = {}
        for name, generator in generators.items():
            logits[name], past[name] = generator.backend.forward(
                step_ids, step_mask, step_positions, past[name]
            )
        for name in ("fused", "inplace"):
            np.testing.assert_allclose(logits[name], logits["concat"], atol=1e-4, rtol=1e-4)
        real = step_mask.astype(bool)[:, None, :, None]  # padded columns may differ, never read
        for a, b in zip(past["fused"], past["concat"], strict=True):
            np.testing.assert_allclose(np.where(real, a, 0), np.where(real, b, 0), atol=1e-5)
        held = step_mask.sum(axis=1)
        assert past["inplace"].lengths.tolist() == held.tolist()
        for buffer, b in zip(past["inplace"].buffers, past["concat"], strict=True):
            for row, n in enumerate(held.tolist()):
                np.testing.assert_allclose(buffer[row, :, :n], b[row, :, -n:], atol=1e-5)
    params = GenerationParams(max_new_tokens=16, temperature=0.0)
    texts = [generator(prompts, params) for generator in generators.values()]
    assert texts[0] == texts[1] == texts[2] == Generator.load(varied_model_dir)(prompts, params)


def test_spinning_setting_reaches_the_session_and_changes_speed_only(onnx_dir: Path, prompts):
    reference = Generator.load(onnx_dir)
    params = GenerationParams(max_new_tokens=8, temperature=0.0)
    for spin_us, allowed in ((0, "0"), (1000, "1")):
        generator = Generator.load(onnx_dir, num_threads=2, spin_us=spin_us)
        options = generator.backend.session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == allowed
        assert generator(prompts, params) == reference(prompts, params)


@pytest.mark.slow
def test_int8_export_is_weight_only_with_quality_figures_and_batch_invariant(
    trained_experiment, tmp_path, prompts
):
    from lmfast.export import export_onnx

    output = export_onnx(
        ExportConfig(
            source=trained_experiment,
            output=tmp_path / "int8",
            quantize="int8",
            parity_steps=8,
            accept_quality_loss=True,
        )
    )
    description = json.loads((output / "export.json").read_text())
    assert description["source"]["kind"] == "experiment" and description["quantize"] == "int8"
    assert description["source"]["path"] == str(trained_experiment.resolve())
    quality = description["parity"]["quality"]
    assert 0 <= quality["top1_agreement"] <= 1 and quality["perplexity"] > 1 and quality["tokens"] > 10
    assert "MatMulNBits" in _graph_ops(output)
    assert not _graph_ops(output) & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
    # a row's greedy tokens do not depend on what else is in the batch
    generator = Generator.load(output)
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    batched = generator(prompts * 2, params)
    assert batched == [generator([p], params)[0] for p in prompts * 2]


@pytest.mark.slow
def test_fp16_export_keeps_the_cache_in_half_precision(varied_model_dir, tmp_path):
    from lmfast.export import export_onnx

    output = export_onnx(
        ExportConfig(source=varied_model_dir, output=tmp_path / "fp16", parity_steps=8, precision="fp16")
    )
    description = json.loads((output / "export.json").read_text())
    assert description["precision"] == "fp16" and "max_abs_logit_diff" in description["parity"]
    generator = Generator.load(output)
    assert generator.backend.cache_dtype.__name__ == "float16"
    assert generator(["Truth is"], max_new_tokens=4, temperature=0.0)[0][0]


@pytest.mark.gpu
def test_cuda_provider_matches_cpu_greedy(onnx_dir, prompts):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu and a CUDA GPU")
    cpu, cuda = Generator.load(onnx_dir), Generator.load(onnx_dir, provider="cuda")
    params = GenerationParams(max_new_tokens=16, temperature=0.0)
    assert cuda(prompts, params) == cpu(prompts, params)


@pytest.mark.slow
@pytest.mark.parametrize(("kv_heads", "attention"), [(2, "plain"), (4, "fused")])
def test_llama_family_exports_with_parity(tmp_path, prompts, kv_heads, attention):
    """Asked for fused attention: grouped-query attention (2 kv heads for 4 query heads) keeps
    plain operators; with as many kv heads as query heads the rotary-embedded keys go through the
    fused operator."""
    import torch
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    from lmfast.export import export_onnx

    source = tmp_path / "llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50257,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        max_position_embeddings=128,
        initializer_range=0.3,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    LlamaForCausalLM(config).eval().save_pretrained(source)
    GPT2TokenizerFast.from_pretrained(
        Path(__file__).parents[2] / "lmfast" / "assets" / "gpt2"
    ).save_pretrained(source)
    output = export_onnx(
        ExportConfig(source=source, output=tmp_path / "export", parity_steps=16, attention="fused")
    )
    description = json.loads((output / "export.json").read_text())
    assert description["model_type"] == "llama" and description["parity"]["passed"]
    assert description["attention"] == attention
    onnx_generator = Generator.load(output)
    assert onnx_generator.backend.num_kv_heads == kv_heads  # the cache keeps the grouped heads only
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    assert onnx_generator(prompts, params) == Generator.load(source)(prompts, params)


@pytest.mark.parametrize(
    "rope_scaling",
    [
        None,
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 32},
    ],
    ids=["default", "llama3"],
)  # fmt: skip
def test_llama_rotary_is_one_node_per_projection_and_keeps_rope_scaling(tmp_path, prompts, rope_scaling):
    """The hand-written Llama step rotates q and k with ONNX Runtime's RotaryEmbedding, fed the
    step's own cos/sin rows, so a scaled rope (Llama 3's) keeps parity with HF past the original
    context."""
    import onnx
    import torch
    from transformers import GPT2TokenizerFast, LlamaConfig, LlamaForCausalLM

    from lmfast.export import export_onnx

    source = tmp_path / "llama"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50257, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        initializer_range=0.3, bos_token_id=50256, eos_token_id=50256, rope_scaling=rope_scaling,
    )  # fmt: skip
    LlamaForCausalLM(config).eval().save_pretrained(source)
    GPT2TokenizerFast.from_pretrained(
        Path(__file__).parents[2] / "lmfast" / "assets" / "gpt2"
    ).save_pretrained(source)
    output = export_onnx(ExportConfig(source=source, output=tmp_path / "export", parity_steps=48))
    assert json.loads((output / "export.json").read_text())["parity"]["passed"]
    ops = [node.op_type for node in onnx.load(str(output / "model.onnx")).graph.node]
    assert ops.count("RotaryEmbedding") == 2 * config.num_hidden_layers
    long_prompts = [prompt * 12 for prompt in prompts]  # beyond original_max_position_embeddings
    params = GenerationParams(max_new_tokens=8, temperature=0.0)
    assert Generator.load(output)(long_prompts, params) == Generator.load(source)(long_prompts, params)
