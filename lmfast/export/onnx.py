"""`lmfast export onnx`: a trained causal LM -> a self-contained ONNX Runtime directory.

Writes (docs/architecture.md §3) model.onnx, the tokenizer files, config.json, generation_config.json
(`GenerationParams`) and export.json (source, opset, precision, parity). Everything is written
into a hidden sibling and renamed into place only after fp32 parity passed, so a failed export
leaves nothing behind that looks finished.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from lmfast import __version__
from lmfast.export.config import ExportConfig
from lmfast.export.decoder import InPlaceDecoder, build_decoder
from lmfast.export.output import check_output, install, staging_dir, write_error
from lmfast.export.source import TOKENIZER_FILES, load_source
from lmfast.generation.model_files import eos_ids, hf_generation_eos
from lmfast.generation.params import GenerationParams

logger = logging.getLogger(__name__)

# protobuf's hard limit is 2 GiB; above this the weights go to model.onnx.data
INLINE_LIMIT_BYTES = 1_800_000_000


class ParityError(RuntimeError):
    """The exported fp32 graph does not reproduce the torch model."""


def export_onnx(config: ExportConfig) -> Path:
    """Export `config.source` to `config.output`, measure parity and describe it in export.json.

    Returns:
        The export directory.

    Raises:
        FileExistsError: the output exists and `overwrite` is off.
        OutputWriteError: a full disk, or an output that cannot be written.
        FileNotFoundError, ValueError: a bad source, an unsupported architecture, or an output
            that --overwrite may not replace (not an export, the source or a parent of it).
        ParityError: fp32 logits or greedy tokens differ from the torch model.
    """
    output = config.output
    check_output(output, config.source, config.overwrite)
    started = time.perf_counter()
    loaded = load_source(config.source)
    decoder = build_decoder(
        loaded.model,
        fused_attention=config.attention == "fused",
        decoder=config.decoder,
        kv_cache=config.kv_cache,
    )
    inplace = isinstance(decoder, InPlaceDecoder)
    if config.kv_cache_precision == "fp16" and not inplace:
        raise ValueError("--kv_cache_precision fp16 needs the in-place cache (--kv_cache inplace)")
    staging = staging_dir(output)
    try:
        raw = staging / "raw" / "model.onnx"
        _torch_export(
            decoder, raw, config.opset, "fp32" if config.precision == "fp16" else config.kv_cache_precision
        )
        fusions, attention, quantized = _finalize(raw, staging / "model.onnx", config, decoder, loaded.model)
        shutil.rmtree(raw.parent)
        _write_side_files(staging, loaded)
        parity = _parity(loaded, staging, config)
        description = {
            "lmfast_version": __version__,
            "source": loaded.description,
            "model_type": loaded.model.config.model_type,
            "parameters": sum(p.numel() for p in loaded.model.parameters()),
            "opset": config.opset,
            "precision": config.precision,
            "quantize": config.quantize,
            "quantization": _quantization(config, quantized),
            "file_bytes": sum(p.stat().st_size for p in staging.glob("model.onnx*")),
            "optimize": config.optimize,
            "attention": attention,
            "decoder": type(decoder.inner if inplace else decoder).__name__,
            "kv_cache": "inplace" if inplace else "concat",
            "kv_cache_precision": "fp16" if config.precision == "fp16" else config.kv_cache_precision,
            "fusions": fusions,
            "inputs": [*_input_names(inplace), "past_key_values.{i}.key/value"],
            "outputs": ["logits (the logits_index positions)", "present.{i}.key/value"],
            "parity": parity,
            "export_seconds": round(time.perf_counter() - started, 2),
        }
        (staging / "export.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        install(staging, output)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        failure = write_error(output, error)
        if failure is not error:
            raise failure from error
        raise
    return output


def _input_names(inplace: bool) -> list[str]:
    """The graph's inputs before the cache, in order (decoder.py's two layouts)."""
    if inplace:
        return ["input_ids", "position_ids", "seqlens_k", "total_sequence_length", "logits_index"]
    return ["input_ids", "attention_mask", "position_ids", "logits_index"]


def _torch_export(decoder, path: Path, opset: int, kv_cache_precision: str = "fp32") -> None:
    """One graph for prompt and decode steps, every length dynamic. The concat graph is traced on
    a left-padded example (a mask of all ones lets exporters drop the mask) with a non-empty past;
    the in-place one on right-padded rows over buffers longer than they hold."""
    import torch
    from torch.export import Dim

    batch, seq, past_len = 2, 3, 4
    input_ids = torch.randint(0, decoder.model.config.vocab_size, (batch, seq))
    attention_mask = torch.ones(batch, past_len + seq, dtype=torch.int64)
    attention_mask[0, :2] = 0
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, past_len:]
    logits_index = torch.arange(1, seq)  # K = 2 of T = 3: K is its own dynamic dim
    inplace = isinstance(decoder, InPlaceDecoder)
    capacity = past_len + seq + 1  # a buffer's length is its own dim too
    cache_dtype = torch.float16 if kv_cache_precision == "fp16" else torch.float32
    past = [
        torch.zeros(
            batch,
            decoder.num_kv_heads,
            capacity if inplace else past_len,
            decoder.head_dim,
            dtype=cache_dtype,
        )
        for _ in range(2 * decoder.n_layer)
    ]
    past_names = [
        f"past_key_values.{i // 2}.{'value' if i % 2 else 'key'}" for i in range(2 * decoder.n_layer)
    ]
    dynamic = Dim.DYNAMIC
    if inplace:
        seqlens_k = torch.tensor([past_len + seq - 1, past_len + seq - 2], dtype=torch.int32)
        total = torch.tensor(past_len + seq, dtype=torch.int32)
        inputs = (input_ids, position_ids, seqlens_k, total, logits_index, *past)
        dynamic_shapes = (
            {0: dynamic, 1: dynamic},
            {0: dynamic, 1: dynamic},
            {0: dynamic},
            None,
            {0: dynamic},
            tuple({0: dynamic, 2: dynamic} for _ in past),
        )
    else:
        inputs = (input_ids, attention_mask, position_ids, logits_index, *past)
        # the mask's length gets its own dim: torch.export works out that it equals past + seq
        dynamic_shapes = (
            {0: dynamic, 1: dynamic},
            {0: dynamic, 1: dynamic},
            {0: dynamic, 1: dynamic},
            {0: dynamic},
            tuple({0: dynamic, 2: dynamic} for _ in past),
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            decoder,
            inputs,
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=[*_input_names(inplace), *past_names],
            output_names=["logits", *(n.replace("past_key_values.", "present.") for n in past_names)],
            dynamic_shapes=dynamic_shapes,
            verbose=False,
        )


def _finalize(
    raw: Path, target: Path, config: ExportConfig, decoder: Any, source_model: Any = None
) -> tuple[dict[str, int], str, dict[str, Any]]:
    """Apply --optimize, --precision fp16/bf16 and --quantize int8/int4 and save model.onnx.

    Returns:
        The fused operator counts from --optimize (empty without it), what export.json
        reports as "attention": fused where the saved graph runs ONNX Runtime's
        MultiHeadAttention (asked for, and the architecture allows it), else plain, and what
        `apply_tier` measured of the quantization (bits per weight, recipe, calibration).
    """
    import onnx

    fusions: dict[str, int] = {}
    if config.optimize:
        model, fusions = _optimize(raw, decoder)
    else:
        model = onnx.load(str(raw))
    if config.precision == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True)
    quantized: dict[str, Any] = {}
    if config.precision == "bf16" or config.quantize != "none":
        model = apply_tier(model, config, source_model, quantized)
    _save(model, target)
    fused = any(node.op_type == "MultiHeadAttention" for node in model.graph.node)
    return fusions, "fused" if fused else "plain", quantized


def apply_tier(
    model: Any, config: ExportConfig, source_model: Any = None, measured: dict[str, Any] | None = None
) -> Any:
    """--precision bf16 or --quantize int8/int4 on an fp32 graph (an onnx ModelProto): the one
    home of the lossy tiers, also used by benchmarks/bench_engines.py on an existing fp32 export.

    --recipe mixed needs `source_model` (the torch model the graph was exported from) to name the
    matrices and, with --calibration_dataset, to measure their inputs; what it chose and the bits
    per weight go into `measured` (export.json's "quantization")."""
    if config.precision == "bf16":
        return bf16_weights(model)
    if config.quantize != "none" and config.resolved_recipe() == "mixed":
        return _mixed_tier(model, config, source_model, {} if measured is None else measured)
    if config.quantize != "none":
        # weight-only: the dynamic int8 of onnxruntime's quantize_dynamic scales activations per
        # tensor, i.e. over the whole batch, so a row's greedy tokens changed with its neighbours
        from lmfast.export.quantize import matmul_nbits

        model = _gemm_to_matmul(model)
        bits = 8 if config.quantize == "int8" else 4
        head = _lm_head_node(model)
        passes = [(bits, frozenset())]
        if head is not None and config.lm_head_bits != bits:  # the rest first, the head apart
            passes = [(bits, frozenset([head])), (config.lm_head_bits, frozenset())]
        for pass_bits, exclude in passes:
            model = matmul_nbits(
                model,
                bits=pass_bits,
                block_size=config.block_size,
                symmetric=not config.asymmetric,
                accuracy_level=config.accuracy_level,
                least_squares=config.rounding == "least_squares",
                exclude=exclude,
            )
    return model


def _mixed_tier(model: Any, config: ExportConfig, source_model: Any, measured: dict[str, Any]) -> Any:
    """--recipe mixed: `recipes.MixedPlan` over every MatMul, calibrated when asked to."""
    from lmfast.export.calibration import calibrate, inspect_model, kn_weights, measure_fisher
    from lmfast.export.quantize import matmul_nbits_planned
    from lmfast.export.recipes import MixedPlan

    if source_model is None:
        raise ValueError("--recipe mixed needs the torch model the graph was exported from")
    if config.calibration_dataset is not None:
        started = time.perf_counter()
        calibration = calibrate(
            source_model, config.calibration_dataset, config.calibration_samples, config.seed
        )
        logger.info(
            "calibrated on %d samples (%d tokens) of %s in %.0f s",
            calibration.record["samples"],
            calibration.record["tokens"],
            config.calibration_dataset,
            time.perf_counter() - started,
        )
    else:
        calibration = inspect_model(source_model)
    model = _gemm_to_matmul(model)
    plan = MixedPlan(calibration, _lm_head_node(model), config.lm_head_bits)
    allocation: dict[str, Any] = {"allocation": config.resolved_allocation()}
    if allocation["allocation"] == "sensitivity":
        started = time.perf_counter()
        measure_fisher(source_model, calibration, seed=config.seed)
        weights = sum(w.size for w in kn_weights(source_model).values())
        budget = None if config.bits_per_weight is None else int(config.bits_per_weight * weights)
        budget = plan.allocate(source_model, config.block_size, budget)
        allocation["budget_bits_per_weight"] = round(budget / weights, 4)
        logger.info(
            "allocated formats by sensitivity within %.3f bits per weight in %.0f s",
            budget / weights,
            time.perf_counter() - started,
        )
    model, totals = matmul_nbits_planned(model, plan, config.block_size, config.accuracy_level)
    measured.update(
        plan.record(),
        **allocation,
        bits_per_weight=round(totals["bits"] / max(1, totals["weights"]), 4),
        quantized_weights=totals["weights"],
        calibration=calibration.record,
    )
    return model


def _lm_head_node(model: Any) -> str | None:
    """The name of the MatMul that writes the graph's `logits` (the vocabulary projection)."""
    for node in model.graph.node:
        if node.op_type == "MatMul" and "logits" in node.output:
            return node.name
    return None


def _gemm_to_matmul(model: Any) -> Any:
    """Rewrite bias-free `Gemm(x, W, transB=1)` (the exporter's lm_head) as `MatMul(x, W^T)`:
    `quantize.matmul_nbits` quantizes MatMul only, and the lm_head is the largest matrix of a small
    LM (80% of the 16M GPT-2's weights, 21% of SmolLM2-135M's). A tied embedding keeps its fp32
    copy for the Gather, which reads one row per token."""
    from onnx import helper, numpy_helper

    from lmfast.export.quantize import drop_unused_initializers

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            node.op_type == "Gemm"
            and (len(node.input) == 2 or not node.input[2])
            and node.input[1] in initializers
            and attributes.get("transA", 0) == 0
            and attributes.get("alpha", 1.0) == 1.0
        )
        if not plain:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        if attributes.get("transB", 0):
            weight = weight.T
        name = f"{node.input[1]}_matmul"
        graph.initializer.append(numpy_helper.from_array(weight.copy(), name))
        nodes.append(helper.make_node("MatMul", [node.input[0], name], list(node.output), name=node.name))
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    return model


