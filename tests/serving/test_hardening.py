"""Hostile and unlucky clients against a real uvicorn on loopback (httpx and raw sockets).

Each test covers a class of fault: text the tokenizer cannot take, non-finite numbers, error
bodies that must stay small and JSON-safe, a job that fails inside the engine, the engine thread
dying, wrong content types, CORS, oversized, slow and short bodies, slowloris headers, and the
metrics that must come back to rest. After every attack the server must still generate.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmfast.serving.testing import ServerThread
from tests.generation.faults import POISON_STOP, poisoned_generator
from tests.serving.conftest import metric, wait_for, wait_until_serving

pytestmark = pytest.mark.slow

GREEDY = {"temperature": 0, "max_tokens": 4}
SURROGATE = b'"Truth \\ud800 is"'  # JSON text: a lone UTF-16 surrogate, as curl would send it


@pytest.fixture(scope="module")
def server(make_server: Any) -> Iterator[ServerThread]:
    with make_server(max_batch_size=8, body_timeout_s=0.5, header_timeout_s=0.5) as running:
        yield running


def _post(server: ServerThread, path: str, raw: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        server.url + path, content=raw, headers={"content-type": "application/json", **headers}, timeout=30
    )


def _still_generates(server: ServerThread, generator: Any) -> None:
    assert httpx.get(server.url + "/health_check/").json() == {"status": "ok"}
    response = httpx.post(server.url + "/v1/completions", json={"prompt": "Truth is", **GREEDY}, timeout=30)
    assert response.status_code == 200, response.text
    expected = generator("Truth is", max_new_tokens=4, temperature=0.0)[0][0]
    assert response.json()["choices"][0]["text"] == expected


@pytest.mark.parametrize(
    ("path", "template", "field"),
    [
        ("/v1/completions", b'{"prompt": %s}', "prompt"),
        ("/v1/completions", b'{"prompt": ["ok", %s]}', "prompt"),
        ("/v1/completions", b'{"prompt": "ok", "stop": [%s]}', "stop"),
        ("/v1/completions", b'{"prompt": "ok", "model": %s}', "model"),
        ("/generated_texts/", b'{"seed_text": %s}', "seed_text"),
        ("/generated_texts/", b'{"seed_text": "ok", "ignored_words": ["a", %s]}', "ignored_words"),
        ("/generated_texts/", b'{"seed_text": "ok", %s: 1}', None),  # an unknown key, echoed in loc
    ],
)
def test_lone_surrogates_anywhere_are_a_small_422_and_the_engine_lives(
    server, generator, path, template, field
):
    response = _post(server, path, template % SURROGATE)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    if field is not None:
        assert detail[0]["loc"][:2] == ["body", field]
    assert "input" not in detail[0] and "\\ud800" not in detail[0]["msg"]
    _still_generates(server, generator)


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e309", b"-1e309"])
@pytest.mark.parametrize(
    ("path", "template", "field"),
    [
        ("/v1/completions", b'{"prompt": "ok", "temperature": %s}', "temperature"),
        ("/v1/completions", b'{"prompt": "ok", "top_p": %s}', "top_p"),
        ("/v1/completions", b'{"prompt": "ok", "repetition_penalty": %s}', "repetition_penalty"),
        ("/v1/completions", b'{"prompt": "ok", "max_tokens": %s}', "max_tokens"),
        ("/generated_texts/", b'{"seed_text": "ok", "temperature": %s}', "temperature"),
        ("/generated_texts/", b'{"seed_text": "ok", "top_p": %s}', "top_p"),
    ],
)
def test_non_finite_numbers_are_a_422_naming_the_field(server, path, template, field, number):
    response = _post(server, path, template % number)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_error_bodies_never_copy_the_input_back(server, generator):
    huge = "word " * 150_000  # 750 kB: under the body limit, over the prompt limit
    for body in (
        {"prompt": huge},
        {"prompt": "ok", "stop": [huge]},
        {"prompt": [huge] * 1, "n": 1000},
        {"seed_text": "x", huge[:1000]: 1},
    ):
        path = "/generated_texts/" if "seed_text" in body else "/v1/completions"
        response = httpx.post(server.url + path, json=body, timeout=30)
        assert response.status_code == 422 and len(response.content) < 2_000, len(response.content)
    many_errors = {"prompt": 1, **{f"extra{i}": i for i in range(100)}, "temperature": "hot"}
    response = httpx.post(server.url + "/generated_texts/", json=many_errors)
    assert response.status_code == 422 and len(response.json()["detail"]) <= 8
    _still_generates(server, generator)


@pytest.fixture(scope="module")
def faulty_server(make_server: Any, generator: Any) -> Iterator[tuple[ServerThread, str]]:
    faulty, poison_prompt = poisoned_generator(generator, " zebra")
    with make_server(faulty, max_batch_size=8) as running:
        yield running, poison_prompt


def test_a_job_failing_inside_the_engine_fails_alone_with_a_500(faulty_server, generator):
    server, poison_prompt = faulty_server
    prompts = ["God is dead.", "Hello", "Truth is"]
    expected = [generator(p, max_new_tokens=8, temperature=0.0)[0][0] for p in prompts]

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            good = [{"prompt": p, "max_tokens": 8, "temperature": 0} for p in prompts]
            bad = [
                {"prompt": poison_prompt, "max_tokens": 8},  # fails in prefill
                {"prompt": "Hello", "max_tokens": 8, "stop": [POISON_STOP]},  # fails decoding its text
                {"prompt": poison_prompt, "max_tokens": 8, "stream": True},
            ]
            return await asyncio.gather(*(client.post("/v1/completions", json=b) for b in good + bad))

    responses = asyncio.run(main())
    assert [r.json()["choices"][0]["text"] for r in responses[:3]] == expected
    for failed in responses[3:5]:
        assert failed.status_code == 500 and "generation failed on the server" in failed.json()["detail"]
        assert len(failed.content) < 300
    stream = responses[5]  # headers were sent: the failure comes in-band, as OpenAI does
    assert stream.status_code == 200 and '"code": 500' in stream.text and stream.text.endswith("[DONE]\n\n")
    assert httpx.get(server.url + "/health_check/").json() == {"status": "ok"}
    response = httpx.post(server.url + "/v1/completions", json={"prompt": "Hello", **GREEDY})
    assert (
        response.json()["choices"][0]["text"] == generator("Hello", max_new_tokens=4, temperature=0.0)[0][0]
    )


_CRASHING_SERVER = """
import sys
from lmfast.generation import Generator
from lmfast.serving.cli import serve
from lmfast.serving.config import ServeConfig

