"""The whole bot against a Telegram Bot API peer and a stand-in lmfast API, over real HTTP.

aiogram's own HTTP client reaches `FakeTelegram` through `--telegram_api_server`; every wait is
bounded and re-checks what the peer recorded, nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from lmfast.bot.cli import main
from lmfast.bot.replies import API_DOWN
from tests.bot.conftest import TOKEN
from tests.bot.peers import FakeLmfastApi, FakeTelegram, buttons, closed_port_url, running_bot

pytestmark = pytest.mark.anyio

REPO_ROOT = Path(__file__).resolve().parents[2]
USER = 1001
OTHER = 2002


async def test_prompt_gets_bold_prompt_and_continuation_with_buttons(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            tg.send_text(USER, "Hello <world> & friends")
            (reply,) = await tg.wait_sent(1, USER)
            api.reply = " *not bold* _nor italic_ `nor code` [nor](http://link) &amp;"
            tg.send_text(USER, "Markdown?")
            _, markdown = await tg.wait_sent(2, USER)
    assert reply["text"].startswith("<b>Hello &lt;world&gt; &amp; friends</b> [t=0.7 n=64 p=1 #1]")
    assert reply["_plain"] == "Hello <world> & friends [t=0.7 n=64 p=1 #1]"
    assert markdown["_plain"] == "Markdown?" + api.reply, "Markdown and entities arrive literally"
    assert reply["parse_mode"] == "HTML"
    assert set(buttons(reply)) == {"🔁 Repeat", "➡️ Continue"}
    assert tg.sent("sendChatAction", USER)[0]["action"] == "typing"
    assert api.requests[0]["seed_text"] == "Hello <world> & friends"
    assert api.requests[0]["num_return_sequences"] == 1
    assert not tg.errors


async def test_start_help_unknown_command_and_non_text(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            tg.send_text(USER, "/start")
            tg.send_text(USER, "/help")
            tg.send_text(USER, "/frobnicate")
            tg.send_sticker(USER)
            start, help_, unknown, sticker = await tg.wait_sent(4, USER)
    assert "Hello, User&lt;1001&gt;!" in start["text"] and "/settings" in start["text"]
    assert "/reset" in help_["text"] and "Repeat" in help_["text"]
    (menu,) = tg.sent("setMyCommands")
    assert [c["command"] for c in menu["commands"]] == [
        "start",
        "help",
        "settings",
        "mode",
        "system",
        "reset",
    ]
    assert unknown["text"].startswith("I don't know that command")
    assert "text message" in sticker["text"]
    assert not api.requests, "commands must not reach the model"
    assert not tg.errors


async def test_settings_buttons_and_typed_values_change_generation(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            tg.send_text(USER, "/settings")
            (panel,) = await tg.wait_sent(1, USER)
            assert "Temperature: <code>0.7</code>" in panel["text"]
            keys = buttons(panel)
            assert "✓ 0.7" in keys and "✓ 64" in keys and "✓ 1" in keys

            header = tg.press(USER, tg.message_of(panel), keys["Temperature: 0.7"])  # a label, not a choice
            await tg.wait_for(lambda: tg.sent("answerCallbackQuery"))
            query = tg.press(USER, tg.message_of(panel), keys["0"])  # temperature 0: greedy
            await tg.wait_for(lambda: tg.sent("editMessageText", USER))
            assert [a["callback_query_id"] for a in tg.sent("answerCallbackQuery")] == [header, query]
            edited = tg.sent("editMessageText", USER)[0]
            assert "0 (greedy)" in edited["text"] and "✓ 0" in buttons(edited)

            tg.send_text(USER, "/settings max_tokens 32")
            tg.send_text(USER, "/settings top_p 2")
            tg.send_text(USER, "/settings top_p")
            _, typed, out_of_range, usage = await tg.wait_sent(4, USER)
            assert "Max tokens: <code>32</code>" in typed["text"]
            assert out_of_range["text"].startswith("Not changed: top_p must be in (0, 1]")
            assert usage["text"].startswith("Usage:")

            tg.send_text(USER, "once upon")
            reply = (await tg.wait_sent(5, USER))[-1]
    assert reply["_plain"] == "once upon [t=0 n=32 p=1 #1]"
    assert not tg.errors


async def test_repeat_sends_a_new_sample_and_continue_extends_in_place(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            tg.send_text(USER, "The sea")
            (first,) = await tg.wait_sent(1, USER)

            tg.press(USER, tg.message_of(first), buttons(first)["🔁 Repeat"])
            _, repeated = await tg.wait_sent(2, USER)
            assert repeated["_plain"] == "The sea [t=0.7 n=64 p=1 #2]"
            assert api.requests[1]["seed_text"] == "The sea"

            tg.press(USER, tg.message_of(first), buttons(first)["➡️ Continue"])
            edited = (await tg.wait_for(lambda: tg.sent("editMessageText", USER)))[0]
            assert edited["message_id"] == first["_message_id"]
            assert edited["_plain"] == "The sea [t=0.7 n=64 p=1 #1] [t=0.7 n=64 p=1 #3]"
            assert edited["text"].startswith("<b>The sea</b> [t=")
            assert api.requests[2]["seed_text"] == "The sea [t=0.7 n=64 p=1 #1]"

            # the edited message's own Continue goes on from the extended text
            tg.press(USER, tg.message_of(first), buttons(edited)["➡️ Continue"])
            await tg.wait_for(lambda: len(tg.sent("editMessageText", USER)) == 2)
            assert api.requests[3]["seed_text"].endswith("#1] [t=0.7 n=64 p=1 #3]")
        assert len(tg.sent("answerCallbackQuery")) == 3
    assert not tg.errors


async def test_reset_restores_defaults_and_retires_old_buttons(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            tg.send_text(USER, "/settings temperature 1.3")
            tg.send_text(USER, "a prompt")
            _, reply = await tg.wait_sent(2, USER)
            assert "t=1.3" in reply["_plain"]
            tg.send_text(USER, "/reset")
            (reset,) = (await tg.wait_sent(3, USER))[2:]
            assert reset["text"].startswith(
                "Done: a new conversation starts, settings are back to the defaults"
            )
            tg.press(USER, tg.message_of(reply), buttons(reply)["🔁 Repeat"])
            answer = (await tg.wait_for(lambda: tg.sent("answerCallbackQuery")))[0]
            assert answer["show_alert"] == "true" and "no longer have this text" in answer["text"]
            tg.send_text(USER, "again")
            again = (await tg.wait_sent(4, USER))[3]
    assert again["_plain"] == "again [t=0.7 n=64 p=1 #2]"
    assert len(api.requests) == 2, "a retired button must not reach the model"


async def test_allow_list_refuses_others_politely(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        config = make_config(telegram_api_server=tg.url, api_url=api.url, allowed_users=(USER,))
        async with running_bot(config):
            tg.send_text(OTHER, "let me in")
            tg.send_text(OTHER, "/start")
            tg.send_text(USER, "hi")
            refusal, refusal_start = await tg.wait_sent(2, OTHER)
            (reply,) = await tg.wait_sent(1, USER)
            tg.press(OTHER, tg.message_of(reply), buttons(reply)["🔁 Repeat"])
            answer = (await tg.wait_for(lambda: tg.sent("answerCallbackQuery")))[0]
    assert "this bot is private" in refusal["text"] and "<code>2002</code>" in refusal["text"]
    assert refusal_start["text"] == refusal["text"]
    assert answer["show_alert"] == "true" and "private" in answer["text"]
    assert reply["_plain"].startswith("hi [t=")
    assert [r["seed_text"] for r in api.requests] == ["hi"]


async def test_api_down_gets_a_friendly_reply_and_the_bot_keeps_working(make_config):
    async with FakeTelegram() as tg:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=closed_port_url())):
            tg.send_text(USER, "anyone there?")
            (down,) = await tg.wait_sent(1, USER)
            tg.send_text(USER, "/help")
            _, help_ = await tg.wait_sent(2, USER)
    assert down["text"] == API_DOWN
    assert "Repeat" in help_["text"]
    assert not tg.errors


async def test_api_busy_then_slow_is_retried_with_backoff(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi(fail_next=2) as api:
        config = make_config(telegram_api_server=tg.url, api_url=api.url, api_timeout_s=0.3, api_retries=2)
        async with running_bot(config):
            tg.send_text(USER, "busy")
            (busy,) = await tg.wait_sent(1, USER)
            api.slow_next, api.slow_s = 1, 1.0
            tg.send_text(USER, "slow")
            _, slow = await tg.wait_sent(2, USER)
    assert busy["_plain"] == "busy [t=0.7 n=64 p=1 #3]", "two 503s, then the third attempt answers"
    assert slow["_plain"].startswith("slow [t=0.7"), "the timed-out attempt is retried"
    assert [r["seed_text"] for r in api.requests] == ["busy"] * 3 + ["slow"] * 2


async def test_rejections_are_explained_not_retried(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi(api_key="right", max_seed_chars=10) as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url, api_key="right")):
            tg.send_text(USER, "short")
            tg.send_text(USER, "this prompt is far too long")
            ok, too_long = await tg.wait_sent(2, USER)
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url, api_key="wrong")):
            tg.send_text(USER, "short")
            (bad_key,) = (await tg.wait_sent(3, USER))[2:]
    assert ok["_plain"].startswith("short [t=")
    assert too_long["text"] == "The model cannot take this text: seed_text is longer than the model's context"
    assert "API key was refused" in bad_key["text"]
    assert len(api.requests) == 2, "4xx answers are final: no retries"


async def test_long_reply_is_split_at_the_telegram_limit(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi(reply=" <word> &" * 1000) as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            tg.send_text(USER, "Long one")
            await tg.wait_for(lambda: any(buttons(m) for m in tg.sent("sendMessage", USER)))
            parts = tg.sent("sendMessage", USER)
    assert len(parts) == 3
    assert "".join(p["_plain"] for p in parts) == "Long one" + api.reply
    assert [bool(buttons(p)) for p in parts] == [False, False, True]
    assert not tg.errors, "every part parses as Telegram HTML and fits 4,096 characters"


async def test_rate_limit_per_chat(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        config = make_config(telegram_api_server=tg.url, api_url=api.url, rate_limit=2, rate_window_s=600)
        async with running_bot(config):
            for i in range(3):
                tg.send_text(USER, f"p{i}")
                await tg.wait_sent(i + 1, USER)  # one at a time, so the order is known
            tg.send_text(OTHER, "other chat")
            (other,) = await tg.wait_sent(1, OTHER)
            limited = tg.sent("sendMessage", USER)[2]
    assert limited["text"].startswith("Too many requests: please wait")
    assert other["_plain"].startswith("other chat [t="), "the limit is per chat"
    assert len(api.requests) == 3


async def test_restart_keeps_settings_and_buttons(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        config = make_config(telegram_api_server=tg.url, api_url=api.url)
        async with running_bot(config):
            tg.send_text(USER, "/settings")
            (panel,) = await tg.wait_sent(1, USER)
            tg.press(USER, tg.message_of(panel), buttons(panel)["1.3"])
            tg.press(USER, tg.message_of(panel), buttons(panel)["128"])
            await tg.wait_for(lambda: len(tg.sent("answerCallbackQuery")) == 2)
            tg.send_text(USER, "before")
            _, before = await tg.wait_sent(2, USER)
        async with running_bot(config):  # a new process would see exactly this: the same SQLite file
            tg.send_text(USER, "after")
            after = (await tg.wait_sent(3, USER))[2]
            tg.press(USER, tg.message_of(before), buttons(before)["🔁 Repeat"])
            repeated = (await tg.wait_sent(4, USER))[3]
    assert before["_plain"] == "before [t=1.3 n=128 p=1 #1]"
    assert after["_plain"] == "after [t=1.3 n=128 p=1 #2]"
    assert repeated["_plain"] == "before [t=1.3 n=128 p=1 #3]"


async def test_keeps_polling_through_telegram_network_errors(make_config):
    # four failed getMe: more than the per-call retries, so the start-up wait has to carry it
    async with FakeTelegram(fail_next={"getMe": 4}) as tg, FakeLmfastApi() as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            await tg.wait_for(lambda: tg.sent("deleteWebhook"))  # started despite Telegram being away
            tg.fail_next.update({"getUpdates": 2, "sendMessage": 1})
            tg.send_text(USER, "still there?")
            (reply,) = await tg.wait_sent(1, USER)
            tg.flood_next["sendMessage"] = 1
            tg.send_text(USER, "/help")
            await tg.wait_sent(2, USER)
    assert tg.dropped == ["getMe"] * 4 + ["getUpdates", "getUpdates", "sendMessage", "sendMessage"]
    assert reply["_plain"].startswith("still there? [t=")
    assert len(tg.sent("sendMessage", USER)) == 2, "dropped and flood-limited sends were retried, not lost"


async def test_an_unexpected_failure_is_reported_to_the_user(make_config):
    async with FakeTelegram(reject_next={"sendMessage": 1}) as tg, FakeLmfastApi() as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            tg.send_text(USER, "doomed")
            (sorry,) = await tg.wait_sent(1, USER)
            tg.send_text(USER, "fine")
            _, fine = await tg.wait_sent(2, USER)
    assert tg.dropped == ["sendMessage"]
    assert sorry["text"] == "Sorry, something went wrong on my side. Please try again."
    assert fine["_plain"].startswith("fine [t=")


async def test_a_rejected_token_ends_the_cli_with_exit_2(make_config, capsys):
    async with FakeTelegram(token="999:the-real-one") as tg:
        argv = ["--token", "123:revoked", "--telegram_api_server", tg.url, "--db_path", make_config().db_path]
        # main() runs its own event loop, so it gets a thread; the peer keeps serving on this one
        assert await asyncio.to_thread(main, argv) == 2
    assert "--token: rejected by Telegram" in capsys.readouterr().err


async def test_webhook_mode(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        port = int(closed_port_url().rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}/telegram/hook"
        config = make_config(
            telegram_api_server=tg.url,
            api_url=api.url,
            webhook_url=url,
            webhook_listen=f"127.0.0.1:{port}",
            webhook_secret="s3cret",
        )
        async with running_bot(config):
            (hook,) = await tg.wait_for(lambda: tg.sent("setWebhook"))
            update = {
                "update_id": 1,
                "message": {
                    "message_id": 1,
                    "date": 0,
                    "chat": {"id": USER, "type": "private"},
                    "from": {"id": USER, "is_bot": False, "first_name": "u"},
                    "text": "via webhook",
                },
            }
            async with aiohttp.ClientSession() as http:
                wrong = await http.post(url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "nope"})
                right = await http.post(
                    url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
                )
            (reply,) = await tg.wait_sent(1, USER)
    assert hook["url"] == url and hook["secret_token"] == "s3cret"
    assert "message" in hook["allowed_updates"] and "callback_query" in hook["allowed_updates"]
    assert wrong.status == 401 and right.status == 200
    assert reply["_plain"].startswith("via webhook [t=")
    assert not tg.sent("deleteWebhook")


async def test_stopping_lets_a_reply_in_progress_finish(make_config):
    async with FakeTelegram() as tg, FakeLmfastApi(slow_next=1, slow_s=0.5) as api:
        async with running_bot(make_config(telegram_api_server=tg.url, api_url=api.url)):
            tg.send_text(USER, "last words")
            await tg.wait_for(lambda: api.requests)  # generating when the stop comes
        assert [m["_plain"] for m in tg.sent("sendMessage", USER)] == ["last words [t=0.7 n=64 p=1 #1]"]


# `lmfast bot ...` exactly as the console script runs it, reporting at exit what it had imported
_CLI = (
    "import atexit, sys\n"
    "heavy = ('torch', 'transformers', 'onnxruntime', 'lmfast.serving', 'lmfast.generation.generator')\n"
    "atexit.register(lambda: print('IMPORTED', [m for m in heavy if m in sys.modules], file=sys.stderr))\n"
    "from lmfast.__main__ import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


@pytest.mark.slow
async def test_the_lmfast_bot_command_serves_and_stops_on_sigterm(tmp_path):
    async with FakeTelegram() as tg, FakeLmfastApi() as api:
        env = {
            **os.environ,
            "TELEGRAM_BOT_TOKEN": TOKEN,
            "TELEGRAM_API_SERVER": tg.url,
            "LMFAST_API_URL": api.url,
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-c", _CLI, "bot", "--db_path", str(tmp_path / "cli.sqlite3"), "--polling_timeout", "2"),
            cwd=REPO_ROOT,
            env=env,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            tg.send_text(USER, "from the command line")
            (reply,) = await tg.wait_sent(1, USER, timeout=60)  # includes the interpreter starting
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), 30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    log = stderr.decode()
    assert reply["_plain"] == "from the command line [t=0.7 n=64 p=1 #1]"
    assert process.returncode == 0, log
    assert "IMPORTED []" in log, "the bot speaks HTTP only: no model stack in its process"
    assert TOKEN not in log, "the token must never be logged"
