"""`EvalConfig`: the flags of `lmfast eval`, one field each (flag = field = the report's `config` keys)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lmfast.field_rules import bounds, check_fields
from lmfast.flags import UserError


class EvalError(UserError):
    """Bad input to `lmfast eval`; `field` names the flag, the message says what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)

    def line(self) -> str:
        # the positional SOURCE has no --flag: name it as `lmfast eval --help` shows it
        return f"{'SOURCE' if self.field == 'source' else '--' + self.field}: {self.rule}"


@dataclass
class EvalConfig:
    """Score a model on held-out text: perplexity and bits per byte (docs/architecture.md §7)."""

    source: str = ""
    """The model: an export dir, an experiment dir, a .ckpt, a Hugging Face model dir or a .gguf file."""
    dataset_dir: str | None = None
    """A dataset written by `lmfast prepare`; its --split is scored (give this or --text_file)."""
    split: Literal["valid", "train"] = "valid"
    """Which split of --dataset_dir to score."""
    text_file: str | None = None
    """A raw UTF-8 text file, tokenized as one document after the model's BOS (or EOS) token."""
    context_length: int | None = field(default=None, metadata=bounds(ge=2, hint="a token and its context"))
    """Tokens per window; none: the model's context."""
    stride: int | None = field(default=None, metadata=bounds(ge=1))
    """How far each window moves on; none: half the window. Each token is scored once, with the
    context of the window that scores it."""
    batch_size: int = field(default=8, metadata=bounds(ge=1))
    """Windows per forward pass."""
    max_tokens: int | None = field(default=None, metadata=bounds(ge=1))
    """Score only the first N tokens of the text (none: all)."""
    backend: Literal["auto", "torch", "onnx"] = "auto"
    """auto: ONNX Runtime for an export dir, torch otherwise."""
    num_threads: int | None = field(default=None, metadata=bounds(ge=1))
    """Intra-op threads (none: the library default)."""
    output: str | None = None
    """Write the JSON report here (the terminal gets a short table either way)."""
    progress: bool = True
    """Show a progress bar on stderr (when it is a terminal)."""

    def check(self) -> None:
        """Every rule that needs no file: raises EvalError naming the flag. Bounds and choices are
        the fields' metadata and types (`check_fields`); which source is given ties fields together."""
        if not self.source:
            raise EvalError("source", "give the model to evaluate (lmfast eval SOURCE --dataset_dir DIR)")
        if (self.dataset_dir is None) == (self.text_file is None):
            raise EvalError("dataset_dir", "give exactly one of --dataset_dir and --text_file")
        check_fields(self, EvalError)
