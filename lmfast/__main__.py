"""The one `lmfast` command line: a table of subcommands, each module imported only when chosen.

Every subcommand module exposes `main(argv: list[str] | None) -> int`, parses its own flags and
is the only place that prints usage or exits; library code raises. `lmfast --help` imports
nothing heavy (no torch), so it answers instantly.
"""

from __future__ import annotations

import importlib
import sys

from lmfast import __version__

# name -> (module with main(argv), one-line summary shown by `lmfast --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("lmfast.data.cli", "Tokenize raw document files into a memory-mapped dataset."),
    "train": (
        "lmfast.train.cli",
        "Train or fine-tune a causal LM on a prepared dataset (PyTorch Lightning).",
    ),
    "export": ("lmfast.export.cli", "Export a trained model (`lmfast export onnx SOURCE --output DIR`)."),
    "generate": (
        "lmfast.generation.cli",
        "Generate text from an export, experiment or Hugging Face model dir.",
    ),
    "serve": ("lmfast.serving.cli", "Serve a model over HTTP with dynamic batching (FastAPI + uvicorn)."),
    "eval": (
        "lmfast.evaluation.cli",
        "Evaluate a model: perplexity and bits per byte, or lm-evaluation-harness tasks (--tasks).",
    ),
    "bot": ("lmfast.bot.cli", "Run the Telegram bot in front of an `lmfast serve` API."),
    "demo": ("lmfast.demo", "Run the whole pipeline end to end on the bundled Nietzsche example."),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        f"lmfast {__version__}",
        "",
        "usage: lmfast <command> [flags]      (lmfast <command> --help for its flags)",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch `lmfast <command> ...` to the command's own `main`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a command is required: usage on stderr, and a failing exit code for scripts
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"lmfast: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
