"""The bot's conversation: commands, prompts, and the Repeat/Continue/settings buttons.

Handlers get what they use as arguments, injected by aiogram from the dispatcher's data:
`db` (Storage), `api` (LmfastClient), `limiter` (RateLimiter) and `edit_interval_s`. A text goes to
chat mode (lmfast/bot/chat.py: history, /v1/chat/completions) or continuation mode (here), by the
chat's `/mode`; `auto` picks chat when the served model has a chat template.
"""

from __future__ import annotations

import logging

from aiogram import Bot, F, Router
from aiogram.filters import Command, CommandObject, CommandStart
from aiogram.types import CallbackQuery, ErrorEvent, Message

from lmfast.bot import chat, groups, replies
from lmfast.bot.client import ApiRejected, ApiUnavailable, LmfastClient
from lmfast.bot.formatting import escape, render_reply, render_segments
from lmfast.bot.keyboards import SetValue, TextAction, settings_keyboard, settings_text, text_keyboard
from lmfast.bot.ratelimit import RateLimiter
from lmfast.bot.settings import LABELS, SETTING_NAMES, ChatSettings, format_value
from lmfast.bot.storage import Storage

logger = logging.getLogger(__name__)

HELP = (
    "<b>I talk with you through a language model.</b>\n\n"
    "With a chat model, we have a conversation: I remember what we said, and <b>Repeat</b> under my "
    "last answer gives another one.\n"
    "With a plain language model, I reply with your text in bold followed by what the model writes "
    "next; <b>Repeat</b> draws a new continuation, <b>Continue</b> makes the model write on.\n\n"
    "/mode: chat, continue, or auto (chat when the model can)\n"
    "/system: the system prompt of our conversation\n"
    "/settings: temperature (0 = always the same, most likely words), maximum new tokens, top-p\n"
    "/reset: a new conversation, default settings, and forget the texts I keep for the buttons\n"
    "/help: this message"
)
# shown in Telegram's command menu (setMyCommands)
COMMANDS: dict[str, str] = {
    "start": "Introduction",
    "help": "How to use the bot",
    "settings": "Temperature, max tokens, top-p for this chat",
    "mode": "Chat, continue text, or auto",
    "system": "System prompt of the conversation",
    "reset": "New conversation; default settings",
}
SETTING_ALIASES = {
    "temp": "temperature",
    "max_tokens": "max_new_tokens",
    "tokens": "max_new_tokens",
    "topp": "top_p",
}


def build_router() -> Router:
    """A fresh router with every handler (a router can join only one dispatcher, so one per run)."""
    router = Router(name="lmfast.bot")
    router.message.register(on_start, CommandStart())
    router.message.register(on_help, Command("help"))
    router.message.register(on_settings, Command("settings"))
    router.message.register(on_reset, Command("reset"))
    router.message.register(chat.on_mode, Command("mode"))
    router.message.register(chat.on_system, Command("system"))
    router.message.register(on_unknown_command, F.text.startswith("/"))
    router.message.register(groups.on_group_text, groups.in_group, F.text)
    router.message.register(on_prompt, F.text)
    router.message.register(groups.on_group_other, groups.in_group)
    router.message.register(on_not_text)
    router.callback_query.register(on_text_action, TextAction.filter())
    router.callback_query.register(on_set_value, SetValue.filter())
    router.callback_query.register(chat.on_chat_repeat, chat.ChatAction.filter())
    router.callback_query.register(chat.on_mode_choice, chat.ModeChoice.filter())
    router.callback_query.register(on_stale_button)
    router.errors.register(on_error)
    return router


# commands -------------------------------------------------------------------------------------------
async def on_start(message: Message) -> None:
    name = escape(message.from_user.first_name) if message.from_user else "there"
    await message.answer(f"Hello, {name}!\n\n{HELP}")


async def on_help(message: Message) -> None:
    await message.answer(HELP)


async def on_settings(message: Message, command: CommandObject, db: Storage) -> None:
    """Show the settings with buttons, or set one directly: `/settings temperature 0.9`."""
    settings = db.get_settings(message.chat.id)
    if command.args:
        parts = command.args.split()
        if len(parts) != 2:
            await message.answer(
                "Usage: <code>/settings NAME VALUE</code>, e.g. <code>/settings top_p 0.9</code>"
            )
            return
        name = SETTING_ALIASES.get(parts[0].lower(), parts[0].lower())
        try:
            settings = settings.with_value(name, parts[1])
        except ValueError as error:
            await message.answer(f"Not changed: {escape(str(error))}.\nSettings: {', '.join(SETTING_NAMES)}")
            return
        db.set_settings(message.chat.id, settings)
    await message.answer(settings_text(settings), reply_markup=settings_keyboard(settings))


async def on_reset(message: Message, db: Storage) -> None:
    db.reset_chat(message.chat.id)
    defaults = ChatSettings()
    await message.answer(
        "Done: a new conversation starts, settings are back to the defaults, and the buttons of "
        "earlier replies no longer work.\n\n" + settings_text(defaults),
        reply_markup=settings_keyboard(defaults),
    )


