"""The bot in front of the real `lmfast serve` app (tiny random GPT-2) on a loopback uvicorn."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmfast.bot.formatting import EMPTY_NOTE
from lmfast.bot.middlewares import BROKEN_TEXT
from lmfast.bot.replies import API_DOWN
from lmfast.bot.storage import MAX_TURNS_PER_CHAT, Storage
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


CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>"


class RecordBodies:
    """ASGI middleware in front of the real app: the size of every request body sent to `path`."""

    def __init__(self, app: Any, path: str, sizes: list[int]) -> None:
        self.app, self.path, self.sizes = app, path, sizes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            self.sizes.append(int(dict(scope["headers"]).get(b"content-length", b"0")))
        await self.app(scope, receive, send)


async def test_a_long_conversation_keeps_working_in_bounded_requests(tiny_model_dir, make_config, tmp_path):
    """200 stored turns of long non-Latin text (over 1 MB as one request, the server's body limit):
    every message is still answered, /tokenize never sees the whole history, and the bot's
    settings, its stored history and a broken character follow the server's bounds."""
    template = tmp_path / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    config = ServeConfig(
        model=str(tiny_model_dir), backend="torch", num_threads=1, chat_template=str(template)
    )
    app = create_app(config)
    sizes: list[int] = []
    app.add_middleware(RecordBodies, path="/tokenize", sizes=sizes)
    with ServerThread(app) as server:
        async with FakeTelegram() as tg:
            bot_config = make_config(telegram_api_server=tg.url, api_url=server.url)
            db = Storage(bot_config.db_path)
            long_turn = "Как дела? Всё хорошо, спасибо. " * 100  # 3,100 characters, 5.7 kB as UTF-8
            for _ in range(MAX_TURNS_PER_CHAT // 2 - 3):
                db.add_turn(USER, "user", long_turn)
                db.add_turn(USER, "assistant", long_turn)
            for word in ("да", "нет", "может быть"):  # the newest turns are short: several fit
                db.add_turn(USER, "user", word)
                db.add_turn(USER, "assistant", word)
            history_bytes = sum(len(t.content.encode()) for t in db.turns(USER))
            assert history_bytes > config.max_body_bytes
            db.close()
            async with running_bot(bot_config):
                tg.send_text(USER, "/settings temperature 3")  # over /v1/chat/completions' bound of 2
                tg.send_text(USER, "/settings max_tokens 4")
                tg.send_text(USER, "Ещё вопрос?")
                tg.send_text(USER, "И ещё один?")
                tg.send_text(USER, "broken \ud800 text")
                tg.send_text(USER, "/system a pirate \udc00")  # a command's text too
                tg.send_text(USER, "Последний?")
                sent = await tg.wait_for(
                    lambda: len(tg.sent("sendMessage", USER)) >= 7 and tg.sent("sendMessage", USER), 60
                )
                await tg.wait_for(lambda: len(tg.sent("editMessageText", USER)) >= 3, 60)
    texts = [m["text"] for m in sent]
    assert texts[0].startswith("Not changed: temperature must be in [0, 2], got 3"), texts[0]
    assert texts.count(BROKEN_TEXT) == 2, texts
    answers = [m["text"] for m in tg.sent("editMessageText", USER)]
    assert not any(a == API_DOWN or "unexpected" in a or "wrong" in a for a in answers + texts), texts
    # every /tokenize body is a small part of the history: newest turns first, never all of it
    assert sizes and max(sizes) < history_bytes / 20, (max(sizes), history_bytes)
    assert len(sizes) <= 3 * (2 * MAX_TURNS_PER_CHAT.bit_length() + 2), len(sizes)
