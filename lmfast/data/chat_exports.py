"""Chat exports -> conversations (`--documents_format telegram|whatsapp`), for the dialog path.

A Telegram Desktop JSON export (one chat's `result.json`, or the full-account export whose
`chats.list` holds many) or a WhatsApp "Export chat" text file becomes conversations in the
`{"role", "content"}` form that `dialogs.write_dialog_split` renders, masks and writes, so a chat
export is a dialog dataset and nothing downstream changes. An export is named by its file
(`result.json`, `WhatsApp Chat with NAME.txt` or the .zip a phone shares it as) or, for Telegram,
by the export's folder. The rules:

- the persona's messages (`--persona`, a name or a Telegram id) are the assistant turns, everyone
  else's the user turns; in group chats each user line starts with its speaker's name
  (`Name: text`), the form the bot uses in groups, so the model sees what it will be served;
- consecutive messages of one role are joined with newlines (one turn), so turns alternate;
- a silence of `--chat_gap_minutes` starts a new conversation;
- service messages (joins, pins, calls), deleted messages, empty and huge messages are dropped;
  stickers and media without a caption are dropped or, with `--chat_media mark`, kept as `[photo]`;
  forwarded messages are never the persona's (they become user lines of their author);
- a conversation in which the persona never speaks trains nothing and is dropped.

Every message read is counted once: kept, or dropped under one reason (`ChatStats`), which
description.json records. `--redact` replaces e-mail addresses, links and phone numbers with
placeholders before anything is tokenized.
"""

from __future__ import annotations

import json
import re
import typing
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Literal

from lmfast.data.dialogs import DialogsError

ChatFormat = Literal["telegram", "whatsapp"]
Media = Literal["drop", "mark"]
DateOrder = Literal["auto", "DMY", "MDY", "YMD"]
FORMATS: tuple[str, ...] = typing.get_args(ChatFormat)
MEDIA: tuple[str, ...] = typing.get_args(Media)
DATE_ORDERS: tuple[str, ...] = typing.get_args(DateOrder)
MAX_MESSAGE_CHARS = 8192  # longer messages (pasted logs, articles) are skipped as "huge"
# an export is parsed in memory, about 5.4x its size (608 MB of RSS for 113 MB): refuse what would not fit
MAX_EXPORT_BYTES = 1 << 30
_GROUP_TYPES = (
    "private_group",
    "private_supergroup",
    "public_supergroup",
    "public_channel",
    "private_channel",
)
# Telegram's media kinds, as the placeholder `--chat_media mark` writes
_TELEGRAM_MEDIA = {
    "sticker": "[sticker]",
    "animation": "[GIF]",
    "voice_message": "[voice message]",
    "video_message": "[video message]",
    "video_file": "[video]",
    "audio_file": "[audio]",
}

# attachments without a media_type, by the key that holds them (the first present wins)
_TELEGRAM_ATTACHMENTS = (
    ("photo", "[photo]"),
    ("file", "[file]"),
    ("poll", "[poll]"),
    ("location_information", "[location]"),
    ("contact_information", "[contact]"),
)


class ChatExportError(DialogsError):
    """An export that cannot be used; the message names the file and the problem."""


@dataclass(slots=True)
class Message:
    """One message of a chat, in time order: who sent it, when (seconds), and its text."""

    time: float
    speaker_id: str
    speaker: str
    text: str
    forwarded_from: str | None = None


@dataclass
class Chat:
    name: str
    group: bool
    messages: list[Message]


@dataclass
class ChatStats:
    """What became of every message read: kept, or dropped for one reason; and the conversations."""

    messages_read: int = 0
    messages_kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    conversations: int = 0
    conversations_without_persona: int = 0
    chats: int = 0

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] += n


@dataclass
class ChatExport:
    """A parsed export: its chats, the account owner (full Telegram exports) and how dates were read."""

    path: Path
    format: str
    chats: list[Chat]
    owner_id: str | None = None
    date_order: str | None = None
    stats: ChatStats = field(default_factory=ChatStats)


