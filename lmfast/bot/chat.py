"""Conversation mode: the chat's history sent to `/v1/chat/completions`, the answer streamed in place.

When the served model has a chat template (or the chat chose `/mode chat`), each text message is a
user turn. The history lives in SQLite (it survives restarts); what is sent is fitted newest turn
first, counted by the server's `POST /tokenize` in bounded requests, until the conversation plus
the reply's `max_tokens` fill the model's context (`fit_conversation`). The answer is sent as a placeholder message that is edited as pieces
arrive (at most once per `edit_interval_s`, Telegram limits edits), then finally with the Repeat
button. Repeat replaces the last answer with a new one.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.filters import CommandObject
from aiogram.filters.callback_data import CallbackData
from aiogram.types import CallbackQuery, InlineKeyboardButton, InlineKeyboardMarkup, Message
from aiogram.utils.chat_action import ChatActionSender

from lmfast.bot import replies
from lmfast.bot.client import ApiRejected, ApiUnavailable, LmfastClient
from lmfast.bot.formatting import TELEGRAM_MESSAGE_LIMIT, escape, render_segments, utf16_len
from lmfast.bot.ratelimit import RateLimiter
from lmfast.bot.settings import ChatSettings
from lmfast.bot.storage import MODES, Storage, Turn

logger = logging.getLogger(__name__)

PLACEHOLDER = "…"
EMPTY_ANSWER = "(the model gave an empty answer)"
MODE_HELP = {
    "auto": "chat when the model has a chat template, else continue text",
    "chat": "a conversation: I remember what we said (until /reset)",
    "continue": "I continue each text you send, with no memory",
}


class ChatAction(CallbackData, prefix="c"):
    """Repeat: replace the answer `turn_id` (the chat's last) with a new one."""

    action: Literal["repeat"]
    turn_id: int


class ModeChoice(CallbackData, prefix="m"):
    mode: str


class TooLong(Exception):
    """The newest message alone leaves no room for an answer in the model's context."""


def answer_keyboard(turn_id: int) -> InlineKeyboardMarkup:
    button = InlineKeyboardButton(
        text="🔁 Repeat", callback_data=ChatAction(action="repeat", turn_id=turn_id).pack()
    )
    return InlineKeyboardMarkup(inline_keyboard=[[button]])


def mode_keyboard(current: str) -> InlineKeyboardMarkup:
    row = [
        InlineKeyboardButton(
            text=("✓ " if mode == current else "") + mode, callback_data=ModeChoice(mode=mode).pack()
        )
        for mode in MODES
    ]
    return InlineKeyboardMarkup(inline_keyboard=[row])


def mode_text(current: str) -> str:
    lines = ["<b>Mode of this chat</b>"]
    lines += [f"{'▶ ' if m == current else ''}<code>{m}</code>: {escape(MODE_HELP[m])}" for m in MODES]
    lines += ["", "Tap one, or type e.g. <code>/mode chat</code>."]
    return "\n".join(lines)


async def uses_chat(db: Storage, api: LmfastClient, chat_id: int) -> bool:
    """The chat's mode, with `auto` resolved by asking the server (ApiError propagates)."""
    mode = db.get_mode(chat_id)
    if mode == "auto":
        return await api.supports_chat()
    return mode == "chat"


# commands -------------------------------------------------------------------------------------------
async def on_mode(message: Message, command: CommandObject, db: Storage) -> None:
    chat_id = message.chat.id
    if command.args:
        mode = command.args.strip().lower()
        if mode not in MODES:
            await message.answer(f"Not changed: the mode is one of {', '.join(MODES)}.")
            return
        db.set_mode(chat_id, mode)
    current = db.get_mode(chat_id)
    await message.answer(mode_text(current), reply_markup=mode_keyboard(current))


async def on_mode_choice(query: CallbackQuery, callback_data: ModeChoice, db: Storage) -> None:
    if query.message is None or callback_data.mode not in MODES:
        await query.answer()
        return
    db.set_mode(query.message.chat.id, callback_data.mode)
    await query.answer(f"Mode: {callback_data.mode}")
    if isinstance(query.message, Message):
        try:
            await query.message.edit_text(
                mode_text(callback_data.mode), reply_markup=mode_keyboard(callback_data.mode)
            )
        except TelegramBadRequest as error:  # pressed the mode already set
            logger.debug("mode message not edited: %s", error)


async def on_system(message: Message, command: CommandObject, db: Storage) -> None:
    """`/system TEXT` sets this chat's system prompt, `/system -` clears it, `/system` shows it."""
    chat_id = message.chat.id
    if command.args:
        text = command.args.strip()
        try:
            db.set_system_prompt(chat_id, None if text == "-" else text)
        except ValueError as error:
            await message.answer(f"Not changed: {escape(str(error))}.")
            return
    current = db.get_system_prompt(chat_id)
    shown = f"<code>{escape(current)}</code>" if current else "none (the model's own default)"
    await message.answer(
        f"<b>System prompt</b>: {shown}\n\nSet it with <code>/system You are a pirate.</code>, "
        "clear it with <code>/system -</code>. It applies from the next message."
    )


# conversation ---------------------------------------------------------------------------------------
async def on_chat_message(
    message: Message, bot: Bot, db: Storage, api: LmfastClient, settings: ChatSettings, edit_interval_s: float
) -> None:
    """A user turn: answer it from the whole (trimmed) conversation, streamed into one message."""
    chat_id = message.chat.id
    user_text = message.text or ""
    turns = [*db.turns(chat_id), Turn(0, "user", user_text)]
    answer = await _answer(bot, chat_id, api, db, turns, settings, edit_interval_s, None)
    if answer is None:
        return
    text, sent = answer
    db.add_turn(chat_id, "user", user_text)
    turn_id = db.add_turn(chat_id, "assistant", text)
    await _finish(bot, chat_id, sent, text, answer_keyboard(turn_id))


async def on_chat_repeat(
    query: CallbackQuery,
    callback_data: ChatAction,
    bot: Bot,
    db: Storage,
    api: LmfastClient,
    limiter: RateLimiter,
    edit_interval_s: float,
) -> None:
    """Regenerate the last answer in place; older answers cannot be (the conversation moved on)."""
    if query.message is None:
        await query.answer("This button only works in a chat with the bot.", show_alert=True)
        return
    chat_id = query.message.chat.id
    turns = db.turns(chat_id)
    if not turns or turns[-1].id != callback_data.turn_id or turns[-1].role != "assistant":
        await query.answer("Only the last answer can be regenerated.", show_alert=True)
        return
    wait_s = limiter.acquire(chat_id)
    if wait_s:
        await query.answer(f"Too many requests: please wait {max(round(wait_s), 1)} s.", show_alert=True)
        return
    await query.answer("Generating…")
    target = query.message if isinstance(query.message, Message) else None
    answer = await _answer(
        bot, chat_id, api, db, turns[:-1], db.get_settings(chat_id), edit_interval_s, target
    )
    if answer is None:
        return
    text, sent = answer
    db.delete_turn(chat_id, turns[-1].id)
    turn_id = db.add_turn(chat_id, "assistant", text)
    await _finish(bot, chat_id, sent, text, answer_keyboard(turn_id))


async def fit_conversation(
    api: LmfastClient, system: str | None, turns: list[Turn], max_tokens: int
) -> tuple[list[dict[str, str]], int]:
    """The newest turns (from a user turn on) whose prompt plus `max_tokens` fit the context.

    Fitted newest first: the newest user turn alone, then twice as many turns back each time
    until a candidate does not fit (or the server refuses it with a 422, over its bounds), then a
    binary search between the last that fit and the first that did not. So each `/tokenize` call
    holds at most about twice what fits, never the whole history, and there are about
    2·log2(user turns) of them. When even the newest message alone leaves less room than
    `max_tokens`, the answer gets the room there is.

    Returns:
        (messages to send, max_tokens to ask for).

    Raises:
        TooLong: the newest message alone fills the context (or the server refuses it as too long).
    """
    head = [{"role": "system", "content": system}] if system else []
    starts = [i for i, turn in enumerate(turns) if turn.role == "user"]

    def messages(k: int) -> list[dict[str, str]]:  # the newest k user turns and what follows them
        return head + [turn.message() for turn in turns[starts[-k] :]]

    try:
        newest, context = await api.count_chat_tokens(messages(1))
    except ApiRejected as error:
        if error.status == 422:  # over the server's bounds (characters, tokens, context)
            raise TooLong(error.message) from None
        raise
    if newest >= context:
        raise TooLong(f"your message is {newest} tokens; the model's context is {context}")
    if newest + max_tokens > context:
        return messages(1), context - newest

    async def fits(k: int) -> bool:
        try:
            count, _ = await api.count_chat_tokens(messages(k))
        except ApiRejected as error:
            if error.status == 422:
                return False
            raise
        return count + max_tokens <= context

    good, bad = 1, len(starts) + 1  # fits(good); bad: the fewest turns known not to fit
    k = 2
    while k <= len(starts):
        if not await fits(k):
            bad = k
            break
        good, k = k, k * 2
    else:  # every doubling fit: maybe the whole history does
        if good < len(starts):
            if await fits(len(starts)):
                return messages(len(starts)), max_tokens
            bad = len(starts)
    while bad - good > 1:
        middle = (good + bad) // 2
        if await fits(middle):
            good = middle
        else:
            bad = middle
    return messages(good), max_tokens


async def _answer(
    bot: Bot,
    chat_id: int,
    api: LmfastClient,
    db: Storage,
    turns: list[Turn],
    settings: ChatSettings,
    edit_interval_s: float,
    target: Message | None,
) -> tuple[str, Message] | None:
    """Stream the answer to `turns` into `target` (or a new placeholder); None after telling why not."""
    params = settings.to_params()
    try:
        async with ChatActionSender.typing(bot=bot, chat_id=chat_id):
            messages, max_tokens = await fit_conversation(
                api, db.get_system_prompt(chat_id), turns, params.max_new_tokens
            )
            params = params.replace(max_new_tokens=max_tokens)
            if target is None:
                target = await bot.send_message(chat_id, PLACEHOLDER)
            else:
                await replies.edit(target, PLACEHOLDER)
            text, shown, last_edit = "", "", time.monotonic()
            async for piece in api.chat_stream(messages, params):
                text += piece
                now = time.monotonic()
                if now - last_edit >= edit_interval_s and text.strip() and text != shown:
                    if utf16_len(text) + 1 <= TELEGRAM_MESSAGE_LIMIT:  # beyond one message: wait for the end
                        await replies.edit(target, escape(text) + PLACEHOLDER)
                        shown, last_edit = text, now
    except TooLong as error:
        await bot.send_message(
            chat_id, f"The model cannot take this text: {escape(str(error))}. Please send a shorter one."
        )
    except ApiUnavailable as error:
        logger.warning("lmfast API unavailable: %s", error)
        await _report(bot, chat_id, target, replies.API_DOWN)
    except ApiRejected as error:
        logger.warning("lmfast API rejected a chat request: %s", error)
        await _report(bot, chat_id, target, replies.rejection(error))
    else:
        return text, target
    return None


async def _report(bot: Bot, chat_id: int, target: Message | None, text: str) -> None:
    if target is None or not await replies.edit(target, text):
        await bot.send_message(chat_id, text)


async def _finish(bot: Bot, chat_id: int, sent: Message, text: str, keyboard: InlineKeyboardMarkup) -> None:
    """The final answer: edited into the placeholder, the rest (past 4,096 characters) sent after it."""
    pages = render_segments([(text, None)]) if text.strip() else []
    if not pages:
        pages = render_segments([(EMPTY_ANSWER, "i")])
    if not await replies.edit(sent, pages[0], keyboard if len(pages) == 1 else None):
        await bot.send_message(chat_id, pages[0], reply_markup=keyboard if len(pages) == 1 else None)
    for i, page in enumerate(pages[1:], start=2):
        await bot.send_message(chat_id, page, reply_markup=keyboard if i == len(pages) else None)
