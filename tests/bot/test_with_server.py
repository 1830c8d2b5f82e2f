"""The bot in front of the real `lmfast serve` app (tiny random GPT-2) on a loopback uvicorn."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lmfast.bot.formatting import EMPTY_NOTE
from lmfast.bot.handlers import API_DOWN
from lmfast.serving.app import create_app
from lmfast.serving.config import ServeConfig
from lmfast.serving.testing import ServerThread
from tests.bot.peers import FakeTelegram, buttons, running_bot

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

USER = 7
API_KEY = "bot-test-key"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[ServerThread]:
    """`lmfast serve` as the CLI builds it: the model loads in the app's lifespan."""
    config = ServeConfig(model=str(tiny_model_dir), backend="torch", num_threads=1, api_key=API_KEY)
    with ServerThread(create_app(config)) as running:
        yield running


def greedy(server: ServerThread, prompt: str, max_len: int) -> str:
    """What the server itself answers for a greedy request: the bot must show exactly this."""
    response = httpx.post(
        server.url + "/generated_texts/",
        json={"seed_text": prompt, "generation_max_len": max_len, "temperature": 0},
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    response.raise_for_status()
    return response.json()["texts"][0]


async def test_bot_against_real_server(server, make_config):
    async with FakeTelegram() as tg:
        config = make_config(telegram_api_server=tg.url, api_url=server.url, api_key=API_KEY)
        async with running_bot(config):
            tg.send_text(USER, "/settings temperature 0")
            tg.send_text(USER, "/settings max_tokens 16")
            await tg.wait_sent(2, USER)
            prompt = "The <meaning> of life & everything"
            tg.send_text(USER, prompt)
            (reply,) = (await tg.wait_sent(3, USER))[2:]
            first = greedy(server, prompt, 16)
            assert reply["_plain"] == prompt + first + ("" if first.strip() else EMPTY_NOTE)
            assert reply["text"].startswith("<b>The &lt;meaning&gt; of life &amp; everything</b>")

            tg.press(USER, tg.message_of(reply), buttons(reply)["🔁 Repeat"])
            repeated = (await tg.wait_sent(4, USER))[3]
            assert repeated["_plain"] == reply["_plain"], "greedy: Repeat gives the same text"

            tg.press(USER, tg.message_of(reply), buttons(reply)["➡️ Continue"])
            (edited,) = await tg.wait_for(lambda: tg.sent("editMessageText", USER))
            second = greedy(server, prompt + first, 16)
            assert edited["_plain"] == prompt + first + second

            tg.send_text(USER, "/settings temperature 1")
            tg.send_text(USER, "sampled")
            sampled = (await tg.wait_sent(6, USER))[5]
            assert sampled["_plain"].startswith("sampled") and buttons(sampled)

            tg.send_text(USER, "word " * 600)  # ~600 tokens, beyond the tiny model's 256 positions
            too_long = (await tg.wait_sent(7, USER))[6]
            assert too_long["text"].startswith("The model cannot take this text:")


async def test_bot_when_the_real_server_stops(tiny_model_dir, make_config):
    config = ServeConfig(model=str(tiny_model_dir), backend="torch", num_threads=1)
    server = ServerThread(create_app(config)).start()
    async with FakeTelegram() as tg:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=server.url)):
            tg.send_text(USER, "up")
            (up,) = await tg.wait_sent(1, USER)
            await asyncio.to_thread(server.stop)
            tg.send_text(USER, "down")
            _, down = await tg.wait_sent(2, USER)
    assert up["_plain"].startswith("up") and buttons(up)
    assert down["text"] == API_DOWN