@dataclass(frozen=True)
class ChatOptions:
    persona: str = ""
    gap_minutes: float = 360.0
    media: str = "drop"
    date_order: str = "auto"
    redact: bool = False


# --- redaction --------------------------------------------------------------------------------

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}")
_LINK = re.compile(r"(?:https?://|www\.)\S+|\b[\w-]+(?:\.[\w-]+)*\.(?:com|org|net|io|ru|de|me|ly)/\S*", re.I)
# international (+ and 7-15 digits) or 9-15 digits: dates (at most 8 digits) are not phone numbers
_PHONE = re.compile(r"(?<![\w+])(?:\+\(?\d(?:[\s().-]{0,2}\d){6,14}|\(?\d(?:[\s().-]{0,2}\d){8,14})(?!\w)")


def redact(text: str) -> str:
    """E-mail addresses -> `[email]`, links -> `[link]`, phone numbers -> `[phone]` (`+` and 7-15
    digits, or 9-15 digits, so that dates stay)."""
    if "@" in text:
        text = _EMAIL.sub("[email]", text)
    text = _LINK.sub("[link]", text)
    return _PHONE.sub("[phone]", text)


# --- Telegram ---------------------------------------------------------------------------------


def _telegram_text(value: Any) -> str:
    """`text` is a string, or a list of strings and entities `{"type", "text"}`."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(
            p if isinstance(p, str) else str(p.get("text", "")) for p in value if isinstance(p, (str, dict))
        )
    return ""


def _telegram_messages(raw: list[Any], media: str, stats: ChatStats) -> list[Message]:
    """The chat's usable messages; every other one counted under its drop reason."""
    out: list[Message] = []
    for m in raw:
        stats.messages_read += 1
        if not isinstance(m, dict):
            stats.drop("not_a_message")
            continue
        kind = m.get("type")
        if kind == "service":
            stats.drop("service")
            continue
        if kind != "message":
            stats.drop("unknown_type")
            continue
        text = _telegram_text(m.get("text")).strip()
        label = _TELEGRAM_MEDIA.get(m.get("media_type", "")) or next(
            (mark for key, mark in _TELEGRAM_ATTACHMENTS if key in m), None
        )
        if not text:
            if label is None:
                stats.drop("empty")
                continue
            if media == "drop":
                stats.drop("sticker" if label == "[sticker]" else "media")
                continue
            text = label
        elif label is not None and media == "mark":
            text = f"{label} {text}"
        if len(text) > MAX_MESSAGE_CHARS:
            stats.drop("huge")
            continue
        try:
            when = float(m["date_unixtime"]) if "date_unixtime" in m else _iso_seconds(m["date"])
        except (KeyError, TypeError, ValueError):
            stats.drop("no_date")
            continue
        speaker_id = str(m.get("from_id") or m.get("actor_id") or "")
        speaker = m.get("from") or speaker_id or "unknown"
        forwarded = m.get("forwarded_from")
        out.append(Message(when, speaker_id, str(speaker), text, str(forwarded) if forwarded else None))
    return out


def _iso_seconds(value: str) -> float:
    """Older exports have only `date` (local time, no zone): read as UTC, only gaps matter."""
    return datetime.fromisoformat(value).replace(tzinfo=timezone.utc).timestamp()


