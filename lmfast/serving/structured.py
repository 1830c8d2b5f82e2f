"""Structured-output fields of the completion and chat bodies, and their compiled grammar.

OpenAI's `response_format` (`{"type": "json_object"}`, `{"type": "json_schema", "json_schema":
{"name", "schema", "strict"}}`, `{"type": "text"}`), vLLM's `structured_outputs` (`json`,
`regex`, `choice`, `json_object`) and vLLM's older `guided_json` / `guided_regex` /
`guided_choice`. At most one may constrain a request. The grammar is compiled off the event loop
and checked against the served tokenizer before the job is queued, on two threads of its own and
within `COMPILE_TIMEOUT_S`, so a bad, huge, deep or slow schema or regex is a 422 naming its field;
the engine then copies the compiled matcher for each constrained row and masks it
(lmfast.generation.grammar): no grammar is compiled on the engine thread.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lmfast.generation.grammar import MAX_GRAMMAR_CHARS, MAX_SCHEMA_DEPTH, Constraint, Grammars
from lmfast.generation.params import ParamError


class JsonSchemaSpec(BaseModel):
    """OpenAI's `response_format.json_schema`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str | None = Field(default=None, max_length=256)
    description: str | None = Field(default=None, max_length=4096)
    schema_: dict[str, Any] = Field(alias="schema", description="The JSON schema the answer must match.")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a json_schema object with a schema')
        return self


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` (exactly one of its fields)."""

    model_config = ConfigDict(extra="forbid")

    json_: dict[str, Any] | Annotated[str, Field(max_length=MAX_GRAMMAR_CHARS)] | None = Field(
        default=None, alias="json"
    )
    regex: str | None = Field(default=None, min_length=1, max_length=4096)
    choice: list[str] | None = Field(default=None, min_length=1, max_length=256)
    json_object: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> StructuredOutputs:
        given = [n for n in ("json_", "regex", "choice") if getattr(self, n) is not None]
        given += ["json_object"] if self.json_object else []
        if len(given) != 1:
            raise ValueError("give exactly one of json, regex, choice and json_object")
        return self


class StructuredOutputFields(BaseModel):
    """The request fields that constrain the output (mixed into the completion and chat bodies)."""

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | Annotated[str, Field(max_length=MAX_GRAMMAR_CHARS)] | None = None
    guided_regex: str | None = Field(default=None, min_length=1, max_length=4096)
    guided_choice: list[str] | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _at_most_one(self) -> StructuredOutputFields:
        fields = ("structured_outputs", "guided_json", "guided_regex", "guided_choice")
        given = [name for name in fields if getattr(self, name) is not None]
        if self.response_format is not None and self.response_format.type != "text":
            given.append("response_format")
        if len(given) > 1:
            raise ValueError(f"at most one of {', '.join(given)} may constrain the output")
        return self

    def constraint(self) -> Constraint | None:
        """What the answer must match, or None (free text).

        Raises:
            ParamError: a JSON schema given as a string that is not JSON.
        """
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_object":
            return Constraint("json_object", field="response_format")
        if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is not None:
            return Constraint("json_schema", fmt.json_schema.schema_, "response_format.json_schema.schema")
        outputs = self.structured_outputs
        if outputs is not None:
            if outputs.json_ is not None:
                return Constraint(
                    "json_schema",
                    _schema(outputs.json_, "structured_outputs.json"),
                    "structured_outputs.json",
                )
            if outputs.regex is not None:
                return Constraint("regex", outputs.regex, "structured_outputs.regex")
            if outputs.choice is not None:
                return Constraint("choice", outputs.choice, "structured_outputs.choice")
            return Constraint("json_object", field="structured_outputs.json_object")
        if self.guided_json is not None:
            return Constraint("json_schema", _schema(self.guided_json, "guided_json"), "guided_json")
        if self.guided_regex is not None:
            return Constraint("regex", self.guided_regex, "guided_regex")
        if self.guided_choice is not None:
            return Constraint("choice", self.guided_choice, "guided_choice")
        return None


def _schema(value: dict[str, Any] | str, field: str) -> Any:
    if isinstance(value, dict):
        return value
    try:
        return json.loads(value)
    except ValueError as error:
        raise ParamError(field, f"is not valid JSON ({error})") from None
    except RecursionError:  # "[[[[...": json's decoder recurses per level
        raise ParamError(field, f"is nested deeper than {MAX_SCHEMA_DEPTH} levels") from None


COMPILE_TIMEOUT_S = 5.0
"""A grammar not compiled within this many seconds is refused (422): its thread runs on, bounded by
llguidance's limits, but the request does not wait for it."""
_compiler = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lmfast-grammar")
"""Grammar compiling has its own two threads: hostile grammars cannot take every worker thread."""


async def compile_grammar(
    body: StructuredOutputFields, codec: Any, eos_token_ids: tuple[int, ...]
) -> str | None:
    """The request's checked grammar (compiled in a worker thread), or None for free text.

    Raises:
        RequestValidationError: a 422 naming the field whose schema, regex or choices are refused.
    """
    from lmfast.serving.dispatch import invalid

    constraint = None
    try:
        constraint = body.constraint()
        if constraint is None:
            return None
        loop = asyncio.get_running_loop()
        grammars = await loop.run_in_executor(_compiler, Grammars.of, codec, eos_token_ids)
        return await asyncio.wait_for(
            loop.run_in_executor(_compiler, grammars.compile, constraint), COMPILE_TIMEOUT_S
        )
    except ParamError as error:
        raise invalid(error.field, str(error)) from None
    except TimeoutError:
        assert constraint is not None
        raise invalid(
            constraint.field, f"took longer than {COMPILE_TIMEOUT_S:g} s to compile: give a simpler one"
        ) from None
