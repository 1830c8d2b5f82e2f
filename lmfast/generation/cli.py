"""`lmfast generate PATH --prompt TEXT [--prompt TEXT ...] [sampling flags]`.

Sampling flags are built from `GenerationParams`' fields (flag = field), defaulting to the
model's own `generation_config.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from lmfast.generation.params import MAX_NEW_TOKENS_LIMIT, MAX_RETURN_SEQUENCES, GenerationParams

_LIST_FIELDS = {"stop", "banned_words"}
_HELP = {
    "max_new_tokens": f"tokens to generate after the prompt, at most {MAX_NEW_TOKENS_LIMIT}",
    "temperature": "softmax temperature; 0 = greedy",
    "top_k": "keep the k most likely tokens; 0 disables",
    "top_p": "nucleus sampling mass in (0, 1]; 1 disables",
    "repetition_penalty": "> 1 discourages tokens already in the prompt or output",
    "num_return_sequences": f"continuations per prompt, at most {MAX_RETURN_SEQUENCES}",
    "stop": "stop when the text contains this (repeatable; cut from the output)",
    "banned_words": "never generate this word (repeatable)",
    "seed": "seed for reproducible sampling; none draws a fresh one",
}
"""The flags; GenerationParams' other fields (logprobs, logit_bias...) are HTTP-only."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmfast generate",
        description="Generate text from an export dir (ONNX Runtime), an experiment or a Hugging Face model dir.",
    )
    parser.add_argument("path", help="export dir, experiment dir or Hugging Face model dir")
    parser.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
    parser.add_argument(
        "--backend",
        choices=["auto", "torch", "onnx"],
        default="auto",
        help="auto: ONNX Runtime for an export dir, torch otherwise (default: auto)",
    )
    parser.add_argument("--provider", choices=["cpu", "cuda"], default="cpu", help="(default: cpu)")
    parser.add_argument("--num_threads", type=int, default=None, help="intra-op threads (default: all cores)")
    parser.add_argument(
        "--spin_us",
        type=int,
        default=None,
        help="ONNX Runtime: microseconds an idle thread busy-waits for work (default 20; 0: off)",
    )
    parser.add_argument("--stream", action="store_true", help="print text as it is generated (one prompt)")
    parser.add_argument("--json", action="store_true", help="print {'texts': [[...], ...]} as JSON")
    sampling = parser.add_argument_group(
        "sampling",
        "Unset flags take the model's generation_config.json (an export has one), else the default shown.",
    )
    defaults = GenerationParams()
    for f in dataclasses.fields(GenerationParams):
        if f.name not in _HELP:
            continue
        default = getattr(defaults, f.name)
        shown = "none" if default in (None, []) else default
        help_text = f"{_HELP[f.name]} (default: {shown})"
        if f.name in _LIST_FIELDS:
            sampling.add_argument(
                f"--{f.name}", action="append", default=None, metavar="TEXT", help=help_text
            )
        else:
            kind = {"max_new_tokens": int, "top_k": int, "num_return_sequences": int, "seed": int}.get(
                f.name, float
            )
            sampling.add_argument(
                f"--{f.name}", type=kind, default=None, metavar=kind.__name__.upper(), help=help_text
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Generate and print the continuations; exit 2 with one line on stderr for bad input."""
    args = _parser().parse_args(argv)
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(GenerationParams)
        if f.name in _HELP and getattr(args, f.name) is not None
    }
    try:
        GenerationParams().replace(**overrides)  # bad flags fail before a model is loaded
        if len(args.prompt) != 1 and args.stream:
            raise ValueError("--stream takes exactly one --prompt")
        from lmfast.generation.generator import Generator
        from lmfast.generation.model_files import resolve_model_dir

        if resolve_model_dir(args.path)[1] == "hf":
            _quiet_transformers()

        generator = Generator.load(
            args.path,
            backend=args.backend,
            provider=args.provider,
            num_threads=args.num_threads,
            spin_us=args.spin_us,
        )
        params = generator.resolve_params(**overrides)
        if args.stream:
            for piece in generator.stream(args.prompt[0], params):
                print(piece, end="", flush=True)
            print()
            return 0
        texts = generator(args.prompt, params)
    except (ValueError, FileNotFoundError) as error:
        print(f"lmfast generate: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"texts": texts}, ensure_ascii=False))
    else:
        for prompt, continuations in zip(args.prompt, texts, strict=True):
            for text in continuations:
                print(prompt + text)
                print("-" * 40)
    return 0


def _quiet_transformers() -> None:
    """No weight-loading progress bars on stderr: it carries errors only."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
