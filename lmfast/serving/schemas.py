"""Request and response bodies (pydantic): validated at the route, converted to `GenerationParams` there.

Bounds come from `GenerationParams`' field metadata (`field_bounds`), so an HTTP limit and a
generator limit cannot drift apart. A body that breaks one is answered 422 with the offending field
in `detail[].loc`. Every body derives from `RequestBody`: text encodable as UTF-8 (no lone
surrogates) and numbers finite (no NaN, Infinity or 1e309), so bad text never reaches the tokenizer.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmfast.generation.params import MAX_NEW_TOKENS_LIMIT, field_bounds, openai_bounds
from lmfast.serving.structured import StructuredOutputFields
from lmfast.unicode import check_text

MAX_PROMPT_CHARS = 100_000
"""Hard ceiling of one prompt in the schema; `ServeConfig.max_prompt_chars` may lower it."""
MAX_PROMPTS = 16
"""Prompts in one /v1/completions body."""
MAX_ROWS_PER_REQUEST = 64
"""Sequences one request may ask for (prompts x n): a single client cannot fill every batch slot."""
MAX_STOP = 4
MAX_STOP_CHARS = 64
MAX_BANNED_WORDS = 256
MAX_STOP_TOKEN_IDS = 64
MAX_LOGIT_BIAS = 1024
TOP_K_LIMIT = 1_000_000
"""HTTP only: GenerationParams takes any top_k >= 0, a body no more than this."""
OPENAI_TEMPERATURE = openai_bounds("temperature")
"""OpenAI's range for /v1/completions and /v1/chat/completions, inside GenerationParams' own."""


class RequestBody(BaseModel):
    """Base of every request body: each text field is UTF-8 encodable and each number finite
    (NaN, Infinity and 1e309 are refused), with the field named in the 422."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        return check_text(value)


class GeneratedTextsRequest(RequestBody):
    """The legacy `POST /generated_texts/` body; fields left out take the model's defaults."""

    model_config = ConfigDict(extra="forbid")

    seed_text: str = Field(max_length=MAX_PROMPT_CHARS, description="Prompt to continue.")
    ignored_words: list[str] = Field(
        default_factory=list, max_length=MAX_BANNED_WORDS, description="Words never generated."
    )
    generation_max_len: int | None = Field(default=None, **field_bounds("max_new_tokens"))
    temperature: float | None = Field(default=None, **field_bounds("temperature"))
    top_k: int | None = Field(default=None, **field_bounds("top_k"), le=TOP_K_LIMIT)
    top_p: float | None = Field(default=None, **field_bounds("top_p"))
    repetition_penalty: float | None = Field(default=None, **field_bounds("repetition_penalty"))
    num_return_sequences: int | None = Field(default=None, **field_bounds("num_return_sequences"))


class GeneratedTextsResponse(BaseModel):
    texts: list[str] = Field(description="Continuations only, without the seed text.")


class HealthResponse(BaseModel):
    status: str


class VersionResponse(BaseModel):
    version: str
    model: str


class StreamOptions(RequestBody):
    include_usage: bool = Field(default=False, description="Send a last chunk with token counts, as OpenAI.")


class SamplingFields(RequestBody):
    """The sampling and streaming fields that /v1/completions and /v1/chat/completions share."""

    # sampling fields left out (None) take the served model's defaults: GenerationParams.with_request
    temperature: float | None = Field(
        default=None,
        **OPENAI_TEMPERATURE,
        description="Default: the model's generation_config.json, else 0.7.",
    )
    top_p: float | None = Field(
        default=None,
        **field_bounds("top_p"),
        description="Default: the model's generation_config.json, else 1.",
    )
    n: int = Field(default=1, **field_bounds("num_return_sequences"))
    stop: str | list[str] | None = Field(default=None)
    seed: int | None = Field(default=None, **field_bounds("seed"))
    stream: bool = False
    stream_options: StreamOptions | None = None
    # extensions beyond OpenAI's fields, as vLLM and TGI offer them
    top_k: int | None = Field(
        default=None,
        **field_bounds("top_k"),
        le=TOP_K_LIMIT,
        description="0 disables (OpenAI has no top_k). Default: the model's generation_config.json, else 50.",
    )
    repetition_penalty: float | None = Field(
        default=None,
        **field_bounds("repetition_penalty"),
        description="Default: the model's generation_config.json, else 1.",
    )

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
        if len(stops) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"at most {MAX_STOP} stop sequences of at most {MAX_STOP_CHARS} characters each")
        return stop

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling_values(self) -> dict[str, Any]:
        """These fields as `GenerationParams` keyword arguments (all but `max_new_tokens`; None where
        left out, for the model's default)."""
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "num_return_sequences": self.n,
            "stop": self.stops(),
            "seed": self.seed,
        }


