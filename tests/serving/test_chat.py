"""`POST /v1/chat/completions` against transformers' `apply_chat_template` + `generate` on the same model.

In-process (TestClient) for the schema, errors and eos handling; a real uvicorn with the official
`openai` client on an ONNX export and on the real SmolLM2-135M-Instruct for the end-to-end claims.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from lmfast.models.chat_template import ChatTemplate, ChatTemplateError
from lmfast.serving.app import create_app
from lmfast.serving.cli import main as serve_main
from lmfast.serving.config import ServeConfig
from lmfast.serving.testing import ServerThread

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# a ChatML-like template exercising what real ones use: special-token variables, raise_exception,
# namespace, loop variables, a default system prompt and the generation prompt
TEMPLATE = (
    "{% set ns = namespace(system=false) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{% set ns.system = true %}{% endif %}"
    "{% if loop.first and message['role'] != 'system' %}<|sys|>You are terse.{{ eos_token }}\n{% endif %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role ' + message['role']) }}{% endif %}"
    "<|{{ message['role'] }}|>{{ message['content'] | trim }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
QUESTION = [{"role": "user", "content": "Who are you?"}]
CONVERSATION = [
    {"role": "system", "content": "Answer in one word."},
    {"role": "user", "content": "Who are you?"},
    {"role": "assistant", "content": "Nobody."},
    {"role": "user", "content": "Really?"},
]


def _save_with_template(source: Path, target: Path, template: str) -> Path:
    """A copy of an HF model dir whose tokenizer carries `template`, saved as transformers saves it."""
    from transformers import AutoTokenizer

    shutil.copytree(source, target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    tokenizer.chat_template = template
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="module")
def chat_model_dir(varied_model_dir: Path, tmp_path_factory) -> Path:
    """The wide-init tiny GPT-2 (varied greedy output) with TEMPLATE as its chat template."""
    return _save_with_template(varied_model_dir, tmp_path_factory.mktemp("chat") / "hf", TEMPLATE)


@pytest.fixture(scope="module")
def chat_generator(chat_model_dir: Path) -> Any:
    from lmfast.generation import Generator

    return Generator.load(chat_model_dir, backend="torch", num_threads=1)


@pytest.fixture
def chat_client(chat_generator: Any, chat_model_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(ServeConfig(model=str(chat_model_dir)), generator=chat_generator)) as client:
        yield client


def hf_chat_greedy(
    model_dir: Path, messages: list[dict[str, str]], max_new_tokens: int
) -> tuple[str, list[int]]:
    """transformers' answer: apply_chat_template with the generation prompt, then greedy generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    return tokenizer.decode(new, skip_special_tokens=True), new


_TOKENIZERS: dict[Path, Any] = {}


def _tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    if directory not in _TOKENIZERS:
        _TOKENIZERS[directory] = AutoTokenizer.from_pretrained(directory)
    return _TOKENIZERS[directory]


# the template itself ---------------------------------------------------------------------------------
_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_messages = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": _text}),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(messages=_messages, generation_prompt=st.booleans())
def test_render_equals_transformers_apply_chat_template(chat_model_dir, messages, generation_prompt):
    tokenizer = _tokenizer(chat_model_dir)
    template = ChatTemplate.from_model_dir(chat_model_dir)
    assert template is not None
    expected = tokenizer.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=False
    )
    assert template.render(messages, add_generation_prompt=generation_prompt) == expected


