"""`ExportConfig`: the flags of `lmfast export onnx`, one field each (flag = field = export.json key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmfast.field_rules import bounds, check_fields, worded
from lmfast.flags import UserError


@dataclass
class ExportConfig:
    """Export a trained causal LM to an ONNX Runtime directory (docs/architecture.md §3)."""

    source: Path
    """An experiment dir (its hf/, else its LoRA adapter/; `<name>/latest` works), a Lightning .ckpt from
    one, a Hugging Face model dir, a PEFT LoRA adapter dir (merged onto its base model) or a .gguf file."""
    output: Path
    """The export directory to write."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Weights and cache precision. fp16 is for the CUDA provider. bf16 stores the weights in
    bfloat16 (half the file) and ONNX Runtime upcasts them to fp32 once at load: its CPU provider
    has no bf16 MatMul, so compute, speed and cache are fp32's, quality is bf16 weights'."""
    quantize: Literal["none", "int8", "int4"] = field(
        default="none", metadata=worded("int8 or int4 (or omitted)")
    )
    """int8 / int4: weight-only block-wise quantization (ONNX Runtime's MatMulNBits): one scale
    (and with --asymmetric a zero point) per `block_size` weights, as llama.cpp's q8_0/q4_0; the
    activations are quantized per row and block at --accuracy_level 4 (the default), so a row's
    logits do not depend on the rest of the batch."""
    block_size: int = 32
    """Weights per scale for --quantize int8/int4 (a power of two >= 16)."""
    asymmetric: bool = False
    """--quantize: store a zero point per block too (min/max range, as llama.cpp's q4_1)."""
    rounding: Literal["least_squares", "nearest"] = "least_squares"
    """--quantize, symmetric blocks: least_squares keeps, per block, the rounding (of 17 tried
    around the max/-2^(bits-1) scale) whose least-squares scale leaves the smallest squared error;
    nearest is round-to-nearest on that one scale (llama.cpp's q4_0/q8_0 and ONNX Runtime's own
    quantizer). Same bytes and speed. --asymmetric blocks always take min/max."""
    recipe: Literal["auto", "mixed", "plain"] = "auto"
    """--quantize: mixed (the Q4_K_M idea, docs/quantization.md): 4-bit asymmetric blocks whose
    scale and zero point are searched per block, the attention values and FFN down projections of
    half the layers and the head at 8 bits; plain: one format for every matrix (--asymmetric,
    --rounding), the head at --lm_head_bits. auto: mixed for int4 (the best measured), plain for int8."""
    calibration_dataset: Path | None = None
    """--quantize: a dataset written by `lmfast prepare` (the model's tokenizer) whose train samples
    calibrate --recipe mixed: each input channel's rounding error weighs by its mean squared
    activation, and the 4-bit blocks are rounded GPTQ's way (errors compensated on later rows)."""
    calibration_samples: int = field(default=256, metadata=bounds(ge=1))
    """Train samples of --calibration_dataset the activations are measured on."""
    allocation: Literal["auto", "static", "sensitivity"] = "auto"
    """--recipe mixed: which parts get 8 bits. static: llama.cpp's Q4_K_M rule (attention values,
    FFN down of half the layers, the head); sensitivity: each part's formats scored by the KL they
    are estimated to cost (calibrated output error times the Fisher information of the outputs),
    the cheapest KL per bit chosen within --bits_per_weight; needs --calibration_dataset. auto:
    sensitivity when calibrated, else static."""
    bits_per_weight: float | None = field(default=None, metadata=bounds(gt=4, lt=16))
    """--allocation sensitivity: stored bits per quantized weight at most (levels, scales and zero
    points of every matrix, the head included); default: what the static rule stores."""
    seed: int = 0
    """Which --calibration_samples are drawn: the same seed, the same bytes."""
    lm_head_bits: Literal[4, 8] = 8
    """--quantize: bits of the vocabulary projection (lm_head), 4 or 8. 8 by default, as
    llama.cpp's q4_0 keeps the output matrix at q8_0 (SmolLM2-135M's tied embedding); there an
    int4 export's perplexity was 25.0 with an 8-bit head and 29.7 with a 4-bit one (fp32 19.3)."""
    accuracy_level: int = field(default=4, metadata=bounds(ge=0, le=4))
    """--quantize: MatMulNBits' compute type: 4 int8 activations quantized per row and block (as
    llama.cpp's q8_0 dot products do); 0 fp32 activations, about 10x slower for int8 on ONNX
    Runtime 1.32's CPU kernels. SmolLM2-135M int8 at 4: perplexity 19.27 vs fp32's 19.28."""
    accept_quality_loss: bool = False
    """Finish a quantized export whose greedy tokens differ from fp32 (else it is refused)."""
    optimize: bool = False
    """Run ONNX Runtime's transformer graph fusions on the exported graph."""
    attention: Literal["plain", "fused"] = "plain"
    """plain: standard ONNX operators. fused: ONNX Runtime's MultiHeadAttention contrib operator
    (half the graph's nodes, but no faster in lmfast's CPU decode loop; see StepAttention).
    Grouped-query attention is always plain."""
    kv_cache: Literal["auto", "inplace", "concat"] = "auto"
    """inplace: preallocated cache buffers the graph updates in place (ONNX Runtime's
    GroupQueryAttention), so a decode step costs the same at any context length; the hand-written
    GPT-2/Llama step only. concat: the graph returns past + new (every family, --attention fused).
    auto: inplace wherever it applies."""
    kv_cache_precision: Literal["fp32", "fp16"] = "fp32"
    """The in-place cache's storage: fp16 halves its memory and the bytes each step reads from it,
    attention still computed in fp32; a lossy tier, held to greedy parity like the others. On a
    CPU it was not faster (ONNX Runtime converts it back per head); --precision fp16 implies it."""
    decoder: Literal["auto", "transformers"] = "auto"
    """auto: the hand-written step for GPT-2 and Llama (faster), transformers' own modeling code
    for every other family; transformers: that code for every family."""
    overwrite: bool = False
    """Replace `output` if it exists."""
    opset: int = field(default=18, metadata=bounds(ge=17))
    """ONNX opset of the graph (>= 17)."""
    parity_steps: int = field(default=32, metadata=bounds(ge=1))
    """Greedy steps compared token for token with the torch model at export."""

    def __post_init__(self) -> None:
        """Bounds and choices are the fields' metadata and types (`check_fields`); the rules below tie
        fields together, read a file or (block_size: a power of two) are no range, so they stay code."""
        self.source = Path(self.source)
        self.output = Path(self.output)
        check_fields(self)
        if self.quantize != "none" and self.precision != "fp32":
            raise UserError(
                f"--quantize {self.quantize} applies to fp32 weights; drop --precision {self.precision}"
            )
        if self.calibration_dataset is not None:
            self.calibration_dataset = Path(self.calibration_dataset)
            if self.quantize == "none":
                raise UserError("--calibration_dataset applies to --quantize int8/int4")
            if self.resolved_recipe() != "mixed":
                raise UserError("--calibration_dataset needs --recipe mixed (or auto with --quantize int4)")
            if not (self.calibration_dataset / "description.json").is_file():
                raise UserError(
                    f"--calibration_dataset {self.calibration_dataset}: no description.json "
                    "(not a dataset written by `lmfast prepare`)"
                )
        if self.allocation == "sensitivity" and self.calibration_dataset is None:
            raise UserError("--allocation sensitivity needs --calibration_dataset (it measures the model)")
        if self.bits_per_weight is not None and self.resolved_allocation() != "sensitivity":
            raise UserError(
                "--bits_per_weight is the budget of --allocation sensitivity (with --calibration_dataset)"
            )
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise UserError(f"--block_size must be a power of two >= 16, got {self.block_size}")
        if self.kv_cache_precision == "fp16" and self.kv_cache == "concat":
            raise UserError("--kv_cache_precision fp16 needs the in-place cache, not --kv_cache concat")

    def resolved_recipe(self) -> str:
        """The recipe --recipe auto stands for: mixed at int4 (docs/quantization.md), plain at int8."""
        if self.recipe != "auto":
            return self.recipe
        return "mixed" if self.quantize == "int4" else "plain"

    def resolved_allocation(self) -> str:
        """What --allocation auto stands for: sensitivity when calibrated, else static."""
        if self.quantize == "none" or self.resolved_recipe() != "mixed":
            return "static"
        if self.allocation != "auto":
            return self.allocation
        return "sensitivity" if self.calibration_dataset is not None else "static"
