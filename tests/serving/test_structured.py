"""Structured output over a real server: every sampled answer matches its schema, regex or choices."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from lmfast.serving.app import create_app
from lmfast.serving.config import ServeConfig
from lmfast.serving.testing import ServerThread

TEMPLATE = Path(__file__).resolve().parents[2] / "data" / "documents" / "dialogs" / "chat_template.jinja"
# bounded strings, numbers and arrays: a random model finishes the object within the token budget
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["calm", "angry", "joyful"]},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    },
    "required": ["name", "age", "mood", "tags"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def server(generator: Any, tiny_model_dir: Path) -> Iterator[ServerThread]:
    config = ServeConfig(
        model=str(tiny_model_dir), max_batch_size=16, max_wait_ms=20, chat_template=str(TEMPLATE)
    )
    with ServerThread(create_app(config, generator=generator)) as running:
        yield running


def _complete(url: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(url + "/v1/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.slow  # 9 constrained requests plus 2 chat answers on a real server (~15 s on 2 busy cores)
def test_constrained_and_free_rows_share_a_batch_and_every_answer_matches(server):
    schema_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}
    bodies = [  # sent together, so they decode in the same batch
        *(
            {
                "prompt": "Truth is",
                "max_tokens": 80,
                "temperature": 1.0,
                "seed": seed,
                "n": 2,
                "response_format": schema_format,
            }
            for seed in range(4)
        ),
        {
            "prompt": "Truth is",
            "max_tokens": 8,
            "temperature": 1.0,
            "seed": 0,
            "guided_choice": ["yes", "no"],
        },
        {
            "prompt": "Truth is",
            "max_tokens": 12,
            "temperature": 0.9,
            "seed": 1,
            "structured_outputs": {"regex": "[0-9]{3}-[a-z]{2,4}"},
        },
        {"prompt": "Truth is", "max_tokens": 8, "temperature": 1.0, "seed": 2},  # free text
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda b: _complete(server.url, b), bodies))
    answers = [c for r in results[:4] for c in r["choices"]]
    assert len(answers) == 8
    for choice in answers:
        jsonschema.validate(json.loads(choice["text"]), SCHEMA)
        assert choice["finish_reason"] == "stop"
    assert len({c["text"] for c in answers}) > 1  # sampled, not one forced answer
    assert results[4]["choices"][0]["text"] in ("yes", "no")
    assert re.fullmatch("[0-9]{3}-[a-z]{2,4}", results[5]["choices"][0]["text"])
    assert results[6]["usage"]["completion_tokens"] == 8  # the free row was not constrained

    chat = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    reply = chat.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format=schema_format,
        temperature=0.8,
        seed=5,
        max_tokens=80,
    )
    jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
    stream = chat.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Any JSON object."}],
        response_format={"type": "json_object"},
        extra_body={"top_k": 5},
        temperature=0.7,
        seed=3,
        max_tokens=200,
        stream=True,
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    if text.endswith("}"):  # finished within max_tokens (else the prefix must still be JSON-like)
        assert isinstance(json.loads(text), dict)
    assert text.startswith("{")


def test_bad_constraints_are_422_naming_the_field(server):
    cases = {
        "response_format.json_schema.schema": {
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "strin"}}}
        },
        "structured_outputs.regex": {"structured_outputs": {"regex": "(unclosed"}},
        "guided_json": {"guided_json": "{not json"},
        "structured_outputs": {"structured_outputs": {"grammar": "start: 'a'"}},
        "response_format": {"response_format": {"type": "json_schema"}},
        "guided_choice": {"guided_choice": []},
    }
    for field, extra in cases.items():
        response = httpx.post(server.url + "/v1/completions", json={"prompt": "a", **extra}, timeout=60)
        assert response.status_code == 422, (field, response.text)
        locations = [".".join(map(str, e["loc"][1:])) for e in response.json()["detail"]]
        assert any(loc.startswith(field) for loc in locations), (field, response.json())
    two = {"prompt": "a", "guided_regex": "a", "response_format": {"type": "json_object"}}
    response = httpx.post(server.url + "/v1/completions", json=two, timeout=60)
    assert response.status_code == 422 and "at most one" in response.text
    chat = {"messages": [{"role": "user", "content": "hi"}], "guided_regex": "(unclosed"}
    response = httpx.post(server.url + "/v1/chat/completions", json=chat, timeout=60)
    assert response.status_code == 422 and "guided_regex" in response.text
