"""Sampling parameters: one dataclass for the generator, `generation_config.json`, the HTTP schemas
and the bot's per-chat settings, so a default or a bound is written down exactly once.

One default rule for every entry point (`GenerationParams.with_request`, as vLLM's): a value the
request gives wins; else the model's `generation_config.json` (the generator's `default_params`);
else lmfast's default, the field's default below.

Imports nothing heavy: the server and the bot use it without torch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmfast.field_rules import bounds, check_fields, interval, within
from lmfast.flags import UserError

# hard limits shared by every entry point (HTTP bodies, CLI flags, bot settings)
MAX_NEW_TOKENS_LIMIT = 4096
MAX_RETURN_SEQUENCES = 16
SEED_LIMIT = 2**63
DEFAULT_MAX_BATCH_SIZE = 32
"""Rows decoded together when nobody says otherwise (the session, the engine, `lmfast serve`)."""
DEFAULT_STEP_TOKEN_BUDGET = 256
"""Most prompt tokens the server prefills per engine step while other rows decode (`--step_token_budget`)."""
DEFAULT_STALL_RATIO = 3.0
"""The server keeps a step's prefill within this many times the running rows' decode (`--stall_ratio`)."""
DEFAULT_PREFIX_CACHE_MB = 1024
"""The server's prefix cache pool, in MB of keys and values (`--prefix_cache_mb`; 0 turns it off)."""
MAX_LOGPROBS = 20
"""Most alternatives per position `logprobs` / `prompt_logprobs` may ask for (vLLM's default)."""
LOGIT_BIAS_LIMIT = 100.0
"""A logit bias is in [-100, 100], as OpenAI's."""


class ParamError(UserError):
    """A value breaks a rule. Carries the field and the rule, so every boundary (an HTTP 422, a
    CLI's one-line error) names the field without parsing the message."""

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(field, rule)

    def line(self) -> str:
        return f"{self.field} {self.rule}"  # "temperature must be >= 0": the rule reads on from the field


def field_bounds(name: str) -> dict[str, float]:
    """The bounds of a `GenerationParams` field (`lmfast.field_rules.bounds` metadata), as pydantic
    `Field(**...)` keywords: the HTTP schemas and the dataclass share one declaration."""
    return dict(_FIELDS[name].metadata.get("bounds", {}))


OPENAI_TEMPERATURE_LIMIT = 2.0
"""OpenAI's highest temperature: /v1/completions and /v1/chat/completions keep it (GenerationParams
allows more), so the bot's settings, which those routes receive, keep it too."""


def openai_bounds(name: str) -> dict[str, float]:
    """A field's bounds on the OpenAI routes: `field_bounds`, with temperature capped at OpenAI's 2."""
    limits = field_bounds(name)
    if name == "temperature":
        limits["le"] = OPENAI_TEMPERATURE_LIMIT
    return limits