async def on_unknown_command(message: Message) -> None:
    if message.chat.type != "private":  # in a group it is likely meant for another bot: stay quiet
        return
    await message.answer("I don't know that command.\n\n" + HELP)


async def on_not_text(message: Message) -> None:
    await message.answer("I can only continue text: please send me a text message.")


# generation -----------------------------------------------------------------------------------------
async def on_prompt(
    message: Message,
    bot: Bot,
    db: Storage,
    api: LmfastClient,
    limiter: RateLimiter,
    edit_interval_s: float = 1.0,
) -> None:
    """Any text: the next turn of the conversation (chat mode), or a continuation replied as prompt
    (bold) + continuation + buttons."""
    chat_id = message.chat.id
    wait_s = limiter.acquire(chat_id)
    if wait_s:
        await message.answer(replies.slow_down(wait_s))
        return
    try:
        use_chat = await chat.uses_chat(db, api, chat_id)
    except ApiUnavailable as error:
        logger.warning("lmfast API unavailable: %s", error)
        await message.answer(replies.API_DOWN)
        return
    except ApiRejected as error:
        await message.answer(replies.rejection(error))
        return
    if use_chat:
        await chat.on_chat_message(message, bot, db, api, db.get_settings(chat_id), edit_interval_s)
        return
    await replies.answer_continuation(bot, db, api, chat_id, message.text or "")


async def on_text_action(
    query: CallbackQuery,
    callback_data: TextAction,
    bot: Bot,
    db: Storage,
    api: LmfastClient,
    limiter: RateLimiter,
) -> None:
    """Repeat: a new sample for the stored prompt. Continue: the stored text, extended."""
    if query.message is None:  # a button on an inline-mode message: no chat to answer in
        await query.answer("This button only works in a chat with the bot.", show_alert=True)
        return
    chat_id = query.message.chat.id
    stored = db.get_text(callback_data.text_id, chat_id)
    if stored is None:
        await query.answer(
            "I no longer have this text (reset or too old). Please send it again.", show_alert=True
        )
        return
    wait_s = limiter.acquire(chat_id)
    if wait_s:
        await query.answer(replies.slow_down(wait_s), show_alert=True)
        return
    # answered at once: Telegram shows a spinner on the button until then
    await query.answer("Generating…")
    settings = db.get_settings(chat_id)
    if callback_data.action == "repeat":
        continuation = await replies.generate(bot, chat_id, api, stored.prompt, settings)
        if continuation is None:
            return
        text_id = db.add_text(chat_id, stored.prompt, continuation)
        await replies.send(bot, chat_id, render_reply(stored.prompt, continuation), text_keyboard(text_id))
        return

    addition = await replies.generate(bot, chat_id, api, stored.prompt + stored.continuation, settings)
    if addition is None:
        return
    if not addition.strip():
        await bot.send_message(chat_id, "<i>The model had nothing to add.</i>")
        return
    text_id = db.add_text(chat_id, stored.prompt, stored.continuation + addition)
    keyboard = text_keyboard(text_id)
    messages = render_reply(stored.prompt, stored.continuation + addition)
    if len(messages) == 1 and await replies.edit(query.message, messages[0], keyboard):
        return
    # the whole text no longer fits one message (or that one cannot be edited): send the new part
    await replies.send(bot, chat_id, render_segments([("…", None), (addition, None)]), keyboard)


async def on_set_value(query: CallbackQuery, callback_data: SetValue, db: Storage) -> None:
    if query.message is None:
        await query.answer()
        return
    chat_id = query.message.chat.id
    try:
        settings = db.get_settings(chat_id).with_value(callback_data.name, callback_data.value)
    except ValueError as error:
        await query.answer(f"Not changed: {error}", show_alert=True)
        return
    db.set_settings(chat_id, settings)
    value = getattr(settings, callback_data.name)
    await query.answer(f"{LABELS[callback_data.name]}: {format_value(callback_data.name, value)}")
    await replies.edit(query.message, settings_text(settings), settings_keyboard(settings))


async def on_stale_button(query: CallbackQuery) -> None:
    """Header buttons and buttons from older versions of the bot: acknowledge, change nothing."""
    await query.answer()


async def on_error(event: ErrorEvent, bot: Bot) -> None:
    """Last resort: log it and tell the user, so nobody waits for a reply that will never come."""
    logger.error("error while handling update %s", event.update.update_id, exc_info=event.exception)
    chat = event.update.message.chat if event.update.message else None
    if chat is None and event.update.callback_query and event.update.callback_query.message:
        chat = event.update.callback_query.message.chat
    if chat is not None:
        try:
            await bot.send_message(chat.id, "Sorry, something went wrong on my side. Please try again.")
        except Exception:  # the error may be Telegram itself being unreachable
            logger.exception("could not report the error to chat %s", chat.id)
