"""SQLite storage: per-chat settings, the texts behind the Repeat/Continue buttons, and each chat's
conversation (its turns, mode and system prompt) for chat models.

A file rather than memory so that both survive a restart, and bounded (the oldest texts are pruned)
so that a busy bot cannot grow it without limit. Every call is a single short statement on a
local file, fast enough to run on the event loop thread; the connection belongs to that thread.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from lmfast.bot.settings import ChatSettings
from lmfast.flags import UserError

# a prompt or continuation is cut to this many characters before it is stored: a Telegram message
# is at most 4,096 characters, and the server bounds what it generates, so this only guards the file
MAX_STORED_CHARS = 64_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chat_settings (
    chat_id INTEGER PRIMARY KEY,
    temperature REAL NOT NULL,
    max_new_tokens INTEGER NOT NULL,
    top_p REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS texts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    continuation TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS texts_by_chat ON texts (chat_id);
CREATE TABLE IF NOT EXISTS turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id INTEGER NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS turns_by_chat ON turns (chat_id, id);
CREATE TABLE IF NOT EXISTS chat_modes (
    chat_id INTEGER PRIMARY KEY,
    mode TEXT NOT NULL DEFAULT 'auto',
    system_prompt TEXT
);
"""
MODES = ("auto", "chat", "continue")
"""auto: chat when the served model has a chat template, else continuation (the bot's first behaviour)."""
MAX_TURNS_PER_CHAT = 200
"""Turns kept per chat; a conversation longer than the context is trimmed when sent anyway."""
MAX_SYSTEM_PROMPT_CHARS = 2_000


