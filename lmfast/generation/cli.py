"""`lmfast generate PATH --prompt TEXT [--prompt TEXT ...] [sampling flags]`.

Flags are built by lmfast.flags from `GenerateConfig` and, for sampling, from `GenerationParams`
(flag = field, help from its attribute docstrings); unset sampling flags take the model's own
`generation_config.json`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Literal

from lmfast import flags
from lmfast.generation.params import GenerationParams

HTTP_ONLY = ("ignore_eos", "min_tokens", "stop_token_ids", "logit_bias", "logprobs", "prompt_logprobs")
"""GenerationParams fields the HTTP API takes and this command does not (it prints text only)."""


@dataclass
class GenerateConfig:
    """What to generate from, and how to print it (sampling flags are `GenerationParams`')."""

    path: str
    """Export dir, experiment dir, Hugging Face model dir or .gguf file."""
    prompt: list[str]
    """Prompt text (repeat for a batch)."""
    backend: Literal["auto", "torch", "onnx"] = "auto"
    """auto: ONNX Runtime for an export dir, torch otherwise."""
    provider: Literal["cpu", "cuda"] = "cpu"
    """ONNX Runtime execution provider."""
    num_threads: int | None = None
    """Intra-op threads (none: all cores)."""
    spin_us: int | None = None
    """ONNX Runtime: microseconds an idle thread busy-waits for work (none: 20; 0: off)."""
    stream: bool = False
    """Print text as it is generated (one prompt)."""
    json: bool = False
    """Print {"texts": [[...], ...]} as JSON."""


def _parser() -> flags.OneLineParser:
    parser = flags.OneLineParser(
        prog="lmfast generate",
        description="Generate text from an export dir (ONNX Runtime), an experiment or a Hugging Face model dir.",
    )
    flags.add_config_flags(parser, GenerateConfig, positional=["path"], overrides={"path": {"nargs": None}})
    sampling = parser.add_argument_group(
        "sampling",
        "Unset flags take the model's generation_config.json (an export has one), else the default shown.",
    )
    flags.add_config_flags(sampling, GenerationParams, exclude=HTTP_ONLY)  # type: ignore[arg-type]
    return parser


def main(argv: list[str] | None = None) -> int:
    """Generate and print the continuations; exit 2 with one line on stderr for bad input."""
    return flags.run(
        "lmfast generate", lambda: flags.parse_config(_parser(), GenerateConfig, argv), _generate
    )


def _generate(parsed: tuple[GenerateConfig, argparse.Namespace]) -> int:
    """Its lines were written without the word `error:` (the flags' own errors have it): this step
    is its own `flags.run`."""
    return flags.run("lmfast generate", lambda: parsed, _generate_parsed, error_word=False)


def _generate_parsed(parsed: tuple[GenerateConfig, argparse.Namespace]) -> int:
    """Check the sampling flags before a model is loaded, load it, generate and print."""
    args, given = parsed
    overrides = {f.name: vars(given)[f.name] for f in dataclasses.fields(GenerationParams) if f.name in given}
    try:
        GenerationParams().replace(**overrides)  # bad flags fail before a model is loaded
        if len(args.prompt) != 1 and args.stream:
            raise ValueError("--stream takes exactly one --prompt")
        from lmfast.generation.generator import Generator
        from lmfast.generation.model_files import LOADABLE
        from lmfast.models.source import resolve_source

        source = resolve_source(args.path, LOADABLE)
        if source.backend == "torch":
            _quiet_transformers()

        generator = Generator.load(
            source,
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
    except (ValueError, FileNotFoundError) as error:  # a bad flag or prompt, a model that does not load
        raise flags.UserError(str(error)) from None
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