def parse_telegram(path: Path, flag: str, media: str) -> ChatExport:
    """One chat's export (`name`, `type`, `messages`) or the full-account one (`chats.list`).

    Raises:
        ChatExportError: not JSON, or not a Telegram export.
    """
    try:
        with path.open("rb") as file:
            data = json.load(file)
    except UnicodeDecodeError as error:
        raise ChatExportError(
            f"{flag}: {path}: not UTF-8 ({error.reason}); not a Telegram JSON export"
        ) from None
    except json.JSONDecodeError as error:
        raise ChatExportError(
            f"{flag}: {path}: not a Telegram JSON export (invalid JSON: {error.msg} at line {error.lineno})"
        ) from None
    export = ChatExport(path, "telegram", [])
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        raw_chats = [data]
    elif (
        isinstance(data, dict)
        and isinstance(data.get("chats"), dict)
        and isinstance(data["chats"].get("list"), list)
    ):
        raw_chats = [c for c in data["chats"]["list"] if isinstance(c, dict)]
        for extra in ("left_chats",):
            if isinstance(data.get(extra), dict) and isinstance(data[extra].get("list"), list):
                raw_chats += [c for c in data[extra]["list"] if isinstance(c, dict)]
        me = data.get("personal_information")
        if isinstance(me, dict) and me.get("user_id") is not None:
            export.owner_id = f"user{me['user_id']}"
    else:
        raise ChatExportError(
            f'{flag}: {path}: not a Telegram export (expected a JSON object with "messages" or "chats": {{"list"}})'
        )
    for raw in raw_chats:
        messages = raw.get("messages")
        if not isinstance(messages, list):
            continue
        if raw.get("type") == "saved_messages":  # notes to oneself: no one is answered there
            export.stats.messages_read += len(messages)
            export.stats.drop("saved_messages", len(messages))
            continue
        group = raw.get("type") in _GROUP_TYPES
        chat = Chat(str(raw.get("name") or raw.get("id") or "chat"), group, [])
        chat.messages = _telegram_messages(messages, media, export.stats)
        export.chats.append(chat)
    export.stats.chats = len(export.chats)
    return export


# --- WhatsApp ---------------------------------------------------------------------------------

# Android `31/12/2023, 21:41 - Name: text`, `12/31/23, 9:41 PM - ...`, `31.12.23, 21:41 - ...`;
# iOS `[31/12/2023, 21:41:05] Name: text` (often with U+200E marks)
_WA_HEADER = re.compile(
    r"^[\u200e\u200f]?\[?(\d{1,4})([./-])(\d{1,2})\2(\d{2,4}),?\s+"
    r"(\d{1,2})[:.](\d{2})(?:[:.](\d{2}))?(?:[\s\u202f]?([AaPp])\.?\s?[Mm]\.?)?\]?(?:\s[-\u2013]\s|\s)",
    re.M,
)
_WA_MEDIA = re.compile(
    r"^(?:<Media omitted>|<Medien ausgeschlossen>|<Multimedia omitido>|<Médias omis>|"
    r"(?:image|video|audio|sticker|GIF|document|Contact card) omitted|<attached: [^>]*>)",
    re.I,
)
_WA_DELETED = ("This message was deleted", "You deleted this message", "Diese Nachricht wurde gelöscht")
_WA_MEDIA_LABEL = {
    "image": "[photo]",
    "video": "[video]",
    "audio": "[audio]",
    "sticker": "[sticker]",
    "gif": "[GIF]",
}


def _whatsapp_bytes(path: Path, flag: str) -> bytes:
    """The chat text: the file itself, or the one .txt inside the .zip that phones often share."""
    if not zipfile.is_zipfile(path):
        return path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        texts = [i for i in archive.infolist() if i.filename.lower().endswith(".txt") and not i.is_dir()]
        if len(texts) != 1:
            raise ChatExportError(
                f"{flag}: {path}: a WhatsApp export .zip holds one chat .txt, this one has {len(texts)}"
            )
        if texts[0].file_size > MAX_EXPORT_BYTES:
            raise ChatExportError(f"{flag}: {path}: {texts[0].filename} is over {MAX_EXPORT_BYTES >> 30} GiB")
        return archive.read(texts[0])


def export_file(path: Path) -> Path:
    """A Telegram export's folder names its `result.json`; any other path is itself."""
    return path / "result.json" if path.is_dir() and (path / "result.json").is_file() else path