@dataclass
class GenerationParams:
    """How to continue a prompt. Defaults are lmfast's (docs/serving.md's one rule); bounds live in each field's metadata."""

    max_new_tokens: int = field(default=64, metadata=bounds(ge=1, le=MAX_NEW_TOKENS_LIMIT))
    """Tokens to generate after the prompt (the legacy route's `generation_max_len`)."""
    temperature: float = field(default=0.7, metadata=bounds(ge=0.0, le=100.0))
    """Softmax temperature; 0 means greedy decoding (argmax, no division by zero)."""
    top_k: int = field(default=50, metadata=bounds(ge=0, hint="0 disables"))
    """Keep only the k most likely tokens; 0 disables."""
    top_p: float = field(default=1.0, metadata=bounds(gt=0.0, le=1.0))
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches p; 1 disables."""
    repetition_penalty: float = field(default=1.0, metadata=bounds(gt=0.0, le=100.0))
    """CTRL-style penalty (>1 discourages tokens already in the prompt or output); 1 disables."""
    num_return_sequences: int = field(default=1, metadata=bounds(ge=1, le=MAX_RETURN_SEQUENCES))
    """Independent continuations per prompt."""
    stop: list[str] = field(default_factory=list)
    """Generation of a sequence ends when its text contains any of these; the stop text is cut off."""
    banned_words: list[str] = field(default_factory=list)
    """Words never generated (every sub-token of each word is banned; the legacy route's `ignored_words`)."""
    seed: int | None = field(default=None, metadata=bounds(ge=0, lt=SEED_LIMIT))
    """Seed for reproducible sampling; None draws a fresh one."""
    ignore_eos: bool = False
    """Keep generating after an end-of-sequence token (up to max_new_tokens), as vLLM's."""
    min_tokens: int = field(default=0, metadata=bounds(ge=0, le=MAX_NEW_TOKENS_LIMIT))
    """EOS and `stop_token_ids` cannot be drawn before this many tokens were generated."""
    stop_token_ids: list[int] = field(default_factory=list)
    """A sequence also ends (finish reason "stop") when it draws one of these token ids."""
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Token id -> value added to its logit before sampling (in [-100, 100], as OpenAI's)."""
    logprobs: int | None = field(default=None, metadata=bounds(ge=0, le=MAX_LOGPROBS))
    """Report each generated token's log-probability and this many top alternatives; None: off.
    Of the distribution sampled from: after penalties, bias and temperature (0 counts as 1)."""
    prompt_logprobs: int | None = field(default=None, metadata=bounds(ge=0, le=MAX_LOGPROBS))
    """Report the model's log-probability of each prompt token (the first has none) and this many
    top alternatives; None: off. Needs logits at every prompt position (one more output)."""

    def __post_init__(self) -> None:
        check_fields(self, ParamError)
        self.stop = [s for s in self.stop if s]
        self.banned_words = [w for w in self.banned_words if w.strip()]
        if self.min_tokens > self.max_new_tokens:
            raise ParamError(
                "min_tokens", f"must be <= max_new_tokens ({self.max_new_tokens}), got {self.min_tokens}"
            )
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.stop_token_ids):
            raise ParamError("stop_token_ids", f"must be token ids >= 0, got {self.stop_token_ids}")
        self.logit_bias = {_token_id(k): _bias(v) for k, v in self.logit_bias.items()}

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def with_request(self, **given: Any) -> GenerationParams:
        """The sampling-default rule: every value GIVEN that is not None, else this one (the model's
        `generation_config.json`, whose missing fields took lmfast's defaults). Validated again."""
        return self.replace(**{name: value for name, value in given.items() if value is not None})

    def replace(self, **changes: Any) -> GenerationParams:
        """A copy with some fields changed (validated again; unknown names rejected by name)."""
        self._reject_unknown(changes)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerationParams:
        """Build from a dict, rejecting unknown keys (a typo must not pass silently)."""
        cls._reject_unknown(values)
        return cls(**values)

    @classmethod
    def _reject_unknown(cls, names: dict[str, Any]) -> None:
        unknown = sorted(set(names) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown generation parameter(s): {', '.join(unknown)}")

    @classmethod
    def from_file(cls, path: str | Path) -> GenerationParams:
        """Load `generation_config.json` as written by `lmfast export`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")


def _token_id(key: Any) -> int:
    """A logit_bias key: an int, or its decimal string (JSON object keys are strings)."""
    try:
        token = int(key)
    except (TypeError, ValueError):
        raise ParamError("logit_bias", f"keys must be token ids, got {key!r}") from None
    if token < 0 or isinstance(key, bool | float):
        raise ParamError("logit_bias", f"keys must be token ids >= 0, got {key!r}")
    return token


def _bias(value: Any) -> float:
    limits = {"ge": -LOGIT_BIAS_LIMIT, "le": LOGIT_BIAS_LIMIT}
    if isinstance(value, bool) or not isinstance(value, int | float) or not within(float(value), limits):
        raise ParamError("logit_bias", f"values must be {interval(limits)}, got {value!r}")
    return float(value)


_FIELDS = {f.name: f for f in dataclasses.fields(GenerationParams)}