def test_template_found_in_tokenizer_config_and_refusals(tmp_path, chat_model_dir):
    # the older layout: the template inside tokenizer_config.json (and a named list of templates)
    config = json.loads((chat_model_dir / "tokenizer_config.json").read_text())
    for stored in (TEMPLATE, [{"name": "default", "template": TEMPLATE}, {"name": "rag", "template": "x"}]):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": stored}))
        template = ChatTemplate.from_model_dir(tmp_path)
        assert template is not None and template.render(QUESTION) == ChatTemplate(
            TEMPLATE, {"eos_token": "<|endoftext|>"}
        ).render(QUESTION)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert ChatTemplate.from_model_dir(tmp_path) is None

    template = ChatTemplate.from_model_dir(chat_model_dir)
    with pytest.raises(ChatTemplateError, match="unknown role tool"):
        template.render([{"role": "tool", "content": "x"}])
    with pytest.raises(ChatTemplateError, match="line 1"):
        ChatTemplate("{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="empty"):
        (tmp_path / "empty.jinja").write_text(" \n")
        ChatTemplate.from_file(tmp_path / "empty.jinja")
    # the sandbox: no way from a template to Python internals
    with pytest.raises(ChatTemplateError):
        ChatTemplate("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}").render(QUESTION)


# the route, in-process ---------------------------------------------------------------------------------
def test_greedy_answer_equals_transformers(chat_client, chat_model_dir):
    expected, _ = hf_chat_greedy(chat_model_dir, CONVERSATION, 12)
    response = chat_client.post(
        "/v1/chat/completions", json={"messages": CONVERSATION, "max_tokens": 12, "temperature": 0}
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    (choice,) = data["choices"]
    assert choice["message"] == {"role": "assistant", "content": expected}
    assert choice["finish_reason"] == "length" and data["usage"]["completion_tokens"] == 12
    prompt_ids = _tokenizer(chat_model_dir).apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert data["usage"]["prompt_tokens"] == len(prompt_ids["input_ids"])


def test_stream_chunks_follow_openai_and_equal_the_answer(chat_client):
    body = {"messages": QUESTION, "max_completion_tokens": 9, "temperature": 0, "n": 2}
    answer = chat_client.post("/v1/chat/completions", json=body).json()
    stream = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with chat_client.stream("POST", "/v1/chat/completions", json=stream) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    first, usage = chunks[0], chunks[-1]
    assert [c["delta"] for c in first["choices"]] == [{"role": "assistant", "content": ""}] * 2
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 18
    assert all(c["usage"] is None for c in chunks[:-1])
    texts, reasons = ["", ""], [None, None]
    for chunk in chunks[1:-1]:
        for choice in chunk["choices"]:
            texts[choice["index"]] += choice["delta"].get("content", "")
            reasons[choice["index"]] = choice["finish_reason"] or reasons[choice["index"]]
    assert texts == [c["message"]["content"] for c in answer["choices"]]
    assert reasons == ["length", "length"]


def test_sampling_seed_stop_and_max_tokens_names(chat_client):
    def ask(**fields: Any) -> dict[str, Any]:
        response = chat_client.post("/v1/chat/completions", json={"messages": QUESTION, **fields})
        assert response.status_code == 200, response.text
        return response.json()

    sampled = ask(max_tokens=8, temperature=1.0, seed=3, n=3)
    assert sampled == {
        **ask(max_tokens=8, temperature=1.0, seed=3, n=3),
        "id": sampled["id"],
        "created": sampled["created"],
    }
    greedy = ask(max_tokens=10, temperature=0)["choices"][0]["message"]["content"]
    stop = greedy[4:6]
    stopped = ask(max_tokens=10, temperature=0, stop=stop)["choices"][0]
    assert (
        stopped["message"]["content"] == greedy[: greedy.index(stop)] and stopped["finish_reason"] == "stop"
    )
    both = ask(max_tokens=10, max_completion_tokens=3, temperature=0)
    assert both["usage"]["completion_tokens"] == 3, "max_completion_tokens wins over max_tokens"


def test_errors_name_the_problem(chat_client, client):
    def post(c: TestClient, **fields: Any) -> Any:
        return c.post("/v1/chat/completions", json={"messages": QUESTION, **fields})

    no_template = post(client)  # the tiny GPT-2 of tests/conftest.py has no chat template
    assert no_template.status_code == 400 and "--chat_template" in no_template.json()["detail"]
    refused = chat_client.post("/v1/chat/completions", json={"messages": [{"role": "tool", "content": "x"}]})
    assert refused.status_code == 400 and "unknown role tool" in refused.json()["detail"]
    for fields, field in (
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
        ({"temperature": 3}, "temperature"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ):
        response = post(chat_client, **fields)
        assert response.status_code == 422, fields
        assert response.json()["detail"][0]["loc"][1] == field
    too_long = post(chat_client, messages=[{"role": "user", "content": "word " * 300}])
    assert too_long.status_code == 422 and "context" in json.dumps(too_long.json())


def test_text_parts_and_the_chat_template_flag(chat_generator, chat_model_dir, tmp_path):
    other = tmp_path / "other.jinja"
    other.write_text("{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}ANSWER:")
    config = ServeConfig(model=str(chat_model_dir), chat_template=str(other))
    with TestClient(create_app(config, generator=chat_generator)) as client:
        parts = [{"type": "text", "text": "Who are"}, {"type": "text", "text": "you?"}]
        data = client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": parts}], "max_tokens": 6, "temperature": 0},
        ).json()
    expected = chat_generator("Who are\nyou?<|endoftext|>ANSWER:", max_new_tokens=6, temperature=0.0)[0][0]
    assert data["choices"][0]["message"]["content"] == expected


def test_serve_cli_refuses_a_bad_chat_template_file(chat_model_dir, tmp_path, capsys):
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% if %}")
    for path, message in ((tmp_path / "missing.jinja", "cannot read"), (broken, "line 1")):
        assert serve_main([str(chat_model_dir), "--chat_template", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("lmfast serve: --chat_template:") and message in err and "\n" not in err


def test_generation_stops_at_every_eos_id_of_generation_config(chat_model_dir, tmp_path):
    """generation_config.json may list eos ids beyond config.json's: any of them ends the answer."""
    from lmfast.generation import Generator

    _, tokens = hf_chat_greedy(chat_model_dir, QUESTION, 8)
    model_dir = tmp_path / "two_eos"
    shutil.copytree(chat_model_dir, model_dir)
    generation = json.loads((model_dir / "generation_config.json").read_text())
    extra = next(
        t for t in tokens[2:] if t not in tokens[:2]
    )  # a token greedy emits, not among the first two
    generation["eos_token_id"] = [50256, extra]
    (model_dir / "generation_config.json").write_text(json.dumps(generation))
    _, reference = hf_chat_greedy(model_dir, QUESTION, 8)
    assert reference[-1] == extra and len(reference) < 8, "transformers stops at the second eos id"
    # the eos token ends the answer and is not part of it (a plain word here, so decode without it)
    expected = _tokenizer(chat_model_dir).decode(reference[:-1], skip_special_tokens=True)

    generator = Generator.load(model_dir, backend="torch", num_threads=1)
    assert generator.info.eos_token_ids == (50256, extra)
    with TestClient(create_app(ServeConfig(model=str(model_dir)), generator=generator)) as client:
        data = client.post(
            "/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 8, "temperature": 0}
        ).json()
    assert data["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": expected},
        "logprobs": None,
        "finish_reason": "stop",
    }


# end to end: export -> real uvicorn -> openai client ---------------------------------------------------
@pytest.mark.slow
def test_onnx_export_served_to_the_openai_client(chat_model_dir, tmp_path):
    from lmfast.export import ExportConfig, export_onnx

    export_dir = export_onnx(ExportConfig(source=chat_model_dir, output=tmp_path / "export"))
    assert (export_dir / "chat_template.jinja").read_text() == TEMPLATE, "the export keeps the template"
    expected, _ = hf_chat_greedy(chat_model_dir, CONVERSATION, 16)
    with ServerThread(create_app(ServeConfig(model=str(export_dir), num_threads=1))) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model="chat", messages=CONVERSATION, max_tokens=16, temperature=0
        )
        stream = client.chat.completions.create(
            model="chat", messages=CONVERSATION, max_tokens=16, temperature=0, stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="chat", messages=[{"role": "tool", "content": "x"}])
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason == "length"
    assert streamed == expected


@pytest.mark.slow
def test_smollm2_capital_of_france_equals_transformers(smollm2_dir):
    """The real SmolLM2-135M-Instruct: its turn ends with <|im_end|>, where the server must stop too."""
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected, tokens = hf_chat_greedy(smollm2_dir, messages, 48)
    config = ServeConfig(model=str(smollm2_dir), backend="torch", num_threads=2)
    with ServerThread(create_app(config)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=48, temperature=0
        )
    assert tokens[-1] == 2 and len(tokens) < 48, "transformers ends the turn with <|im_end|>"
    assert "Paris" in expected
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens == len(tokens)


def test_tokenize_counts_messages_as_the_chat_route_does(chat_client, client, chat_model_dir):
    data = chat_client.post("/tokenize", json={"messages": CONVERSATION}).json()
    expected = _tokenizer(chat_model_dir).apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert data["tokens"] == expected["input_ids"] and data["count"] == len(expected["input_ids"])
    assert data["max_model_len"] == 128
    assert chat_client.post("/tokenize", json={"prompt": "Truth is"}).json()["count"] == 2
    assert client.post("/tokenize", json={"messages": QUESTION}).status_code == 400, "no chat template"
    assert chat_client.post("/tokenize", json={}).status_code == 422


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's script")
def test_playground_chat_view_streams_a_conversation(chat_generator, chat_model_dir):
    """The page's own script (node, a minimal DOM) holds two turns over the real server."""
    import subprocess

    page = Path(__file__).parents[2] / "lmfast" / "serving" / "static" / "index.html"
    script = Path(__file__).parent / "js" / "playground_chat.mjs"
    config = ServeConfig(model=str(chat_model_dir))
    with ServerThread(create_app(config, generator=chat_generator)) as server:
        result = subprocess.run(
            ["node", str(script), str(page), server.url + "/", "Who are you?", "Really?"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr[-2000:]
        shown = json.loads(result.stdout)
        said: list[dict[str, str]] = []
        for question, answer in zip(["Who are you?", "Really?"], shown["answers"], strict=True):
            said.append({"role": "user", "content": question})
            expected = server_chat(server.url, said)
            assert answer == expected
            said.append({"role": "assistant", "content": answer})
    assert shown["view"] == "chat", "a model with a chat template opens in the chat view"
    assert shown["history"] == said and shown["status"].startswith("done in")


def server_chat(url: str, messages: list[dict[str, str]]) -> str:
    import httpx

    body = {"messages": messages, "max_tokens": 8, "temperature": 0}
    response = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
    return response.json()["choices"][0]["message"]["content"]


def test_chat_logprobs_in_openais_shape_equal_the_completions_route(chat_client):
    """logprobs + top_logprobs: per generated token its text, bytes, logprob and alternatives; the
    same numbers /v1/completions gives for the same prompt ids (greedy: the model's own)."""
    body = {"messages": CONVERSATION, "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    choice = chat_client.post("/v1/chat/completions", json=body).json()["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
    for entry in content:
        assert bytes(entry["bytes"]) == entry["token"].encode() and len(entry["top_logprobs"]) == 2
        assert entry["logprob"] == pytest.approx(entry["top_logprobs"][0]["logprob"])  # greedy
    ids = chat_client.post("/tokenize", json={"messages": CONVERSATION}).json()["tokens"]
    plain = chat_client.post(
        "/v1/completions", json={"prompt": ids, "max_tokens": 4, "temperature": 0, "logprobs": 2}
    ).json()["choices"][0]["logprobs"]
    assert [e["logprob"] for e in content] == pytest.approx(plain["token_logprobs"], abs=1e-6)
    assert chat_client.post("/v1/chat/completions", json=body | {"logprobs": False}).status_code == 422
    without = chat_client.post("/v1/chat/completions", json=body | {"logprobs": None, "top_logprobs": None})
    assert without.json()["choices"][0]["logprobs"] is None