def _date_order(
    headers: list[tuple[str, str, str]], requested: str, path: Path, flag: str
) -> tuple[str, str]:
    """(order, how it was chosen): the first field > 12 is a day (DMY), the second > 12 a day (MDY)."""
    if requested != "auto":
        return requested, "--whatsapp_date_order"
    if headers and all(len(a) == 4 for a, _, _ in headers[:100]):
        return "YMD", "detected: the year comes first"
    first = any(int(a) > 12 for a, _, _ in headers)
    second = any(int(b) > 12 for _, b, _ in headers)
    if first and second:
        raise ChatExportError(
            f"{flag}: {path}: dates are neither day-first nor month-first throughout; pass --whatsapp_date_order"
        )
    if first:
        return "DMY", "detected: a first field above 12"
    if second:
        return "MDY", "detected: a second field above 12"
    return "DMY", "ambiguous (no field above 12): assumed day-first; pass --whatsapp_date_order MDY if wrong"


def parse_whatsapp(
    path: Path, flag: str, media: str, requested_order: str, encoding_errors: str = "strict"
) -> ChatExport:
    """A WhatsApp "Export chat" text file: one header line per message, continuation lines after it.

    Raises:
        ChatExportError: not UTF-8, no message header at all, or dates in no consistent order.
    """
    try:
        text = _whatsapp_bytes(path, flag).decode("utf-8-sig", errors=encoding_errors)
    except UnicodeDecodeError as error:
        raise ChatExportError(
            f"{flag}: {path}: invalid UTF-8 at byte {error.start}; fix the file or pass --encoding_errors replace"
        ) from None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    headers = list(_WA_HEADER.finditer(text))
    if not headers:
        raise ChatExportError(
            f"{flag}: {path}: not a WhatsApp chat export (no line starts with a date and time, "
            "as in '31/12/2023, 21:41 - Name: text')"
        )
    if text[: headers[0].start()].strip():
        raise ChatExportError(
            f"{flag}: {path}: not a WhatsApp chat export (line 1 does not start with a date)"
        )
    fields = [(h.group(1), h.group(3), h.group(4)) for h in headers]
    order, how = _date_order(fields, requested_order, path, flag)
    export = ChatExport(path, "whatsapp", [], date_order=f"{order} ({how})")
    stats = export.stats
    days: dict[tuple[str, str, str], int] = {}
    messages: list[Message] = []
    speakers: set[str] = set()
    ends = [h.start() for h in headers[1:]] + [len(text)]
    for header, end, key in zip(headers, ends, fields, strict=True):
        stats.messages_read += 1
        day = days.get(key)
        if day is None:
            day = days[key] = _ordinal(key, order)
        if day < 0:
            stats.drop("bad_date")
            continue
        hour = int(header.group(5)) % 12 if header.group(8) else int(header.group(5))
        if header.group(8) in ("P", "p"):
            hour += 12
        when = day * 86400.0 + hour * 3600 + int(header.group(6)) * 60 + int(header.group(7) or 0)
        body = text[header.end() : end].rstrip("\n")
        speaker, sep, content = body.partition(": ")
        if not sep or "\n" in speaker or len(speaker) > 100:
            stats.drop("service")
            continue
        content = content.strip()
        mark = content.startswith(("\u200e", "\u200f"))
        content = content.lstrip("\u200e\u200f")
        if _WA_MEDIA.match(content):
            if media == "drop":
                stats.drop("sticker" if content.lower().startswith("sticker") else "media")
                continue
            lowered = content.lower()
            content = next((v for k, v in _WA_MEDIA_LABEL.items() if k in lowered), "[file]")
        elif content.startswith(_WA_DELETED):
            stats.drop("deleted")
            continue
        elif mark:  # iOS marks system notices (encryption, group changes) with U+200E
            stats.drop("service")
            continue
        if not content:
            stats.drop("empty")
            continue
        if len(content) > MAX_MESSAGE_CHARS:
            stats.drop("huge")
            continue
        speaker = speaker.strip("\u200e\u200f ~\u202f")
        speakers.add(speaker)
        messages.append(Message(when, speaker, speaker, content))
    export.chats.append(Chat(path.stem, len(speakers) > 2, messages))
    stats.chats = 1
    return export


