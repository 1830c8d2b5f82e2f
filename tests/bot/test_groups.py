"""The bot in a group, through aiogram's real client against the local Telegram Bot API peer: it
answers when mentioned or replied to, keeps one history per group with speaker names, serves only
the allowed users and groups (silently), and never floods."""

from __future__ import annotations

import asyncio

import pytest

from lmfast.bot.config import BotConfig
from lmfast.bot.groups import addressed_text
from tests.bot.conftest import TOKEN
from tests.bot.peers import BOT_USER, FakeLmfastApi, FakeTelegram, running_bot

pytestmark = pytest.mark.anyio

GROUP, OTHER_GROUP = -100123, -100999
ANN, CARL, EVE = 11, 33, 55
MENTION = f"@{BOT_USER['username']}"


def answers(tg: FakeTelegram, chat_id: int) -> list[str]:
    """The bot's final texts in a chat (the placeholders edited into answers)."""
    return [tg.messages[(chat_id, p["_message_id"])]["text"] for p in tg.sent("sendMessage", chat_id)]


async def settle(tg: FakeTelegram, api: FakeLmfastApi, expected_requests: int) -> None:
    """Until the API saw `expected_requests` chat requests and every answer was edited in."""
    await tg.wait_for(lambda: len(api.chat_requests) == expected_requests)
    await tg.wait_for(lambda: all("…" not in t for t in answers(tg, GROUP)))


async def test_answers_when_mentioned_or_replied_to_with_one_history_of_named_speakers(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi(chat=True) as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            tg.send_group_text(ANN, GROUP, "who is up for football on Sunday?", "Ann")
            tg.send_group_text(CARL, GROUP, f"{MENTION} are you coming?", "Carl")
            await settle(tg, api, 1)
            (sent,) = tg.sent("sendMessage", GROUP)
            tg.send_group_text(ANN, GROUP, "great, see you at 10", "Ann", reply_to=tg.message_of(sent))
            await settle(tg, api, 2)
            tg.send_group_text(CARL, GROUP, "bring the ball", "Carl")  # addressed to nobody: remembered
            tg.send_group_text(ANN, GROUP, f"{MENTION}", "Ann")  # a bare mention: nothing to answer
            tg.send_group_text(ANN, GROUP, f"and you {MENTION}?", "Ann")
            await settle(tg, api, 3)
            tg.send_text(CARL, "hello in private")  # private chats: their own history, no names
            await tg.wait_for(lambda: len(api.chat_requests) == 4)
    first, second, third, private = (r["messages"] for r in api.chat_requests)
    assert first == [
        {"role": "user", "content": "Ann: who is up for football on Sunday?\nCarl: are you coming?"}
    ]
    assert second == [*first, {"role": "assistant", "content": "answer #1 to 1 messages"},
                      {"role": "user", "content": "Ann: great, see you at 10"}]  # fmt: skip
    assert third == [*second, {"role": "assistant", "content": "answer #2 to 3 messages"},
                     {"role": "user", "content": "Carl: bring the ball\nAnn: and you?"}]  # fmt: skip
    assert private == [{"role": "user", "content": "hello in private"}]
    assert answers(tg, GROUP) == [
        "answer #1 to 1 messages",
        "answer #2 to 3 messages",
        "answer #3 to 5 messages",
    ]


async def test_trigger_mention_ignores_replies_and_always_answers_everything(make_config, tmp_path):
    async with FakeTelegram() as tg, FakeLmfastApi(chat=True) as api:
        async with running_bot(
            make_config(telegram_api_server=tg.url, api_url=api.url, group_trigger="mention")
        ):
            tg.send_group_text(ANN, GROUP, f"hi {MENTION}", "Ann")
            await settle(tg, api, 1)
            (sent,) = tg.sent("sendMessage", GROUP)
            tg.send_group_text(ANN, GROUP, "thanks", "Ann", reply_to=tg.message_of(sent))
            tg.send_group_text(ANN, GROUP, f"{MENTION} still there?", "Ann")
            await settle(tg, api, 2)
    assert api.chat_requests[1]["messages"][-1] == {
        "role": "user",
        "content": "Ann: thanks\nAnn: still there?",
    }
    async with FakeTelegram() as tg, FakeLmfastApi(chat=True) as api:
        other_db = str(tmp_path / "always.sqlite3")
        config = make_config(
            telegram_api_server=tg.url, api_url=api.url, group_trigger="always", db_path=other_db
        )
        async with running_bot(config):
            tg.send_group_text(ANN, GROUP, "anyone?", "Ann")
            await settle(tg, api, 1)
    assert api.chat_requests[0]["messages"] == [{"role": "user", "content": "Ann: anyone?"}]


async def test_allow_lists_are_silent_in_groups_and_the_group_rate_limit_never_floods(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi(chat=True) as api:
        limits = dict(allowed_users=(ANN,), allowed_groups=(GROUP,), group_rate_limit=1)
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url, **limits)):
            tg.send_group_text(EVE, GROUP, f"{MENTION} answer me", "Eve")  # not an allowed user
            tg.send_group_text(ANN, OTHER_GROUP, f"{MENTION} and here?", "Ann")  # not an allowed group
            tg.send_group_text(ANN, GROUP, f"{MENTION} one", "Ann")
            await settle(tg, api, 1)
            tg.send_group_text(ANN, GROUP, f"{MENTION} two", "Ann")  # over the limit: silence
            tg.send_group_text(ANN, GROUP, "/help")  # commands still work in an allowed group
            await tg.wait_for(lambda: len(tg.sent("sendMessage", GROUP)) == 2)
            await asyncio.sleep(0.3)  # a refusal or a second answer would have been sent by now
            tg.send_text(EVE, "let me in")  # private: refused aloud, as before
            (refusal,) = await tg.wait_sent(1, EVE)
    assert [r["messages"][-1]["content"] for r in api.chat_requests] == ["Ann: one"]
    texts = answers(tg, GROUP)
    assert texts[0] == "answer #1 to 1 messages" and "/settings" in texts[1] and len(texts) == 2
    assert not tg.sent("sendMessage", OTHER_GROUP)
    assert "only answers the users it was set up for" in refusal["_plain"]


def test_config_checks_the_group_flags():
    with pytest.raises(ValueError, match="--group_trigger must be one of"):
        BotConfig(token=TOKEN, group_trigger="sometimes")
    with pytest.raises(ValueError, match="--group_rate_limit must be >= 1"):
        BotConfig(token=TOKEN, group_rate_limit=0)


def test_addressed_text_strips_the_mention_in_any_case():
    from aiogram.types import Message, User

    me = User(**BOT_USER)
    message = Message.model_validate(
        {
            "message_id": 1,
            "date": 0,
            "chat": {"id": GROUP, "type": "supergroup"},
            "from": {"id": ANN, "is_bot": False, "first_name": "Ann"},
            "text": "@LMFAST_test_bot what now @lmfast_test_bot?",
            "entities": [
                {"type": "mention", "offset": 0, "length": 16},
                {"type": "mention", "offset": 26, "length": 16},
            ],
        }
    )
    assert addressed_text(message, me, "mention_or_reply") == ("what now?", True)
    assert addressed_text(message, me, "reply") == ("what now?", False)
