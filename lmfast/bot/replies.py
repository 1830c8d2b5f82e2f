"""The bot's replies shared by every mode: the words for an unreachable or refusing API, sending,
editing in place, and continuation mode's answer (private chats and groups both give it)."""

from __future__ import annotations

import logging

from aiogram import Bot
from aiogram.exceptions import TelegramBadRequest
from aiogram.types import InlineKeyboardMarkup, Message
from aiogram.utils.chat_action import ChatActionSender

from lmfast.bot.client import ApiRejected, ApiUnavailable, LmfastClient
from lmfast.bot.formatting import escape, render_reply
from lmfast.bot.keyboards import text_keyboard
from lmfast.bot.settings import ChatSettings
from lmfast.bot.storage import Storage

logger = logging.getLogger(__name__)

API_DOWN = (
    "😔 The language model is not answering right now (it may be restarting or busy). "
    "I tried a few times; please send your text again in a minute."
)


async def answer_continuation(bot: Bot, db: Storage, api: LmfastClient, chat_id: int, prompt: str) -> None:
    """Continuation mode's reply: the prompt in bold, the continuation, the Repeat/Continue buttons."""
    continuation = await generate(bot, chat_id, api, prompt, db.get_settings(chat_id))
    if continuation is None:
        return
    text_id = db.add_text(chat_id, prompt, continuation)
    await send(bot, chat_id, render_reply(prompt, continuation), text_keyboard(text_id))


async def generate(
    bot: Bot, chat_id: int, api: LmfastClient, prompt: str, settings: ChatSettings
) -> str | None:
    """The continuation, or None after telling the chat why there is none."""
    try:
        async with ChatActionSender.typing(bot=bot, chat_id=chat_id):
            return await api.generate(prompt, settings.to_params())
    except ApiUnavailable as error:
        logger.warning("lmfast API unavailable: %s", error)
        await bot.send_message(chat_id, API_DOWN)
    except ApiRejected as error:
        logger.warning("lmfast API rejected a request: %s", error)
        await bot.send_message(chat_id, rejection(error))
    return None


def rejection(error: ApiRejected) -> str:
    if error.status in (401, 403):
        return "The bot cannot use its language model (the API key was refused). Please tell the bot's owner."
    if error.status == 422:
        return f"The model cannot take this text: {escape(error.message)}"
    return "The language model gave an unexpected answer. Please try again later."


def slow_down(wait_s: float) -> str:
    return f"Too many requests: please wait {max(round(wait_s), 1)} s and try again."


async def send(bot: Bot, chat_id: int, messages: list[str], keyboard: InlineKeyboardMarkup) -> None:
    """Send the messages in order; the buttons go under the last one."""
    for i, html_text in enumerate(messages):
        await bot.send_message(chat_id, html_text, reply_markup=keyboard if i == len(messages) - 1 else None)


async def edit(message: object, html_text: str, keyboard: InlineKeyboardMarkup | None = None) -> bool:
    """Edit a message in place; False when it cannot be edited (too old, deleted, inaccessible)."""
    if not isinstance(message, Message):
        return False
    try:
        await message.edit_text(html_text, reply_markup=keyboard)
    except TelegramBadRequest as error:
        if "not modified" in str(error):  # pressed the value that was already set
            return True
        logger.info("could not edit message %s: %s", message.message_id, error)
        return False
    return True