def _ordinal(key: tuple[str, str, str], order: str) -> int:
    """Days since 1970-01-01 of a date's three fields in `order`; -1 when they are no date."""
    a, b, c = (int(x) for x in key)
    y, m, d = {"DMY": (c, b, a), "MDY": (c, a, b), "YMD": (a, b, c)}[order]
    if y < 100:
        y += 2000
    try:
        return date(y, m, d).toordinal() - 719163
    except ValueError:
        return -1


# --- conversations ----------------------------------------------------------------------------


def load_export(
    path: Path, flag: str, fmt: str, options: ChatOptions, encoding_errors: str = "strict"
) -> ChatExport:
    """Parse one export file of `fmt` ("telegram" or "whatsapp")."""
    size = path.stat().st_size
    if size > MAX_EXPORT_BYTES:
        raise ChatExportError(
            f"{flag}: {path}: {size} bytes is over the {MAX_EXPORT_BYTES >> 30} GiB an export may have "
            "(it is parsed in memory); export fewer chats at a time"
        )
    if fmt == "telegram":
        return parse_telegram(path, flag, options.media)
    return parse_whatsapp(path, flag, options.media, options.date_order, encoding_errors)


def resolve_persona(export: ChatExport, persona: str) -> tuple[str, str]:
    """(speaker id, name) of the persona: by id (`user123` or `123`) or name (case-insensitive).

    Raises:
        ChatExportError: no persona given and none implied, or the persona never speaks.
    """
    flag = "--persona"
    counts: Counter = Counter()
    names: dict[str, str] = {}
    for chat in export.chats:
        for m in chat.messages:
            if m.forwarded_from is None:
                counts[m.speaker_id] += 1
                names.setdefault(m.speaker_id, m.speaker)
    wanted = persona.strip()
    if not wanted:
        if export.owner_id is not None and export.owner_id in counts:
            return export.owner_id, names[export.owner_id]
        raise ChatExportError(
            f"{flag}: is required for {export.path} (whose messages are the bot's?); {_speakers(counts, names)}"
        )
    for candidate in (wanted, f"user{wanted}"):
        if candidate in counts:
            return candidate, names[candidate]
    matches = [sid for sid, name in names.items() if name.casefold() == wanted.casefold()]
    if len(matches) > 1:
        raise ChatExportError(
            f"{flag}: {wanted!r} names {len(matches)} speakers in {export.path} ({', '.join(matches)}); pass the id"
        )
    if matches:
        return matches[0], names[matches[0]]
    raise ChatExportError(f"{flag}: {wanted!r} never speaks in {export.path}; {_speakers(counts, names)}")


def _speakers(counts: Counter, names: dict[str, str]) -> str:
    top = ", ".join(f"{names[sid]} ({sid}, {n} messages)" if names[sid] != sid else f"{sid} ({n} messages)"
                    for sid, n in counts.most_common(5))  # fmt: skip
    return f"speakers: {top}" if top else "it has no usable message"


def iter_chat_conversations(
    export: ChatExport, persona_id: str, options: ChatOptions
) -> Iterator[list[dict[str, str]]]:
    """Conversations of every chat, in order; updates `export.stats` (kept / dropped counts)."""
    stats = export.stats
    gap = options.gap_minutes * 60 if options.gap_minutes > 0 else float("inf")
    for chat in export.chats:
        messages = sorted(chat.messages, key=lambda m: m.time)  # stable: ties keep the export's order
        start = 0
        for k in range(1, len(messages) + 1):
            if k == len(messages) or messages[k].time - messages[k - 1].time >= gap:
                conversation = _conversation(messages[start:k], persona_id, chat.group, options.redact)
                if conversation is None:
                    stats.conversations_without_persona += 1
                    stats.drop("in_conversation_without_persona", k - start)
                else:
                    stats.conversations += 1
                    stats.messages_kept += k - start
                    yield conversation
                start = k


