"""Chat exports written for the tests, in the shapes Telegram Desktop and WhatsApp write them.

`Said` is one message as a test states it; the writers turn a list of them into a Telegram
`result.json` (one chat, or the full-account export with several) or a WhatsApp "Export chat"
text in one of three locales.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC


@dataclass(frozen=True)
class Said:
    """One message: seconds after T0, speaker name and Telegram user id, text, and its kind."""

    at: int
    name: str
    user: int
    text: str = ""
    kind: str = "text"  # text, entities, service, sticker, photo, forwarded
    forwarded_from: str = ""


def telegram_message(k: int, said: Said) -> dict[str, Any]:
    when = T0 + said.at
    message: dict[str, Any] = {
        "id": k + 1,
        "type": "service" if said.kind == "service" else "message",
        "date": datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "date_unixtime": str(when),
    }
    if said.kind == "service":
        message.update(actor=said.name, actor_id=f"user{said.user}", action="invite_members", text="")
        return message
    message.update({"from": said.name, "from_id": f"user{said.user}"})
    if said.kind == "entities":  # text as a list of plain strings and entities
        words = said.text.split(" ", 1)
        message["text"] = [{"type": "bold", "text": words[0]}, " " + words[1] if len(words) > 1 else ""]
    else:
        message["text"] = said.text
    if said.kind == "sticker":
        message.update(file="stickers/sticker.webp", media_type="sticker", sticker_emoji="😀", text="")
    elif said.kind == "photo":
        message.update(photo="photos/photo_1.jpg", width=800, height=600)
    elif said.kind == "forwarded":
        message["forwarded_from"] = said.forwarded_from
    return message


def telegram_chat(name: str, kind: str, chat_id: int, messages: list[Said]) -> dict[str, Any]:
    return {
        "name": name,
        "type": kind,
        "id": chat_id,
        "messages": [telegram_message(k, m) for k, m in enumerate(messages)],
    }


def write_telegram_chat(path: Path, name: str, kind: str, messages: list[Said]) -> Path:
    """One chat's export: `{"name", "type", "id", "messages"}` (Telegram Desktop, JSON, one chat)."""
    path.write_text(
        json.dumps(telegram_chat(name, kind, 4242, messages), ensure_ascii=False, indent=1), "utf-8"
    )
    return path


def write_telegram_account(path: Path, owner: Said, chats: dict[str, tuple[str, list[Said]]]) -> Path:
    """The full-account export: `personal_information` and `chats.list` (name -> (type, messages))."""
    data = {
        "about": "Here is the data you requested.",
        "personal_information": {"user_id": owner.user, "first_name": owner.name, "last_name": ""},
        "chats": {
            "about": "This page lists all chats from this export.",
            "list": [
                telegram_chat(n, kind, 100 + k, msgs) for k, (n, (kind, msgs)) in enumerate(chats.items())
            ],
        },
    }
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), "utf-8")
    return path


# WhatsApp's "Export chat" header per locale: (date and time of a message, separator before the name)
WHATSAPP_LOCALES = {
    "en_US": lambda t: t.strftime("%-m/%-d/%y, %-I:%M %p") + " - ",  # Android, US English
    "de_DE": lambda t: t.strftime("%d.%m.%y, %H:%M") + " - ",  # Android, German
    "en_GB_ios": lambda t: "[" + t.strftime("%d/%m/%Y, %H:%M:%S") + "] ",  # iPhone, British English
}
WHATSAPP_ORDERS = {"en_US": "MDY", "de_DE": "DMY", "en_GB_ios": "DMY"}


def whatsapp_line(locale: str, said: Said) -> str:
    when = datetime.fromtimestamp(T0 + said.at, timezone.utc)
    header = WHATSAPP_LOCALES[locale](when)
    ios = locale.endswith("_ios")
    if said.kind == "service":
        return header + ("\u200e" if ios else "") + said.text
    text = said.text
    if said.kind in ("sticker", "photo"):
        what = "sticker" if said.kind == "sticker" else "image"
        text = f"\u200e{what} omitted" if ios else "<Media omitted>"
    return f"{header}{said.name}: {text}"


def write_whatsapp(path: Path, locale: str, messages: list[Said]) -> Path:
    """A WhatsApp chat export in `locale`, opening with the encryption notice as WhatsApp does."""
    notice = Said(
        messages[0].at if messages else 0, "", 0, "Messages and calls are end-to-end encrypted.", "service"
    )
    lines = [whatsapp_line(locale, m) for m in [notice, *messages]]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path
