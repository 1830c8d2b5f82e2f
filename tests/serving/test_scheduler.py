"""The engine's scheduler behind a real server: the prefix cache across chat turns, a request
cancelled mid-prefill freeing everything, and /health_check/ telling a stalled engine apart."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import numpy as np
import pytest

from lmfast.generation import Generator
from tests.serving.conftest import metric, wait_for

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_chat_client_resending_its_history_gets_the_prefix_cache(make_server, tmp_path):
    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML)
    with make_server(max_batch_size=4, chat_template=str(template)) as server:
        messages = [{"role": "user", "content": "Supposing that Truth is a woman, what then?"}]
        body = {"messages": messages, "max_tokens": 8, "temperature": 0}
        with httpx.Client(base_url=server.url, timeout=60) as client:
            first = client.post("/v1/chat/completions", json=body).json()
            reply = first["choices"][0]["message"]["content"]
            messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
            second = client.post("/v1/chat/completions", json=body).json()
        assert second["choices"][0]["message"]["content"]
        assert metric(server.url, "lmfast_prefix_cache_lookups_total") == 2
        assert metric(server.url, "lmfast_prefix_cache_hits_total") == 1
        # at least the first turn's prompt was reused, not prefilled again
        assert (
            metric(server.url, "lmfast_prefix_cache_reused_tokens_total")
            >= first["usage"]["prompt_tokens"] - 1
        )
        assert metric(server.url, "lmfast_prefix_cache_bytes") > 0


def test_a_request_timing_out_mid_prefill_is_dropped_between_chunks_and_frees_everything(
    make_server, monkeypatch
):
    from lmfast.generation import session as session_module

    monkeypatch.setattr(session_module, "IDLE_STEP_TOKENS", 1)  # one prompt token per step
    with make_server(step_token_budget=1, request_timeout_s=0.3, prefix_cache_mb=0) as server:
        long_prompt = "Truth is a woman " * 50  # 200 tokens: 200 steps of one chunk each
        answer = httpx.post(
            server.url + "/v1/completions", json={"prompt": long_prompt, "max_tokens": 4}, timeout=60
        )
        assert answer.status_code == 504
        for gauge in ("lmfast_prefilling_rows", "lmfast_active_rows", "lmfast_queue_depth"):
            wait_for(lambda gauge=gauge: metric(server.url, gauge) == 0)
        short = httpx.post(
            server.url + "/v1/completions", json={"prompt": "Truth is", "max_tokens": 2}, timeout=60
        )
        assert short.status_code == 200  # the engine went on


class _HeldBackend:
    """The real backend; a forward waits while `hold` is set (an engine step that does not end)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hold = threading.Event()
        self.release = threading.Event()
        self.entered = threading.Event()

    def forward(self, input_ids: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        if self.hold.is_set():
            self.entered.set()
            self.release.wait(30)
        return self.inner.forward(input_ids, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_health_check_says_stalled_while_one_step_runs_past_the_bound(make_server, generator):
    backend = _HeldBackend(generator.backend)
    held = Generator(backend, generator.codec, generator.info, generator.default_params, generator.model_name)
    with make_server(generator=held, stall_timeout_s=0.2) as server:
        assert httpx.get(server.url + "/health_check/").json() == {"status": "ok"}
        backend.hold.set()
        request = threading.Thread(
            target=httpx.post,
            args=(server.url + "/v1/completions",),
            kwargs={"json": {"prompt": "Truth is", "max_tokens": 2}, "timeout": 60},
        )
        request.start()
        try:
            assert backend.entered.wait(30)
            wait_for(lambda: httpx.get(server.url + "/health_check/").status_code == 503)
            assert httpx.get(server.url + "/health_check/").json() == {"status": "stalled"}
        finally:
            backend.hold.clear()
            backend.release.set()
            request.join(60)
        wait_for(lambda: httpx.get(server.url + "/health_check/").status_code == 200)


@pytest.mark.parametrize("value", [0, -5])
def test_scheduler_flags_are_checked(value):
    from lmfast.serving.config import ServeConfig

    with pytest.raises(ValueError, match="--step_token_budget"):
        ServeConfig(step_token_budget=value)
    with pytest.raises(ValueError, match="--stall_timeout_s"):
        ServeConfig(stall_timeout_s=value)
    if value < 0:
        with pytest.raises(ValueError, match="--prefix_cache_mb"):
            ServeConfig(prefix_cache_mb=value)
        with pytest.raises(ValueError, match="--stall_ratio"):
            ServeConfig(stall_ratio=value)