class Fatal(BaseException):
    '''No job can be blamed for this one: it escapes every per-job guard.'''

generator = Generator.load(sys.argv[1], backend="torch", num_threads=1)
real_session = generator.session

def session(max_batch_size=None, **options):
    inner = real_session(max_batch_size, **options)
    def step():
        raise Fatal("planted: the engine thread dies")
    inner.step = step
    return inner

generator.session = session
sys.exit(serve(ServeConfig(model=sys.argv[1], port=int(sys.argv[2]), log_level="warning"), generator))
"""


def test_if_the_engine_thread_dies_the_process_exits_non_zero(tiny_model_dir, tmp_path):
    script = tmp_path / "crashing_server.py"
    script.write_text(_CRASHING_SERVER)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, str(script), str(tiny_model_dir), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, url)
        response = httpx.post(url + "/v1/completions", json={"prompt": "x", "max_tokens": 4}, timeout=30)
        assert response.status_code == 503  # answered, not left hanging until its timeout
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, output
    assert "the engine thread died (Fatal)" in output


def test_cors_is_off_by_default_and_a_flag_allows_origins(make_server, server):
    origin = {"Origin": "http://evil.example"}
    response = httpx.post(server.url + "/v1/completions", json={"prompt": "x", **GREEDY}, headers=origin)
    assert "access-control-allow-origin" not in response.headers
    with make_server(cors_allow_origins="http://localhost:3000") as running:
        preflight = httpx.options(
            running.url + "/v1/completions",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
        denied = httpx.options(
            running.url + "/v1/completions",
            headers={**origin, "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in denied.headers


def _raw(server: ServerThread, data: bytes, read_timeout_s: float = 10.0) -> tuple[bytes, float]:
    """Send `data` on a fresh connection; return what came back before the server closed it."""
    with socket.create_connection((server.host, server.port)) as sock:
        sock.settimeout(read_timeout_s)
        sock.sendall(data)
        started = time.monotonic()
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise AssertionError(
                    f"connection still open after {read_timeout_s} s: {received!r}"
                ) from None
            if not chunk:
                return received, time.monotonic() - started
            received += chunk


def _head(path: str, content_length: int | None, extra: str = "") -> bytes:
    length = "" if content_length is None else f"Content-Length: {content_length}\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{length}{extra}"
        "Connection: close\r\n\r\n"
    ).encode()


def test_a_body_over_the_limit_is_413_before_it_is_read(server, generator):
    # Content-Length says 50 MB and only 10 bytes follow: answered at once, nothing waited for
    received, _ = _raw(server, _head("/v1/completions", 50_000_000) + b'{"prompt":')
    assert received.startswith(b"HTTP/1.1 413")
    # no Content-Length (chunked): counted while read, stopped at the limit
    chunk = b'{"prompt": "' + b"a" * 600_000
    chunked = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    received, _ = _raw(server, _head("/v1/completions", None, "Transfer-Encoding: chunked\r\n") + chunked * 2)
    assert received.startswith(b"HTTP/1.1 413")
    response = _post(server, "/v1/completions", b"x" * 1_000_001)
    assert response.status_code == 413
    _still_generates(server, generator)


def test_a_body_shorter_than_its_content_length_gets_408_and_is_closed(server, generator):
    received, waited = _raw(server, _head("/v1/completions", 100) + b'{"prompt": "x"')
    assert received.startswith(b"HTTP/1.1 408"), received
    assert b"connection: close" in received.lower()
    _still_generates(server, generator)


def test_slowloris_headers_are_dropped(server, generator):
    with socket.create_connection((server.host, server.port)) as sock:
        sock.settimeout(10)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        closed = False
        for _ in range(50):  # one header byte every 0.1 s: never a complete request
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        if not closed:
            assert sock.recv(1024) == b""  # the server hung up
    idle = socket.create_connection((server.host, server.port))  # a connection that sends nothing
    idle.settimeout(10)
    assert idle.recv(1024) == b""
    idle.close()
    _still_generates(server, generator)


def test_tokenizing_happens_off_the_engine_thread(server, generator):
    codec = generator.codec
    threads: list[str] = []
    encode, banned_ids = codec.encode, codec.banned_ids

    def spy(function: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            threads.append(threading.current_thread().name)
            return function(*args)

        return wrapped

    codec.encode, codec.banned_ids = spy(encode), spy(banned_ids)
    try:
        body = {"seed_text": "Truth is", "generation_max_len": 3, "ignored_words": ["God"] * 200}
        assert httpx.post(server.url + "/generated_texts/", json=body, timeout=30).status_code == 200
        assert (
            httpx.post(server.url + "/v1/completions", json={"prompt": ["a", "b"], **GREEDY}).status_code
            == 200
        )
    finally:
        del codec.encode, codec.banned_ids
    assert threads and "lmfast-engine" not in threads


def test_active_rows_returns_to_zero_and_every_client_ended_request_is_counted(make_server):
    reason = 'lmfast_rejected_requests_total{reason="client_disconnected"}'
    with make_server(max_batch_size=1, max_wait_ms=0, body_timeout_s=5) as running:
        long = {"prompt": "x", "max_tokens": 200, "temperature": 0}
        # 1. a non-streaming client that gives up while its job runs; 2.-3. two that give up queued
        threads = [
            threading.Thread(
                target=lambda: pytest.raises(
                    httpx.ReadTimeout, httpx.post, running.url + "/v1/completions", json=long, timeout=0.3
                )
            )
            for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # 4. a streaming client that leaves after its first chunk
        with httpx.stream("POST", running.url + "/v1/completions", json={**long, "stream": True}) as r:
            next(r.iter_lines())
        # 5. a client that leaves half-way through sending its body
        with socket.create_connection((running.host, running.port)) as sock:
            sock.sendall(_head("/v1/completions", 100) + b'{"prompt"')
        wait_for(lambda: metric(running.url, reason) == 5)
        wait_for(lambda: metric(running.url, "lmfast_active_rows") == 0)
        # a finished request leaves the gauge at 0 too, and is not counted as a disconnect
        assert httpx.post(running.url + "/v1/completions", json={"prompt": "x", **GREEDY}).status_code == 200
        wait_for(lambda: metric(running.url, "lmfast_active_rows") == 0)
        assert metric(running.url, reason) == 5


# --- issue 27: bounded prompts, grammars, the API key ------------------------------------------------
CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"
MAX_PROMPT_TOKENS = 64


@pytest.fixture(scope="module")
def bounded(make_server: Any, tmp_path_factory: Any) -> Iterator[ServerThread]:
    """A server with a chat template and a small `--max_prompt_tokens`."""
    template = tmp_path_factory.mktemp("template") / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    with make_server(
        max_batch_size=8, chat_template=str(template), max_prompt_tokens=MAX_PROMPT_TOKENS
    ) as running:
        yield running


def _ask(server: ServerThread, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url + path, json=body, timeout=60)


def _messages(n_words: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": " a" * n_words}]


# each prompt form: (route, field named in the 422, body with prompts of about `n` tokens in all)
PROMPT_FORMS = {
    "text": ("/v1/completions", "prompt", lambda n: {"prompt": " a" * n, "max_tokens": 1}),
    "texts": ("/v1/completions", "prompt", lambda n: {"prompt": [" a" * (n // 4)] * 4, "max_tokens": 1}),
    "ids": ("/v1/completions", "prompt", lambda n: {"prompt": [[64] * (n // 16)] * 16, "max_tokens": 1}),
    "one ids": ("/v1/completions", "prompt", lambda n: {"prompt": [64] * n, "max_tokens": 1}),
    "seed": ("/generated_texts/", "seed_text", lambda n: {"seed_text": " a" * n, "generation_max_len": 1}),
    "chat": ("/v1/chat/completions", "messages", lambda n: {"messages": _messages(n), "max_tokens": 1}),
    "tokenize prompt": ("/tokenize", "prompt", lambda n: {"prompt": " a" * n}),
    "tokenize messages": ("/tokenize", "messages", lambda n: {"messages": _messages(n)}),
}


@pytest.mark.parametrize("form", PROMPT_FORMS)
def test_every_prompt_form_is_bounded_by_max_prompt_tokens(bounded, generator, form):
    path, field, body = PROMPT_FORMS[form]
    assert _ask(bounded, path, body(32)).status_code == 200
    refused = _ask(bounded, path, body(MAX_PROMPT_TOKENS * 2))
    assert refused.status_code == 422, refused.text
    detail = refused.json()["detail"][0]
    assert detail["loc"] == ["body", field] and "at most 64" in detail["msg"], detail
    _still_generates(bounded, generator)


@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=16))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_token_id_prompts_are_refused_exactly_when_over_a_bound(bounded, generator, lengths):
    response = _ask(bounded, "/v1/completions", {"prompt": [[64] * n for n in lengths], "max_tokens": 1})
    context = generator.max_context
    fits = sum(lengths) <= MAX_PROMPT_TOKENS and max(lengths) < context
    assert response.status_code == (200 if fits else 422), response.text
    if not fits:
        assert response.json()["detail"][0]["loc"] == ["body", "prompt"]


def test_tokenize_renders_and_encodes_off_the_event_loop_and_counts_within_the_context(bounded, generator):
    state = bounded.app.state.lmfast
    threads: list[str] = []
    template, encode = state.chat_template, generator.codec.encode

    class Spy:
        def render(self, *args: Any, **kwargs: Any) -> str:
            threads.append(threading.current_thread().name)
            return template.render(*args, **kwargs)

    def spy_encode(text: str) -> list[int]:
        threads.append(threading.current_thread().name)
        return encode(text)

    state.chat_template, generator.codec.encode = Spy(), spy_encode
    try:
        for body in ({"messages": _messages(8)}, {"prompt": " a" * 8}):
            assert _ask(bounded, "/tokenize", body).status_code == 200
        assert (
            _ask(bounded, "/v1/chat/completions", {"messages": _messages(8), "max_tokens": 1}).status_code
            == 200
        )
    finally:
        state.chat_template = template
        del generator.codec.encode
    assert len(threads) == 3 and "uvicorn" not in threads, threads
    # ~900 kB of messages (the 1 MB, under the body limit): refused before any rendering
    huge = [{"role": "user", "content": "слово " * 1_000}] * 80
    refused = _ask(bounded, "/tokenize", {"messages": huge})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "messages"]
    _still_generates(bounded, generator)


def _nested_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


HOSTILE_GRAMMARS = [
    ("guided_json", "[" * 100_000 + "]" * 100_000),  # a string, over the length bound
    ("guided_json", "[" * 40_000 + "]" * 40_000),  # a string under it: json.loads recursed
    ("guided_json", _nested_schema(200)),
    ("guided_regex", "a{1000}{1000}"),  # stalled the engine for seconds, then a 500
    ("guided_regex", "x*" * 1000),
    ("guided_regex", "(" * 2000 + ")" * 2000),
    ("guided_regex", "[z-a]"),
    ("guided_choice", [""]),
    ("structured_outputs", {"regex": "b{900}{900}"}),
    ("structured_outputs", {"json": "[" * 3000}),
    ("response_format", {"type": "json_schema", "json_schema": {"schema": _nested_schema(100)}}),
    ("response_format", {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}),
]


@pytest.mark.parametrize(("field", "value"), HOSTILE_GRAMMARS, ids=lambda v: str(v)[:24])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_hostile_grammars_are_a_422_naming_the_field_never_compiled_on_the_engine_thread(
    bounded, generator, path, field, value, monkeypatch
):
    from lmfast.generation.grammar import Grammars

    threads: list[str] = []
    limits = Grammars._limits

    def spy(self: Any) -> Any:  # every matcher llguidance builds asks for its limits
        threads.append(threading.current_thread().name)
        return limits(self)

    monkeypatch.setattr(Grammars, "_limits", spy)
    prompt = {"prompt": "x"} if path == "/v1/completions" else {"messages": _messages(1)}
    response = _ask(bounded, path, {**prompt, "max_tokens": 4, field: value})
    assert response.status_code == 422, response.text
    loc = response.json()["detail"][0]["loc"]
    assert loc[0] == "body" and loc[1].startswith(field), loc
    # a good grammar is compiled off the engine thread too; the engine only copies its matcher
    good = _ask(bounded, path, {**prompt, "max_tokens": 4, "guided_regex": "(yes|no)"})
    assert good.status_code == 200, good.text
    assert threads and "lmfast-engine" not in threads, threads
    _still_generates(bounded, generator)


def test_legacy_functions_are_refused_like_tools(bounded):
    for field, value in (
        ("tools", [{"type": "function", "function": {"name": "f"}}]),
        ("functions", [{"name": "f", "parameters": {}}]),
        ("function_call", "auto"),
        ("function_call", {"name": "f"}),
    ):
        response = _ask(bounded, "/v1/chat/completions", {"messages": _messages(1), field: value})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][:2] == ["body", field]


def test_content_type_refusals_are_counted_under_their_route(make_server):
    with make_server() as running:
        for path in ("/v1/completions", "/v1/chat/completions", "/tokenize", "/generated_texts/"):
            response = httpx.post(running.url + path, content=b"{}", headers={"content-type": "text/plain"})
            assert response.status_code == 415
            sample = f'lmfast_http_requests_total{{route="{path}",status="415"}}'
            assert metric(running.url, sample) == 1, sample


PUBLIC_ROUTES = {"/health_check/", "/"}
"""With --api_key, the only routes anyone may call (the playground's shell asks for the key)."""
KEY = "sesame"
WRONG_CREDENTIALS = [
    {},
    {"Authorization": KEY},
    {"Authorization": f"bearer {KEY}"},
    {"Authorization": f"BEARER {KEY}"},
    {"Authorization": f"Bearer  {KEY}"},
    {"Authorization": f"Bearer {KEY}x"},
    {"Authorization": f"Bearer {KEY[:-1]}"},
    {"Authorization": f"Bearer {KEY.upper()}"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": "Bearer"},
    {"Authorization": f"Bearer {KEY} extra"},
    {"X-API-Key": KEY},
    {"Cookie": f"api_key={KEY}"},
]


def test_api_key_guards_every_route_but_the_public_ones(make_server):
    with make_server(api_key=KEY) as running:
        # every route: those in the schema, and the app's own (docs, playground) outside it
        schema = running.app.openapi()["paths"]
        routes = {(path, method.upper()) for path, operations in schema.items() for method in operations}
        routes |= {(r.path, sorted(r.methods)[0]) for r in running.app.routes if getattr(r, "path", None)}
        paths = {path for path, _ in routes}
        assert {"/metrics", "/version/", "/docs", "/openapi.json", "/tokenize", "/v1/models"} <= paths
        for path, method in routes:
            body = {} if method == "POST" else None
            for headers in WRONG_CREDENTIALS:
                response = httpx.request(method, running.url + path, json=body, headers=headers)
                expected = 200 if path in PUBLIC_ROUTES else 401
                assert response.status_code == expected, (path, headers, response.status_code)
            if path not in PUBLIC_ROUTES and method == "GET":
                allowed = httpx.get(running.url + path, headers={"Authorization": f"Bearer {KEY}"})
                assert allowed.status_code == 200, path
        two = httpx.get(
            running.url + "/version/",
            headers=[("Authorization", f"Bearer {KEY}"), ("Authorization", f"Bearer {KEY}")],
        )
        assert two.status_code == 401
        assert KEY not in httpx.get(running.url + "/").text


def test_metrics_public_opens_only_metrics_to_scrapers(make_server):
    with make_server(api_key=KEY, metrics_public=True) as running:
        assert httpx.get(running.url + "/metrics").status_code == 200
        for path in ("/version/", "/openapi.json", "/docs", "/v1/models"):
            assert httpx.get(running.url + path).status_code == 401, path


def test_logprobs_and_echo_are_decoded_off_the_event_loop(bounded, monkeypatch):
    """Echo with logprobs decodes every prompt token and its alternatives: a worker thread's job."""
    from lmfast.serving.routes import chat, openai

    threads: list[str] = []

    def spy(function: Any) -> Any:
        def wrapped(*args: Any) -> Any:
            threads.append(threading.current_thread().name)
            return function(*args)

        return wrapped

    monkeypatch.setattr(openai, "legacy_logprobs", spy(openai.legacy_logprobs))
    monkeypatch.setattr(chat, "_chat_logprobs", spy(chat._chat_logprobs))
    echo = {"prompt": " a" * 40, "max_tokens": 0, "echo": True, "logprobs": 5}
    assert _ask(bounded, "/v1/completions", echo).status_code == 200
    scored = {"messages": _messages(4), "max_tokens": 3, "logprobs": True, "top_logprobs": 5}
    assert _ask(bounded, "/v1/chat/completions", scored).status_code == 200
    assert len(threads) == 2 and "uvicorn" not in threads, threads
