"""Bodies of OpenAI's `POST /v1/chat/completions` (pydantic), beside schemas.py's completions ones.

Shared bounds come from schemas.py and `lmfast.generation.params`. Fields this server does not
implement (tools, response formats other than text) are refused with a 422 naming them,
not silently ignored; unknown fields (user, metadata, presence_penalty...) are ignored as OpenAI's
own optional hints.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lmfast.generation.params import MAX_NEW_TOKENS_LIMIT, field_bounds
from lmfast.serving.schemas import (
    MAX_PROMPT_CHARS,
    FinishReason,
    RequestBody,
    SamplingFields,
    Usage,
)
from lmfast.serving.structured import StructuredOutputFields

MAX_MESSAGES = 512
"""Messages in one conversation."""


class TextPart(RequestBody):
    """A content part; only text is served (a text-only model)."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str = Field(max_length=MAX_PROMPT_CHARS)


class ChatMessage(RequestBody):
    """One turn. `content` may be a string or a list of text parts (joined with newlines, as vLLM
    does for templates that expect a string)."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(default=None)
    name: str | None = Field(default=None, max_length=256)

    @field_validator("content")
    @classmethod
    def _check_content(cls, content: str | list[TextPart] | None) -> str | list[TextPart] | None:
        if isinstance(content, str) and len(content) > MAX_PROMPT_CHARS:
            raise ValueError(f"a message may have at most {MAX_PROMPT_CHARS} characters")
        return content

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates read it: role, content string, and name when given."""
        message: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name is not None:
            message["name"] = self.name
        return message


class ChatCompletionRequest(SamplingFields, StructuredOutputFields):
    """OpenAI `POST /v1/chat/completions`."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(
        default=None, max_length=256, description="Accepted and echoed; one model is served."
    )
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(
        default=None,
        **field_bounds("max_new_tokens"),
        description="Wins over max_tokens when both are given.",
    )
    max_tokens: int | None = Field(
        default=None,
        **field_bounds("max_new_tokens"),
        description="OpenAI's older name for max_completion_tokens. Neither: up to the model's context.",
    )
    logprobs: bool | None = Field(default=None, description="Log-probabilities of the answer's tokens.")
    top_logprobs: int | None = Field(
        default=None, **field_bounds("logprobs"), description="Alternatives per token (needs logprobs)."
    )
    # OpenAI options this server does not implement: refused rather than silently ignored
    tools: None = None
    tool_choice: Literal["none"] | None = None
    functions: None = Field(default=None, description="OpenAI's legacy tools: refused like tools.")
    function_call: Literal["none"] | None = None
    # response_format (and vLLM's structured_outputs): lmfast.serving.structured

    def refusal(self) -> tuple[str, str] | None:
        """(field, why) for a combination of fields this server refuses, else None."""
        if self.top_logprobs is not None and not self.logprobs:
            return "top_logprobs", "needs logprobs: true"
        if self.stream and self.logprobs:
            return "stream", "logprobs are answered in one JSON body, not streamed"
        return None

    def max_new_tokens(self) -> int:
        """What to generate at most: the context bounds it anyway (finish_reason "length")."""
        for value in (self.max_completion_tokens, self.max_tokens):
            if value is not None:
                return value
        return MAX_NEW_TOKENS_LIMIT


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    """OpenAI's chat `logprobs`: one entry per generated token."""

    content: list[TokenLogprobEntry]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: FinishReason | None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TokenizeRequest(RequestBody):
    """vLLM's `POST /tokenize`: a prompt, or messages rendered with the chat template."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, max_length=256)
    prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=MAX_MESSAGES)
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = Field(
        default=None,
        description="Add the tokenizer's special tokens (BOS...); default: yes for a prompt, no for messages "
        "(the template writes them), as vLLM.",
    )
    return_token_strs: bool = Field(default=False, description="Also return each token's string.")

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either prompt or messages")
        return self


class TokenizeResponse(BaseModel):
    count: int = Field(description="Tokens of the prompt (as the generation routes count them).")
    max_model_len: int = Field(description="The model's context: prompt plus generated tokens fit in it.")
    tokens: list[int]
    token_strs: list[str] | None = Field(
        default=None, description="With return_token_strs: the token strings."
    )