BF16_MIN_ELEMENTS = 1024
"""fp32 initializers at least this large (the weight matrices and embeddings) are stored in bf16;
norms, biases and shape constants stay fp32."""


def bf16_weights(model: Any) -> Any:
    """Store the large fp32 initializers as bfloat16 (rounded to nearest even), each read through
    a Cast to fp32: ONNX Runtime's CPU provider has no bf16 MatMul (NOT_IMPLEMENTED in 1.32), and
    its constant folding turns each Cast back into an fp32 weight when the session loads."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    kept, casts = [], []
    for tensor in graph.initializer:
        if tensor.data_type != onnx.TensorProto.FLOAT or np.prod(tensor.dims) < BF16_MIN_ELEMENTS:
            kept.append(tensor)
            continue
        bits = numpy_helper.to_array(tensor).astype(np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        stored = onnx.helper.make_tensor(
            f"{tensor.name}_bf16", onnx.TensorProto.BFLOAT16, tensor.dims, rounded.tobytes(), raw=True
        )
        kept.append(stored)
        casts.append(onnx.helper.make_node("Cast", [stored.name], [tensor.name], to=onnx.TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _quantization(config: ExportConfig, measured: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """export.json's record of how the weights were stored (None: as the source's fp32)."""
    if config.quantize != "none" and config.resolved_recipe() == "mixed":
        return {
            "operator": "MatMulNBits",
            "recipe": "mixed",
            "bits": 4,
            "lm_head_bits": config.lm_head_bits,
            "block_size": config.block_size,
            "formats": {
                "default": "4-bit asymmetric, scale and zero point searched per block",
                "8-bit": "attention values and FFN down projections of llama.cpp's use_more_bits layers"
                if config.resolved_allocation() == "static"
                else "the parts whose estimated KL per stored bit pays most, within the budget",
                "head": f"{config.lm_head_bits}-bit"
                if config.resolved_allocation() == "static"
                else "allocated",
            },
            "accuracy_level": config.accuracy_level,
            **(measured or {}),
        }
    if config.quantize != "none":
        return {
            "recipe": "plain",
            "operator": "MatMulNBits",
            "bits": 8 if config.quantize == "int8" else 4,
            "lm_head_bits": config.lm_head_bits,
            "block_size": config.block_size,
            "symmetric": not config.asymmetric,
            "rounding": "min/max" if config.asymmetric else config.rounding,
            "accuracy_level": config.accuracy_level,
        }
    if config.precision == "bf16":
        return {
            "weights": "bfloat16",
            "compute": "fp32: lmfast's Bf16MatMul widens bf16 in registers; a plain ONNX Runtime "
            "upcasts the weights at session load",
        }
    return None


def _optimize(raw: Path, decoder: Any) -> tuple[Any, dict[str, int]]:
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        optimized = optimize_model(
            str(raw),
            model_type="gpt2",
            num_heads=decoder.n_head,
            hidden_size=decoder.n_head * decoder.head_dim,
            opt_level=1,
        )
        stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
        return optimized.model, stats
    except Exception as error:  # the optimizer raises anything from KeyError to protobuf errors
        raise ValueError(
            f"--optimize: ONNX Runtime's transformer optimizer failed on this graph: {error}"
        ) from error


def _save(model: Any, target: Path) -> None:
    import onnx

    large = model.ByteSize() > INLINE_LIMIT_BYTES
    onnx.save_model(
        model,
        str(target),
        save_as_external_data=large,
        all_tensors_to_one_file=True,
        location=f"{target.name}.data" if large else None,
    )


def _write_side_files(directory: Path, loaded) -> None:
    for name in TOKENIZER_FILES:
        if (loaded.tokenizer_dir / name).is_file():
            shutil.copy2(loaded.tokenizer_dir / name, directory / name)
    config = loaded.model.config.to_dict()
    # every eos the model may end a turn with: the config's, plus the generation config's list
    # (instruct models end turns on <|im_end|> / <|eot_id|> besides the pretraining eos)
    generation_eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    eos: list[int] = []
    for token in (
        *eos_ids(config.get("eos_token_id")),
        *hf_generation_eos(loaded.tokenizer_dir),
        *eos_ids(generation_eos),
    ):
        if token not in eos:
            eos.append(token)
    if eos:
        config["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    (directory / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")
    GenerationParams().save(directory / "generation_config.json")


def _parity(loaded, directory: Path, config: ExportConfig) -> dict[str, Any]:
    """Measure parity; only the plain fp32 graph must pass (fp16/int8 figures are reported)."""
    import onnxruntime as ort

    from lmfast.export.parity import measure_parity

    # fp16 is meant for the GPU; without one it is still measured, on ONNX Runtime's CPU kernels
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    provider = "cuda" if config.precision == "fp16" and cuda else "cpu"
    parity = measure_parity(loaded.model, loaded.tokenizer_dir, directory, config.parity_steps, provider)
    exact = config.precision == "fp32" and config.quantize == "none" and config.kv_cache_precision == "fp32"
    if exact and not parity["passed"]:
        raise ParityError(f"fp32 {parity_summary(parity)}")
    if not exact:
        parity["passed"] = bool(parity["greedy_tokens_identical"])  # the criterion of a lossy export
        what = config.quantize if config.quantize != "none" else config.precision
        if config.kv_cache_precision == "fp16" and what == "fp32":
            what = "fp16 cache"
        if parity["passed"]:
            logger.info("%s parity: greedy tokens identical to fp32 torch (%s)", what, _quality_line(parity))
        elif not config.accept_quality_loss:
            raise ParityError(f"{what} {parity_summary(parity)}; pass --accept_quality_loss to keep it")
    return parity


def parity_summary(parity: dict[str, Any]) -> str:
    """One line: what failed, with the figures."""
    return (
        f"parity failed: greedy tokens identical: {parity['greedy_tokens_identical']}, max abs logit "
        f"diff {parity['max_abs_logit_diff']:.3g} (fp32 tolerance {parity['tolerance']:.3g}), "
        + _quality_line(parity)
    )


def _quality_line(parity: dict[str, Any]) -> str:
    quality = parity.get("quality") or {}
    if not quality:
        return "no quality figures"
    return (
        f"top-1 agreement {quality['top1_agreement']:.3f}, perplexity {quality['perplexity']:.3f} "
        f"vs fp32 {quality['perplexity_reference']:.3f}"
    )
