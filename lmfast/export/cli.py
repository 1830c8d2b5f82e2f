"""`lmfast export onnx SOURCE --output DIR [--precision fp32|bf16|fp16] [--quantize int8|int4] [--optimize]
[--attention plain|fused] [--kv_cache auto|inplace|concat] [--overwrite]`: flags built by lmfast.flags from `ExportConfig`."""

from __future__ import annotations

import json
import logging
import sys
import warnings

from lmfast import flags
from lmfast.export.config import ExportConfig


def _parser() -> flags.OneLineParser:
    parser = flags.OneLineParser(prog="lmfast export", description="Export a trained model.")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT")
    onnx = formats.add_parser(
        "onnx",
        help="ONNX Runtime directory: model.onnx with KV cache, tokenizer, configs, export.json.",
        description="Export to a self-contained ONNX Runtime directory (docs/architecture.md §3), checking "
        "parity with the torch model (fp32 must match). Flags are ExportConfig's fields.",
    )
    flags.add_config_flags(onnx, ExportConfig, positional=["source"], overrides={"source": {"nargs": None}})
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse flags, export, print the export dir and its parity figures; 2 on bad input."""
    parser = _parser()
    return flags.run(
        "lmfast export", lambda: vars(parser.parse_args(argv)), lambda args: _export(parser, args)
    )


def _export(parser: flags.OneLineParser, args: dict) -> int:
    if args.pop("format") != "onnx":
        parser.print_usage(sys.stderr)
        print("lmfast export: choose a format: onnx", file=sys.stderr)
        return 2
    _configure_logging()
    # its lines name "lmfast export onnx" without the word `error:` (tests and scripts match them)
    return flags.run("lmfast export onnx", lambda: ExportConfig(**args), _export_onnx, error_word=False)


def _export_onnx(config: ExportConfig) -> int:
    """Export, print the export dir and its parity figures; 1 when fp32 parity fails."""
    from lmfast.export.onnx import ParityError, export_onnx, parity_summary
    from lmfast.export.output import OutputWriteError

    try:
        _quiet_torch_and_transformers()
        output = export_onnx(config)
    except (ValueError, FileNotFoundError, FileExistsError, OutputWriteError) as error:
        raise flags.UserError(str(error)) from None  # a source, output or model the export refuses
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


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of `prefixes` (advice that does not apply here)."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def _configure_logging() -> None:
    """lmfast's own INFO lines; other libraries at WARNING, less the noise that says nothing about an export.

    ONNX Runtime's fusions and quantizer log every fused node and skipped tensor at INFO (the
    quantizer on the root logger), and the ONNX exporter logs every pass. Parity loads the staging
    directory, whose temporary name must not reach the terminal, so ONNX loading is quiet too.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lmfast").setLevel(logging.INFO)
    logging.getLogger("lmfast.generation.onnx_backend").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        # the quantizer suggests a pre-processing step meant for static quantization of CNNs
        handler.addFilter(_DropMessages("Please consider to run pre-processing before quantization"))
    # torch's pytree, pickled by the exporter through copyreg, warns about its own deprecated API
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`", category=FutureWarning)


def _quiet_torch_and_transformers() -> None:
    """Called once torch is imported (its logging set-up would reset levels set before)."""
    from transformers.utils import logging as hf_logging

    # the exporter's op registry names every torchvision operator it skips: irrelevant to LMs
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()  # "Loading weights" bars on stderr, which carries errors only