def _conversation(
    messages: list[Message], persona_id: str, group: bool, redacting: bool
) -> list[dict[str, str]] | None:
    """Turns of one conversation (consecutive lines of a role joined); None without a persona turn."""
    turns: list[dict[str, str]] = []
    lines: list[str] = []
    role = ""
    for m in messages:
        mine = m.speaker_id == persona_id and m.forwarded_from is None
        this = "assistant" if mine else "user"
        text = redact(m.text) if redacting else m.text
        if not mine and (group or m.forwarded_from is not None):
            text = f"{m.forwarded_from or m.speaker}: {text}"
        if this != role and lines:
            turns.append({"role": role, "content": "\n".join(lines)})
            lines = []
        role = this
        lines.append(text)
    if lines:
        turns.append({"role": role, "content": "\n".join(lines)})
    if not any(t["role"] == "assistant" for t in turns):
        return None
    return turns


def description_keys(exports: dict[str, ChatExport], persona: tuple[str, str]) -> dict[str, Any]:
    """What description.json records about a chat-export dataset: the persona and every count."""
    keys: dict[str, Any] = {"persona_id": persona[0], "persona_name": persona[1]}
    for name, export in exports.items():
        s = export.stats
        keys[f"chat_{name}_chats"] = s.chats
        keys[f"chat_{name}_messages_read"] = s.messages_read
        keys[f"chat_{name}_messages_kept"] = s.messages_kept
        keys[f"chat_{name}_messages_dropped"] = dict(sorted(s.dropped.items()))
        keys[f"chat_{name}_conversations"] = s.conversations
        if export.date_order is not None:
            keys[f"chat_{name}_date_order"] = export.date_order
    return keys


@dataclass
class ChatSplits:
    """Both splits' conversations of a chat-export run, the exports they came from and the persona."""

    conversations: dict[str, list[list[dict[str, str]]]]
    exports: dict[str, ChatExport]
    persona: tuple[str, str]

    def description(self) -> dict[str, Any]:
        return description_keys(self.exports, self.persona)


def read_splits(
    fmt: str,
    train: Path,
    valid: Path | None,
    valid_fraction: float,
    options: ChatOptions,
    encoding_errors: str,
) -> ChatSplits:
    """Parse the export(s), choose the persona, build the conversations of both splits.

    `--valid_fraction` holds out conversations by `inputs.valid_documents` (splitmix64 of their
    index), the rule text datasets use for documents.

    Raises:
        ChatExportError: a bad export, an unknown persona, or no conversation in which the persona speaks.
    """
    import numpy as np

    from lmfast.data.inputs import valid_documents

    files = {"train": train} if valid is None else {"train": train, "valid": valid}
    exports = {name: load_export(path, f"--documents_{name}_file", fmt, options, encoding_errors)
               for name, path in files.items()}  # fmt: skip
    persona = resolve_persona(exports["train"], options.persona)
    conversations = {}
    for name, export in exports.items():
        conversations[name] = list(iter_chat_conversations(export, persona[0], options))
        if not conversations[name]:
            s = export.stats
            raise ChatExportError(
                f"--documents_{name}_file: {export.path} has no usable conversation: {persona[1]} never speaks in "
                f"one ({s.messages_read} messages read, {s.messages_kept} kept, dropped {dict(s.dropped)})"
            )
    if valid is None:
        everything = conversations["train"]
        held = valid_documents(0, np.arange(len(everything)), valid_fraction)
        conversations = {
            "train": [c for c, v in zip(everything, held, strict=True) if not v],
            "valid": [c for c, v in zip(everything, held, strict=True) if v],
        }
        for name, chosen in conversations.items():
            if not chosen:
                raise ChatExportError(
                    f"--valid_fraction: {valid_fraction} of {len(everything)} conversations of {train} leaves "
                    f"the {name} split empty; choose another fraction or pass --documents_valid_file"
                )
    return ChatSplits(conversations, exports, persona)