class CompletionRequest(SamplingFields, StructuredOutputFields):
    """OpenAI `POST /v1/completions`. Unknown OpenAI fields (user, presence_penalty...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, max_length=256, description="Accepted and echoed; one model is served."
    )
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A prompt or a list of prompts, each text or token ids (no special tokens added)."
    )
    max_tokens: int = Field(
        default=16, ge=0, le=MAX_NEW_TOKENS_LIMIT, description="0 only with echo: score the prompt."
    )
    echo: bool = Field(default=False, description="Return the prompt before the completion.")
    logprobs: int | None = Field(
        default=None,
        **field_bounds("logprobs"),
        description="Log-probabilities of each token and this many top alternatives.",
    )
    # vLLM's sampling extensions
    ignore_eos: bool = False
    min_tokens: int = Field(default=0, **field_bounds("min_tokens"))
    stop_token_ids: list[int] | None = Field(default=None, max_length=MAX_STOP_TOKEN_IDS)
    logit_bias: dict[str, float] | None = Field(
        default=None, max_length=MAX_LOGIT_BIAS, description="Token id (a string) -> bias in [-100, 100]."
    )
    # OpenAI options this server does not implement: refused rather than silently ignored
    best_of: Literal[1] | None = None
    suffix: str | None = Field(default=None, description="Refused: this server does not insert text.")

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, suffix: str | None) -> None:
        if suffix is not None:
            raise ValueError("is not supported: this server completes a prompt, it does not insert text")
        return None

    @field_validator("prompt")
    @classmethod
    def _check_prompt(cls, prompt: Any) -> Any:
        prompts = [prompt] if isinstance(prompt, str) or _is_ids(prompt) else prompt
        if not 1 <= len(prompts) <= MAX_PROMPTS:
            raise ValueError(f"give 1 to {MAX_PROMPTS} prompts, got {len(prompts)}")
        if any(len(p) > MAX_PROMPT_CHARS for p in prompts):
            raise ValueError(f"each prompt must have at most {MAX_PROMPT_CHARS} characters (or token ids)")
        if any(isinstance(p, list) and (not p or min(p) < 0) for p in prompts):
            raise ValueError("a token-id prompt must be a non-empty list of ids >= 0")
        return prompt

    @model_validator(mode="after")
    def _check_rows(self) -> CompletionRequest:
        rows = len(self.prompts()) * self.n
        if rows > MAX_ROWS_PER_REQUEST:
            raise ValueError(f"n: number of prompts x n must be at most {MAX_ROWS_PER_REQUEST}, got {rows}")
        return self

    def refusal(self) -> tuple[str, str] | None:
        """(field, why) for a combination of fields this server refuses, else None."""
        if self.max_tokens == 0 and not self.echo:
            return "max_tokens", "0 is allowed only with echo: true (to score the prompt)"
        if self.stream and (self.echo or self.logprobs is not None):
            return "stream", "echo and logprobs are answered in one JSON body, not streamed"
        return None

    def prompts(self) -> list[str | list[int]]:
        """Each prompt: a text, or token ids."""
        if isinstance(self.prompt, str) or _is_ids(self.prompt):
            return [self.prompt]
        return list(self.prompt)


def _is_ids(prompt: Any) -> bool:
    """One token-id prompt (a list of ints), not a list of prompts."""
    return isinstance(prompt, list) and bool(prompt) and all(isinstance(t, int) for t in prompt)


FinishReason = Literal["stop", "length"]


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy completions `logprobs`: one entry per token of `text` (the prompt's too with
    echo, whose first token has no logprob)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lmfast"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class DetokenizeRequest(RequestBody):
    """vLLM's `POST /detokenize`: token ids in, text out."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, max_length=256)
    tokens: list[int] = Field(max_length=MAX_PROMPT_CHARS)


class DetokenizeResponse(BaseModel):
    prompt: str


class TokenizerInfo(BaseModel):
    """vLLM's `GET /tokenizer_info`; lm-evaluation-harness detects a remote tokenizer by `eos_token`."""

    tokenizer_class: str
    eos_token: str | None
    bos_token: str | None
    pad_token: str | None = None
    vocab_size: int
    model_max_length: int
