"""`lmfast export onnx SOURCE --output DIR [--precision fp32|fp16] [--quantize int8] [--optimize]
[--attention plain|fused] [--overwrite]`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from lmfast.export.config import ExportConfig


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmfast export", description="Export a trained model.")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT")
    onnx = formats.add_parser(
        "onnx",
        help="ONNX Runtime directory: model.onnx with KV cache, tokenizer, configs, export.json.",
        description="Export to a self-contained ONNX Runtime directory (DESIGN.md §3), checking "
        "parity with the torch model (fp32 must match).",
    )
    onnx.add_argument(
        "source", help="experiment dir (uses hf/), a .ckpt from one, or a Hugging Face model dir"
    )
    onnx.add_argument("--output", required=True, help="export directory to write")
    onnx.add_argument(
        "--precision", choices=["fp32", "fp16"], default="fp32", help="fp16 is for the CUDA provider"
    )
    onnx.add_argument(
        "--quantize",
        choices=["int8"],
        default=None,
        help="weight-only block-wise int8 (MatMulNBits; activations stay fp32, batch-invariant)",
    )
    onnx.add_argument("--block_size", type=int, default=32, help="weights per int8 scale (--quantize)")
    onnx.add_argument(
        "--accept_quality_loss",
        action="store_true",
        help="finish a quantized export whose greedy tokens differ from fp32 (exit 0, not 1)",
    )
    onnx.add_argument("--optimize", action="store_true", help="ONNX Runtime transformer graph fusions")
    onnx.add_argument(
        "--attention",
        choices=["fused", "plain"],
        default="plain",
        help="plain: standard ONNX operators (default); fused: ONNX Runtime's MultiHeadAttention",
    )
    onnx.add_argument(
        "--decoder",
        choices=["auto", "transformers"],
        default="auto",
        help="auto: hand-written step for GPT-2/Llama, transformers' modeling code for the other "
        "families; transformers: that code for every family",
    )
    onnx.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    onnx.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")
    onnx.add_argument("--parity_steps", type=int, default=32, help="greedy steps compared with torch")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, export, print the export dir and its parity figures; 2 on bad input."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.format != "onnx":
        parser.print_usage(sys.stderr)
        print("lmfast export: choose a format: onnx", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # the ONNX exporter's own passes log every removed node and folded constant at INFO
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = ExportConfig(
            source=args.source,
            output=args.output,
            precision=args.precision,
            quantize=args.quantize or "none",
            optimize=args.optimize,
            attention=args.attention,
            decoder=args.decoder,
            block_size=args.block_size,
            accept_quality_loss=args.accept_quality_loss,
            overwrite=args.overwrite,
            opset=args.opset,
            parity_steps=args.parity_steps,
        )
        from lmfast.export.onnx import ParityError, export_onnx, parity_summary
        from lmfast.export.output import OutputWriteError

        output = export_onnx(config)
    except (ValueError, FileNotFoundError, FileExistsError, OutputWriteError) as error:
        print(f"lmfast export onnx: {error}", file=sys.stderr)
        return 2
    except ParityError as error:
        print(f"lmfast export onnx: {error}", file=sys.stderr)
        return 1
    parity = json.loads((output / "export.json").read_text(encoding="utf-8"))["parity"]
    print(output)
    print(json.dumps(parity))
    if not parity["passed"]:
        print(
            f"lmfast export onnx: WARNING: {parity_summary(parity)} (kept: --accept_quality_loss)",
            file=sys.stderr,
        )
    return 0
