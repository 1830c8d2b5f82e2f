"""`lmfast bot --console`: the bot tried in a terminal, with no Telegram account, token or network.

The bot's own parts (`app.open_bot`: the dispatcher with its middlewares and handlers, SQLite
storage, the lmfast API client) get each line typed on stdin as an update of one private chat, in
order, one handled before the next is read (as `feed_update`, the path aiogram's polling takes).
Their Bot API calls go to `ConsoleSession`, an in-process stand-in for Telegram in place of
aiogram's HTTP session: sendMessage / editMessageText print to stdout (an edit that extends a
streamed answer prints only the new text). Inline buttons are listed as `[N] label`; typing `[N]`
presses one. End of input (Ctrl-D) or Ctrl-C stops.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import json
import re
import sys
import threading
import time
from typing import Any, TextIO

from aiogram import Bot
from aiogram.client.session.base import BaseSession
from aiogram.methods import TelegramMethod

from lmfast.bot.config import BotConfig

CONSOLE_TOKEN = "1:console"  # the shape BotConfig and aiogram check; never sent anywhere
CONSOLE_USER_ID = 1
BOT_USER = {"id": 1000, "is_bot": True, "first_name": "lmfast", "username": "lmfast_console_bot"}
_BUTTON = re.compile(r"\[(\d+)\]")
_TAG = re.compile(r"<[^>]+>")


def plain(text: str) -> str:
    """What Telegram shows for a message in HTML parse mode: tags dropped, entities decoded."""
    return html.unescape(_TAG.sub("", text))


class ConsoleSession(BaseSession):
    """The Bot API methods the bot uses, answered in-process; what a user would see goes to `output`."""

    def __init__(self, output: TextIO, user_id: int = CONSOLE_USER_ID) -> None:
        super().__init__()
        self.output = output
        self.user = {"id": user_id, "is_bot": False, "first_name": "console"}
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._shown: dict[int, str] = {}  # message id -> the text printed for it so far
        self._messages: dict[int, dict[str, Any]] = {}
        self._buttons: list[tuple[int, str]] = []  # (message id, callback data) of the last keyboard

    # typed input -------------------------------------------------------------------------------------
    def update_for(self, line: str) -> dict[str, Any] | None:
        """The update for one typed line: a message, or `[N]` pressing button N of the last keyboard."""
        text = line.strip()
        if not text:
            return None
        pressed = _BUTTON.fullmatch(text)
        if pressed and self._buttons:
            index = int(pressed.group(1)) - 1
            if not 0 <= index < len(self._buttons):
                self._say(f"(no button [{index + 1}]: the last message has {len(self._buttons)})")
                return None
            message_id, data = self._buttons[index]
            return self._update(
                {
                    "callback_query": {
                        "id": str(next(self._update_ids)),
                        "from": self.user,
                        "message": self._messages[message_id],
                        "chat_instance": "console",
                        "data": data,
                    }
                }
            )
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": self.user["id"], "type": "private", "first_name": "console"},
            "from": self.user,
            "text": text,
        }
        return self._update({"message": message})

    def _update(self, update: dict[str, Any]) -> dict[str, Any]:
        return {"update_id": next(self._update_ids), **update}

    # the Bot API ---------------------------------------------------------------------------------------
    async def make_request(self, bot: Bot, method: TelegramMethod[Any], timeout: int | None = None) -> Any:
        name = method.__api_method__
        answer = getattr(self, f"_api_{name}", None)
        result: Any = True if answer is None else answer(method)
        if asyncio.iscoroutine(result):
            result = await result
        content = json.dumps({"ok": True, "result": result})
        return self.check_response(bot, method, 200, content).result

    def _api_getMe(self, method: Any) -> dict[str, Any]:
        return BOT_USER

    def _api_sendMessage(self, method: Any) -> dict[str, Any]:
        text = plain(method.text)
        message = {
            "message_id": next(self._message_ids),
            "date": int(time.time()),
            "chat": {"id": method.chat_id, "type": "private"},
            "from": BOT_USER,
            "text": text,
        }
        self._keep(message, method.reply_markup)
        self._say(f"bot> {text}")
        self._shown[message["message_id"]] = text
        self._show_buttons(message)
        return message

    def _api_editMessageText(self, method: Any) -> dict[str, Any]:
        message = self._messages[method.message_id]
        text = plain(method.text)
        before = self._shown.get(method.message_id, "")
        if text != before:
            self._say(f"...  {text[len(before) :]}" if text.startswith(before) else f"bot (edited)> {text}")
        message["text"] = text
        self._shown[method.message_id] = text
        self._keep(message, method.reply_markup)
        self._show_buttons(message)
        return message

    def _api_answerCallbackQuery(self, method: Any) -> bool:
        if method.text:
            self._say(f"({method.text})")
        return True

    # output ----------------------------------------------------------------------------------------------
    def _keep(self, message: dict[str, Any], markup: Any) -> None:
        message.pop("reply_markup", None)
        if markup is not None and hasattr(markup, "inline_keyboard"):
            message["reply_markup"] = json.loads(markup.model_dump_json(exclude_none=True))
        self._messages[message["message_id"]] = message

    def _show_buttons(self, message: dict[str, Any]) -> None:
        rows = message.get("reply_markup", {}).get("inline_keyboard", [])
        rows = [[b for b in row if "callback_data" in b] for row in rows]
        buttons = [b for row in rows for b in row]
        if not buttons:
            return
        self._buttons = [(message["message_id"], b["callback_data"]) for b in buttons]
        number = itertools.count(1)
        for row in filter(None, rows):  # one line per keyboard row, numbered through
            self._say("     " + "  ".join(f"[{next(number)}] {b['text']}" for b in row))

    def _say(self, text: str) -> None:
        self.output.write(text + "\n")
        self.output.flush()

    async def close(self) -> None:
        return None

    async def stream_content(self, *args: Any, **kwargs: Any) -> Any:  # files: nothing the bot sends
        raise NotImplementedError("the console bot sends no files")


def _read_lines(source: TextIO, lines: asyncio.Queue[str | None], loop: asyncio.AbstractEventLoop) -> None:
    """stdin, in a daemon thread (it may be blocked in a read when the bot stops)."""
    for line in source:
        loop.call_soon_threadsafe(lines.put_nowait, line)
    loop.call_soon_threadsafe(lines.put_nowait, None)  # end of input


async def run_console(config: BotConfig, source: TextIO = sys.stdin, output: TextIO = sys.stdout) -> None:
    """Chat with the bot on the terminal until end of input (Ctrl-C raises KeyboardInterrupt as usual)."""
    from aiogram.types import Update

    from lmfast.bot.app import open_bot

    user_id = config.allowed_users[0] if config.allowed_users else CONSOLE_USER_ID
    session = ConsoleSession(output, user_id)
    session._say(
        f"lmfast bot --console: you are user {user_id}, the bot answers with {config.api_url}; "
        "/help lists the commands, [N] presses a button, Ctrl-D or Ctrl-C ends."
    )
    lines: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    threading.Thread(target=_read_lines, args=(source, lines, loop), daemon=True).start()
    async with open_bot(config, session) as (bot, dispatcher, _):
        while (line := await lines.get()) is not None:
            update = session.update_for(line)
            if update is not None:
                await dispatcher.feed_update(bot, Update.model_validate(update, context={"bot": bot}))