@dataclass(frozen=True)
class Turn:
    """One message of a conversation, as sent to /v1/chat/completions."""

    id: int
    role: str
    content: str

    def message(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


@dataclass(frozen=True)
class StoredText:
    """A prompt and what the model wrote after it, as shown in one bot message."""

    id: int
    chat_id: int
    prompt: str
    continuation: str


class StorageError(UserError):
    """The `--db_path` file cannot be used (garbage, truncated, a directory...): one line, exit 2."""


class Storage:
    """The bot's SQLite file. Open once per process, close on shutdown."""

    def __init__(self, path: str | Path, max_texts: int = 10_000) -> None:
        if max_texts < 1:
            raise ValueError(f"max_texts must be >= 1, got {max_texts}")
        self.path = Path(path)
        self.max_texts = max_texts
        if self.path.is_dir():
            raise StorageError(f"--db_path: {self.path} is a directory (give the SQLite file's name)")
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: one statement each
            # a truncated file opens fine and fails at its first read: check it whole, now
            problem = self._db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if problem != "ok":
                raise sqlite3.DatabaseError(problem)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as error:
            raise StorageError(f"--db_path: {self.path}: not a usable SQLite database ({error})") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # settings -------------------------------------------------------------------------------------
    def get_settings(self, chat_id: int) -> ChatSettings:
        """The chat's settings, or the defaults when it never changed any (or stored ones became invalid)."""
        row = self._db.execute(
            "SELECT temperature, max_new_tokens, top_p FROM chat_settings WHERE chat_id = ?", (chat_id,)
        ).fetchone()
        if row is None:
            return ChatSettings()
        try:
            return ChatSettings(temperature=row[0], max_new_tokens=row[1], top_p=row[2])
        except ValueError:  # bounds tightened since it was stored
            return ChatSettings()

    def set_settings(self, chat_id: int, settings: ChatSettings) -> None:
        self._db.execute(
            "INSERT INTO chat_settings (chat_id, temperature, max_new_tokens, top_p, updated_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (chat_id) DO UPDATE SET temperature = excluded.temperature,"
            " max_new_tokens = excluded.max_new_tokens, top_p = excluded.top_p, updated_at = excluded.updated_at",
            (chat_id, settings.temperature, settings.max_new_tokens, settings.top_p, time.time()),
        )

    def reset_chat(self, chat_id: int) -> None:
        """Forget the chat: settings, mode and system prompt back to defaults, its texts (and so its
        buttons) and its conversation dropped."""
        self._db.execute("DELETE FROM chat_settings WHERE chat_id = ?", (chat_id,))
        self._db.execute("DELETE FROM texts WHERE chat_id = ?", (chat_id,))
        self._db.execute("DELETE FROM turns WHERE chat_id = ?", (chat_id,))
        self._db.execute("DELETE FROM chat_modes WHERE chat_id = ?", (chat_id,))

    # conversation -----------------------------------------------------------------------------------
    def add_turn(self, chat_id: int, role: str, content: str) -> int:
        """Append a turn; keeps the newest MAX_TURNS_PER_CHAT of the chat."""
        cursor = self._db.execute(
            "INSERT INTO turns (chat_id, role, content, created_at) VALUES (?, ?, ?, ?)",
            (chat_id, role, content[:MAX_STORED_CHARS], time.time()),
        )
        self._db.execute(
            "DELETE FROM turns WHERE chat_id = ? AND id NOT IN"
            " (SELECT id FROM turns WHERE chat_id = ? ORDER BY id DESC LIMIT ?)",
            (chat_id, chat_id, MAX_TURNS_PER_CHAT),
        )
        return int(cursor.lastrowid)

    def turns(self, chat_id: int) -> list[Turn]:
        """The chat's conversation, oldest first."""
        rows = self._db.execute(
            "SELECT id, role, content FROM turns WHERE chat_id = ? ORDER BY id", (chat_id,)
        ).fetchall()
        return [Turn(*row) for row in rows]

    def delete_turn(self, chat_id: int, turn_id: int) -> None:
        self._db.execute("DELETE FROM turns WHERE chat_id = ? AND id = ?", (chat_id, turn_id))

    def get_mode(self, chat_id: int) -> str:
        row = self._db.execute("SELECT mode FROM chat_modes WHERE chat_id = ?", (chat_id,)).fetchone()
        return row[0] if row is not None and row[0] in MODES else "auto"

    def set_mode(self, chat_id: int, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self._db.execute(
            "INSERT INTO chat_modes (chat_id, mode) VALUES (?, ?)"
            " ON CONFLICT (chat_id) DO UPDATE SET mode = excluded.mode",
            (chat_id, mode),
        )

    def get_system_prompt(self, chat_id: int) -> str | None:
        row = self._db.execute(
            "SELECT system_prompt FROM chat_modes WHERE chat_id = ?", (chat_id,)
        ).fetchone()
        return row[0] if row is not None else None

    def set_system_prompt(self, chat_id: int, prompt: str | None) -> None:
        """Set (or with None, clear) the chat's system prompt; the model's template default applies then."""
        if prompt is not None and len(prompt) > MAX_SYSTEM_PROMPT_CHARS:
            raise ValueError(f"a system prompt may have at most {MAX_SYSTEM_PROMPT_CHARS} characters")
        self._db.execute(
            "INSERT INTO chat_modes (chat_id, system_prompt) VALUES (?, ?)"
            " ON CONFLICT (chat_id) DO UPDATE SET system_prompt = excluded.system_prompt",
            (chat_id, prompt),
        )

    # texts ----------------------------------------------------------------------------------------
    def add_text(self, chat_id: int, prompt: str, continuation: str) -> int:
        """Store a shown text and return its id (the buttons' callback data); prunes the oldest."""
        cursor = self._db.execute(
            "INSERT INTO texts (chat_id, prompt, continuation, created_at) VALUES (?, ?, ?, ?)",
            (chat_id, prompt[:MAX_STORED_CHARS], continuation[:MAX_STORED_CHARS], time.time()),
        )
        text_id = int(cursor.lastrowid)
        # ids only grow (AUTOINCREMENT), so everything at or below this id is older than the newest max_texts
        self._db.execute("DELETE FROM texts WHERE id <= ?", (text_id - self.max_texts,))
        return text_id

    def get_text(self, text_id: int, chat_id: int) -> StoredText | None:
        """The text behind a button, or None when pruned, reset, or asked for by another chat."""
        row = self._db.execute(
            "SELECT id, chat_id, prompt, continuation FROM texts WHERE id = ? AND chat_id = ?",
            (text_id, chat_id),
        ).fetchone()
        return None if row is None else StoredText(*row)

    def count_texts(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM texts").fetchone()[0])
