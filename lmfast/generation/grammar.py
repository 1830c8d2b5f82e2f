"""Structured output: a grammar (JSON schema, any JSON object, regex, choice) as a per-row token mask.

llguidance does the work (benchmarks/bench_grammar.py measured it beside xgrammar and
outlines-core): it builds its token trie straight from the served `tokenizer.json`, needs neither
torch nor transformers (the ONNX serving box has neither), compiles a schema in about a
millisecond and computes one row's mask in tens to a few hundred microseconds on CPU.

A `Constraint` is what a request asks for; `Grammars.compile` turns it into llguidance's grammar
text, refusing a bad schema or regex with a `ParamError` naming the field; `Grammars.matcher`
gives each row its own `RowGrammar`, which the sampler asks for a mask before every draw and tells
the drawn token after it. JSON is generated compactly, with ", " and ": " as separators and no
other whitespace, so a model cannot pad an answer with spaces until it runs out of tokens.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lmfast.generation.params import ParamError

ConstraintKind = Literal["json_object", "json_schema", "regex", "choice"]
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""Separators as `json.dumps` writes them; no free whitespace (see the module docstring)."""
MAX_GRAMMAR_CHARS = 100_000
"""A schema, regex or choice list longer than this (as JSON) is refused."""


@dataclass(frozen=True)
class Constraint:
    """What the output must match. `spec` is a JSON schema (dict), a regex (str) or the choices."""

    kind: ConstraintKind
    spec: Any = None
    field: str = "response_format"
    """The request field it came from, named in errors."""


def grammar_text(constraint: Constraint) -> str:
    """llguidance's grammar for a constraint (not yet checked against a tokenizer).

    Raises:
        ParamError: a spec of the wrong type or size.
    """
    import llguidance

    try:
        return _grammar_text(llguidance, constraint)
    except ParamError:
        raise
    except Exception as exc:  # llguidance's own errors on odd input: the client's fault, one line
        raise ParamError(
            constraint.field, f"is refused by the grammar compiler: {_one_line(str(exc))}"
        ) from None


def _grammar_text(llguidance: Any, constraint: Constraint) -> str:
    if len(json.dumps(constraint.spec, default=str)) > MAX_GRAMMAR_CHARS:
        raise ParamError(constraint.field, f"is longer than {MAX_GRAMMAR_CHARS} characters")
    matcher = llguidance.LLMatcher
    if constraint.kind == "json_object":
        return matcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
    if constraint.kind == "json_schema":
        if not isinstance(constraint.spec, dict):
            raise ParamError(constraint.field, "must be a JSON schema object")
        try:
            return matcher.grammar_from_json_schema(constraint.spec, defaults=JSON_OPTIONS)
        except ValueError as error:
            raise ParamError(constraint.field, f"is not a usable JSON schema: {error}") from None
    if constraint.kind == "regex":
        if not isinstance(constraint.spec, str) or not constraint.spec:
            raise ParamError(constraint.field, "must be a non-empty regular expression")
        return matcher.grammar_from_regex(constraint.spec)
    choices = constraint.spec
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c for c in choices):
        raise ParamError(constraint.field, "must be a non-empty list of non-empty strings")
    return matcher.grammar_from_lark("start: " + " | ".join(json.dumps(c) for c in choices))


class RowGrammar:
    """One row's matcher: the allowed next tokens, and the tokens drawn so far."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher = matcher
        self.words = np.zeros((1, (vocab_size + 31) // 32), dtype=np.int32)

    def allowed(self, width: int) -> np.ndarray:
        """(width,) bool: the tokens the grammar allows next (ids past its vocabulary never)."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self.matcher, self.words)
        bits = np.unpackbits(self.words.view(np.uint8), bitorder="little")
        allowed = np.zeros(width, dtype=bool)
        n = min(width, bits.size)
        allowed[:n] = bits[:n].astype(bool)
        return allowed

    def consume(self, token: int) -> None:
        """Advance past the drawn token (it was allowed: the mask was applied)."""
        if not self.matcher.consume_token(int(token)):
            raise ValueError(
                f"structured output: the grammar refused token {token}: {self.matcher.get_error()}"
            )

    @property
    def done(self) -> bool:
        """The answer is complete: nothing but the end of text may follow."""
        return bool(self.matcher.is_stopped())


class Grammars:
    """llguidance for one tokenizer; built once per served model, on first use (about a second)."""

    def __init__(self, tokenizer_json: str, eos_token_ids: tuple[int, ...]) -> None:
        import llguidance

        self._llg = llguidance
        self.tokenizer = llguidance.LLTokenizer(tokenizer_json, eos_token=list(eos_token_ids) or None)

    _lock = threading.Lock()

    @classmethod
    def of(cls, codec: Any, eos_token_ids: tuple[int, ...]) -> Grammars:
        """The instance cached on a `TextCodec` (any thread may ask first)."""
        with cls._lock:
            grammars = getattr(codec, "_grammars", None)
            if grammars is None:
                grammars = cls(codec.tokenizer.to_str(), tuple(eos_token_ids))
                codec._grammars = grammars
            return grammars

    def compile(self, constraint: Constraint) -> str:
        """The checked grammar text of a constraint.

        Raises:
            ParamError: (field = the constraint's field) a schema, regex or choice list llguidance refuses.
        """
        grammar = grammar_text(constraint)
        try:
            error = self._llg.LLMatcher.validate_grammar(grammar, self.tokenizer)
        except Exception as exc:  # whatever the client sent must not become a 500
            error = f"{type(exc).__name__}: {exc}"
        if error and not error.startswith("WARNING"):
            raise ParamError(constraint.field, f"is refused by the grammar compiler: {_one_line(error)}")
        return grammar

    def matcher(self, grammar: str) -> RowGrammar:
        matcher = self._llg.LLMatcher(self.tokenizer, grammar)
        if matcher.is_error():
            raise ValueError(f"structured output: {matcher.get_error()}")
        return RowGrammar(matcher, self.tokenizer.vocab_size)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."
