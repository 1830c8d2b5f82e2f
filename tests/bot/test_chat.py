"""Conversation mode: aiogram's real client against the Telegram Bot API peer, with a stand-in chat
API (trimming, modes, system prompt) and with the real `lmfast serve` on a tiny chat model
(a 3-turn conversation across a bot restart, answers greedily equal to the server's own)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lmfast.bot.chat import EMPTY_ANSWER
from lmfast.bot.storage import Storage
from lmfast.serving.app import create_app
from lmfast.serving.config import ServeConfig
from lmfast.serving.testing import ServerThread
from tests.bot.peers import FakeLmfastApi, FakeTelegram, buttons, running_bot
from tests.serving.test_chat import TEMPLATE, _save_with_template

pytestmark = pytest.mark.anyio
USER = 31


def finals(tg: FakeTelegram, chat_id: int = USER) -> list[dict[str, Any]]:
    """The answers' last edits: the ones that carry the Repeat button."""
    return [e for e in tg.sent("editMessageText", chat_id) if "🔁 Repeat" in buttons(e)]


async def test_history_is_sent_trimmed_to_the_context_with_the_system_prompt(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi(chat=True, max_model_len=60) as api:
        async with running_bot(
            make_config(telegram_api_server=tg.url, api_url=api.url, stream_edit_interval_s=0)
        ):
            tg.send_text(USER, "/settings max_tokens 16")
            tg.send_text(USER, "/system Be brief.")
            await tg.wait_sent(2, USER)
            for turn in range(4):
                tg.send_text(USER, f"question {turn} " + "word " * 8)
                await tg.wait_for(lambda turn=turn: len(finals(tg)) == turn + 1)
            tg.send_text(USER, "word " * 50)  # alone it leaves less room than 16 tokens: a shorter answer
            await tg.wait_for(lambda: len(finals(tg)) == 5)
            tg.send_text(USER, "word " * 70)  # alone it fills the context
            too_long = (await tg.wait_sent(8, USER))[-1]
    first, *_, fourth, alone = api.chat_requests
    assert first["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "question 0 " + "word " * 8},
    ]
    assert first["stream"] is True and first["max_tokens"] == 16
    # 4 turns of 12 + 2x... tokens: the oldest are dropped, the system prompt and the newest stay
    assert fourth["messages"][0]["role"] == "system" and fourth["messages"][1]["role"] == "user"
    assert fourth["messages"][-1]["content"].startswith("question 3")
    assert api.count(fourth["messages"]) + 16 <= 60 < api.count(fourth["messages"]) + 16 + 14
    assert len(fourth["messages"]) < 8
    assert alone["messages"][1:] == [{"role": "user", "content": "word " * 50}]
    assert alone["max_tokens"] == 60 - api.count(alone["messages"])
    assert too_long["text"].startswith("The model cannot take this text: your message is")
    assert finals(tg)[0]["_plain"] == "answer #1 to 2 messages"
    assert not api.requests, "chat mode never calls /generated_texts/"


async def test_streamed_edits_mode_and_repeat(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi(chat=True) as api:
        async with running_bot(
            make_config(telegram_api_server=tg.url, api_url=api.url, stream_edit_interval_s=0)
        ):
            tg.send_text(USER, "hi")
            await tg.wait_for(lambda: finals(tg))
            placeholder = tg.sent("sendMessage", USER)[0]
            edits = tg.sent("editMessageText", USER)
            assert placeholder["text"] == "…" and {e["message_id"] for e in edits} == {
                placeholder["_message_id"]
            }
            assert edits[0]["_plain"] == "answer #1…", "the first piece is shown before the answer is done"
            tg.send_text(USER, "again")
            await tg.wait_for(lambda: len(finals(tg)) == 2)
            first, second = finals(tg)

            tg.press(USER, tg.message_of(tg.sent("sendMessage", USER)[0]), buttons(first)["🔁 Repeat"])
            await tg.wait_for(lambda: tg.sent("answerCallbackQuery"))
            tg.press(USER, tg.message_of(tg.sent("sendMessage", USER)[1]), buttons(second)["🔁 Repeat"])
            await tg.wait_for(lambda: len(finals(tg)) == 3)
            assert finals(tg)[2]["message_id"] == second["message_id"], "Repeat replaces the answer in place"
            assert api.chat_requests[2]["messages"] == api.chat_requests[1]["messages"]

            tg.send_text(USER, "/mode continue")
            tg.send_text(USER, "once upon")
            reply = (await tg.wait_sent(4, USER))[-1]
            assert reply["_plain"].startswith("once upon [t=0.7")
    refused, regenerating = tg.sent("answerCallbackQuery")
    assert (
        refused["text"] == "Only the last answer can be regenerated."
        and regenerating["text"] == "Generating…"
    )
    assert finals(tg)[2]["_plain"] == "answer #3 to 3 messages"
    assert len(api.requests) == 1


# the real server -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chat_server(varied_model_dir: Path, tmp_path_factory) -> Iterator[ServerThread]:
    model = _save_with_template(varied_model_dir, tmp_path_factory.mktemp("bot_chat") / "hf", TEMPLATE)
    config = ServeConfig(model=str(model), backend="torch", num_threads=1)
    with ServerThread(create_app(config)) as running:
        yield running


def server_answer(server: ServerThread, messages: list[dict[str, str]]) -> str:
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"messages": messages, "max_tokens": 8, "temperature": 0},
        timeout=60,
    )
    response.raise_for_status()
    text = response.json()["choices"][0]["message"]["content"]
    return text if text.strip() else EMPTY_ANSWER


@pytest.mark.slow
async def test_three_turns_across_a_restart_with_the_real_server(chat_server, make_config):
    said: list[dict[str, str]] = []
    async with FakeTelegram() as tg:
        config = make_config(telegram_api_server=tg.url, api_url=chat_server.url, stream_edit_interval_s=0)
        async with running_bot(config):
            tg.send_text(USER, "/settings temperature 0")
            tg.send_text(USER, "/settings max_tokens 8")
            await tg.wait_sent(2, USER)
            for turn, text in enumerate(("Hello there", "How are you?")):
                tg.send_text(USER, text)
                await tg.wait_for(lambda turn=turn: len(finals(tg)) == turn + 1)
                said += [{"role": "user", "content": text}]
                answer = finals(tg)[-1]["_plain"]
                assert answer == server_answer(chat_server, said)
                said += [{"role": "assistant", "content": answer}]
        # a new bot process on the same SQLite file: the conversation goes on
        async with running_bot(config):
            tg.send_text(USER, "Tell me more.")
            await tg.wait_for(lambda: len(finals(tg)) == 3)
        said += [{"role": "user", "content": "Tell me more."}]
        assert finals(tg)[-1]["_plain"] == server_answer(chat_server, said), "history intact after restart"
    with Storage(config.db_path) as db:
        turns = [t.message() for t in db.turns(USER)]
    assert [t["role"] for t in turns] == ["user", "assistant"] * 3
    assert turns[:5] == said
