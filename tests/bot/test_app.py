"""The whole bot against a Telegram Bot API peer and a stand-in lmfast API, over real HTTP."""

from __future__ import annotations

import pytest

from tests.bot.peers import FakeLmfastApi, FakeTelegram, buttons, running_bot

pytestmark = pytest.mark.anyio

USER = 1001


async def test_prompt_gets_bold_prompt_and_continuation_with_buttons(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            tg.send_text(USER, "Hello <world> & friends")
            (reply,) = await tg.wait_sent(1, USER)
    assert reply["text"].startswith("<b>Hello &lt;world&gt; &amp; friends</b> [t=0.7 n=64 p=1 #1]")
    assert reply["parse_mode"] == "HTML"
    assert set(buttons(reply)) == {"🔁 Repeat", "➡️ Continue"}
    assert tg.sent("sendChatAction", USER)[0]["action"] == "typing"
    assert api.requests[0]["seed_text"] == "Hello <world> & friends"
    assert not tg.errors
