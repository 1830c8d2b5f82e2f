"""The bot in group chats: it answers when addressed, and remembers the group's conversation.

In a group (or supergroup) every text the bot receives becomes a line `Name: text` of the group's
one history, the form `lmfast prepare --documents_format telegram` gives group chats, so a model
trained on a group export sees what it was trained on. The lines since the bot last spoke are one
user turn; the bot's answers are assistant turns. It answers only when addressed
(`--group_trigger`: mentioned as @username, replied to, either, or always), at most
`--group_rate_limit` times per `--rate_window_s` per group, and over the limit it stays silent
rather than flood the group with refusals. (Telegram delivers a group's other messages only
when the bot's privacy mode is off in @BotFather; with it on, the history holds what addressed it.)
Private chats do not come here.
"""

from __future__ import annotations

import logging
import re

from aiogram import Bot, F
from aiogram.types import Message, User

from lmfast.bot import chat, replies
from lmfast.bot.client import ApiRejected, ApiUnavailable, LmfastClient
from lmfast.bot.config import GROUP_TRIGGERS
from lmfast.bot.ratelimit import RateLimiter
from lmfast.bot.storage import MAX_STORED_CHARS, Storage, Turn

logger = logging.getLogger(__name__)

GROUP_TYPES = frozenset({"group", "supergroup"})
TRIGGERS = GROUP_TRIGGERS
in_group = F.chat.type.in_(GROUP_TYPES)


def speaker_name(message: Message) -> str:
    """Who wrote it, as a chat export names them: the user's full name, or the channel posting."""
    if message.from_user is not None:
        return message.from_user.full_name
    if message.sender_chat is not None:
        return message.sender_chat.title or "anonymous"
    return "anonymous"


def addressed_text(message: Message, me: User, trigger: str) -> tuple[str, bool]:
    """The text without the bot's @mention, and whether it asks the bot to answer under `trigger`."""
    text = message.text or ""
    mention = f"@{me.username}" if me.username else None
    mentioned = False
    for entity in message.entities or ():
        part = entity.extract_from(text)
        if entity.type == "mention" and mention and part.casefold() == mention.casefold():
            mentioned = True
        elif entity.type == "text_mention" and entity.user is not None and entity.user.id == me.id:
            mentioned = True
    if mention and mentioned:  # "and you @bot?" -> "and you?"
        text = re.sub(rf"\s*{re.escape(mention)}\b", "", text, flags=re.IGNORECASE)
    replied = (
        message.reply_to_message is not None
        and message.reply_to_message.from_user is not None
        and message.reply_to_message.from_user.id == me.id
    )
    asked = {
        "mention_or_reply": mentioned or replied,
        "mention": mentioned,
        "reply": replied,
        "always": True,
    }[trigger]
    return text.strip(), asked


def remember(db: Storage, chat_id: int, line: str) -> None:
    """Add a line to the group's pending user turn (the lines since the bot last spoke)."""
    turns = db.turns(chat_id)
    if turns and turns[-1].role == "user":
        db.delete_turn(chat_id, turns[-1].id)
        line = _bounded(f"{turns[-1].content}\n{line}")
    db.add_turn(chat_id, "user", line)


def _bounded(text: str) -> str:
    """The newest lines of a pending turn that fit the storage bound (the oldest are dropped)."""
    if len(text) <= MAX_STORED_CHARS:
        return text
    tail = text[-MAX_STORED_CHARS:]
    return tail[tail.find("\n") + 1 :] if "\n" in tail else tail


async def on_group_text(
    message: Message,
    bot: Bot,
    db: Storage,
    api: LmfastClient,
    group_limiter: RateLimiter,
    group_trigger: str = "mention_or_reply",
    edit_interval_s: float = 1.0,
) -> None:
    """A text in a group: remembered as `Name: text`; answered from the group's history when addressed."""
    chat_id = message.chat.id
    text, asked = addressed_text(message, await bot.me(), group_trigger)
    if not text:  # a bare mention: nothing to answer or remember
        return
    line = f"{speaker_name(message)}: {text}"
    if not asked:
        remember(db, chat_id, line)
        return
    wait_s = group_limiter.acquire(chat_id)
    if wait_s:
        logger.info("group %s over --group_rate_limit: not answering (%.0f s to wait)", chat_id, wait_s)
        remember(db, chat_id, line)
        return
    try:
        use_chat = await chat.uses_chat(db, api, chat_id)
    except (ApiUnavailable, ApiRejected) as error:
        logger.warning("lmfast API unavailable for group %s: %s", chat_id, error)
        remember(db, chat_id, line)
        return
    if not use_chat:  # continuation mode keeps no history: continue the addressed text, as in private
        await replies.answer_continuation(bot, db, api, chat_id, text)
        return
    turns = db.turns(chat_id)
    pending = turns[-1] if turns and turns[-1].role == "user" else None
    history = turns[:-1] if pending is not None else turns
    user_text = _bounded(f"{pending.content}\n{line}") if pending is not None else line
    answer = await chat._answer(
        bot,
        chat_id,
        api,
        db,
        [*history, Turn(0, "user", user_text)],
        db.get_settings(chat_id),
        edit_interval_s,
        None,
    )
    if answer is None:
        remember(db, chat_id, line)
        return
    reply, sent = answer
    if pending is not None:
        db.delete_turn(chat_id, pending.id)
    db.add_turn(chat_id, "user", user_text)
    turn_id = db.add_turn(chat_id, "assistant", reply)
    await chat._finish(bot, chat_id, sent, reply, chat.answer_keyboard(turn_id))


async def on_group_other(message: Message) -> None:
    """Stickers, photos, joins in a group: not for the bot (in private it says it wants text)."""
