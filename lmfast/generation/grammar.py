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

from lmfast.flags import one_line
from lmfast.generation.params import ParamError

ConstraintKind = Literal["json_object", "json_schema", "regex", "choice"]
JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
"""Separators as `json.dumps` writes them; no free whitespace (see the module docstring)."""
MAX_GRAMMAR_CHARS = 100_000
"""A schema, regex or choice list longer than this (as JSON) is refused."""
MAX_SCHEMA_DEPTH = 64
"""A JSON schema nested deeper than this is refused (before anything recurses into it)."""
LIMITS: dict[str, int] = {"initial_lexer_fuel": 200_000, "step_lexer_fuel": 50_000}
"""llguidance's `LLParserLimits` (defaults 1,000,000 and 200,000): bound the lexer work of
compiling and of each step's mask. With its defaults `a{1000}{1000}` compiled for 2 s and each
mask took 0.3 s on the engine thread; with these, ordinary schemas and regexes mask in under
10 ms per step on a shared CPU and such a regex is refused at compile time."""


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
            constraint.field, f"is refused by the grammar compiler: {one_line(str(exc))}"
        ) from None


def depth(value: Any) -> int:
    """Nesting depth of JSON-like lists and dicts, counted without recursion (a hostile
    `[[[[...]]]]` must not overflow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, level)
            if level <= MAX_SCHEMA_DEPTH:
                stack.extend((child, level + 1) for child in children)
    return deepest


def _grammar_text(llguidance: Any, constraint: Constraint) -> str:
    if depth(constraint.spec) > MAX_SCHEMA_DEPTH:
        raise ParamError(constraint.field, f"is nested deeper than {MAX_SCHEMA_DEPTH} levels")
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


class CompiledGrammar(str):
    """Grammar text with its matcher already built and checked (`Grammars.compile`, in a worker
    thread): the engine thread only copies the matcher, so no compiling ever runs there."""

    prototype: Any

    def __new__(cls, text: str, prototype: Any) -> CompiledGrammar:
        grammar = super().__new__(cls, text)
        grammar.prototype = prototype
        return grammar


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

    def compile(self, constraint: Constraint) -> CompiledGrammar:
        """The checked grammar of a constraint, its matcher built here (seconds for a hostile regex:
        call it in a worker thread) within `LIMITS`, and its first mask computed.

        Raises:
            ParamError: (field = the constraint's field) a schema, regex or choice list llguidance refuses.
        """
        grammar = grammar_text(constraint)
        try:
            prototype = self._llg.LLMatcher(self.tokenizer, grammar, log_level=0, limits=self._limits())
            error = prototype.get_error() if prototype.is_error() else self._trial_step(prototype)
        except Exception as exc:  # whatever the client sent must not become a 500
            error = f"{type(exc).__name__}: {exc}"
        if error:
            raise ParamError(constraint.field, f"is refused by the grammar compiler: {one_line(error)}")
        return CompiledGrammar(grammar, prototype)

    def _trial_step(self, prototype: Any) -> str:
        """Why the first step fails (within `LIMITS`), or "": the first mask is computed on the
        prototype (its lexer states are then shared by every copy), and a copy consumes the first
        allowed token, where a huge repetition runs out of fuel."""
        allowed = np.flatnonzero(
            RowGrammar(prototype, self.tokenizer.vocab_size).allowed(self.tokenizer.vocab_size)
        )
        if prototype.is_error():
            return str(prototype.get_error())
        if allowed.size == 0 or prototype.is_stopped():
            return ""
        trial = prototype.deep_copy()
        if not trial.consume_token(int(allowed[0])) or trial.is_error():
            return str(trial.get_error())
        RowGrammar(trial, self.tokenizer.vocab_size).allowed(1)
        return str(trial.get_error()) if trial.is_error() else ""

    def _limits(self) -> Any:
        return self._llg.LLParserLimits(**LIMITS)

    def matcher(self, grammar: str) -> RowGrammar:
        """A row's matcher: a copy of a `CompiledGrammar`'s, else built from the text (library use)."""
        if isinstance(grammar, CompiledGrammar):
            matcher = grammar.prototype.deep_copy()
        else:
            matcher = self._llg.LLMatcher(self.tokenizer, grammar, log_level=0, limits=self._limits())
        if matcher.is_error():
            raise ValueError(f"structured output: {matcher.get_error()}")
        return RowGrammar(matcher, self.tokenizer.vocab_size)
