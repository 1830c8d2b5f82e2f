"""`BotConfig`: everything `lmfast bot` needs, one documented field per flag.

Imports nothing heavy (no aiogram, no torch), so `lmfast bot --help` answers instantly.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

from lmfast.field_rules import bounds, check_fields
from lmfast.flags import UserError

# environment variables read when the matching flag is not given
TOKEN_ENV = "TELEGRAM_BOT_TOKEN"
TELEGRAM_API_SERVER_ENV = "TELEGRAM_API_SERVER"
API_URL_ENV = "LMFAST_API_URL"
API_KEY_ENV = "LMFAST_API_KEY"
ALLOWED_USERS_ENV = "LMFAST_BOT_ALLOWED_USERS"

GroupTrigger = Literal["mention_or_reply", "mention", "reply", "always"]
GROUP_TRIGGERS: tuple[str, ...] = typing.get_args(GroupTrigger)  # lmfast.bot.groups.TRIGGERS
LogLevel = Literal["debug", "info", "warning", "error", "critical"]
# the format BotFather hands out; aiogram rejects anything else before any network call
_TOKEN_RE = re.compile(r"^\d+:[\w-]+$")


def _help(text: str, env: str | None = None, parse: Any = None) -> dict[str, Any]:
    """Field metadata for lmfast.flags: help text, the environment variable, a text converter."""
    return {"help": text, **({"env": env} if env else {}), **({"parse": parse} if parse else {})}


def parse_user_ids(raw: str) -> tuple[int, ...]:
    """Parse `--allowed_users 123,456` (spaces allowed, empty allows everyone)."""
    ids = []
    for part in raw.replace(" ", ",").split(","):
        if not part:
            continue
        if not part.lstrip("-").isdigit():
            raise ValueError(f"{part!r} is not a numeric Telegram user id")
        ids.append(int(part))
    return tuple(ids)


@dataclass
class BotConfig:
    """How to run the Telegram bot. Each field is a `--flag` of `lmfast bot`."""

    token: str = field(default="", metadata=_help("Bot token from @BotFather.", TOKEN_ENV))
    api_url: str = field(
        default="http://127.0.0.1:8000",
        metadata=_help("Base URL of the `lmfast serve` HTTP API.", API_URL_ENV),
    )
    api_key: str | None = field(
        default=None, metadata=_help("Bearer key of the lmfast API, if it has one.", API_KEY_ENV)
    )
    telegram_api_server: str | None = field(
        default=None,
        metadata=_help(
            "Base URL of a self-hosted Telegram Bot API server (unset: api.telegram.org).",
            TELEGRAM_API_SERVER_ENV,
        ),
    )
    allowed_users: tuple[int, ...] = field(
        default=(),
        metadata=_help(
            "Comma-separated Telegram user ids allowed to use the bot; empty allows everyone.",
            ALLOWED_USERS_ENV,
            parse=parse_user_ids,
        ),
    )
    allowed_groups: tuple[int, ...] = field(
        default=(),
        metadata=_help(
            "Comma-separated group chat ids the bot answers in (empty: any group); in a group it "
            "answers only --allowed_users, and refuses nobody aloud.",
            parse=parse_user_ids,
        ),
    )
    group_trigger: GroupTrigger = field(
        default="mention_or_reply",
        metadata=_help(
            "In groups, answer when: mention_or_reply, mention (@bot), reply (to the bot), or always."
        ),
    )
    group_rate_limit: int = field(
        default=20,
        metadata=_help("Most answers per group within --rate_window_s seconds (then silence).")
        | bounds(ge=1),
    )
    db_path: str = field(
        default="lmfast_bot.sqlite3",
        metadata=_help("SQLite file keeping per-chat settings, conversations and button data."),
    )
    max_stored_texts: int = field(
        default=10_000,
        metadata=_help("Most generated texts kept for the Repeat/Continue buttons; older ones are pruned.")
        | bounds(ge=1),
    )
    rate_limit: int = field(
        default=10,
        metadata=_help("Most generation requests per chat within --rate_window_s seconds.") | bounds(ge=1),
    )
    rate_window_s: float = field(
        default=60.0, metadata=_help("Length of the per-chat rate-limit window.") | bounds(gt=0)
    )
    api_timeout_s: float = field(
        default=60.0,
        metadata=_help("Seconds to wait for one answer of the lmfast API before retrying.") | bounds(gt=0),
    )
    api_retries: int = field(
        default=3,
        metadata=_help("Extra attempts when the lmfast API is down, busy or slow (0: none).") | bounds(ge=0),
    )
    api_backoff_s: float = field(
        default=1.0,
        metadata=_help("First retry delay; doubles on each further attempt (capped at 30 s).") | bounds(ge=0),
    )
    api_deadline_s: float = field(
        default=150.0,
        metadata=_help("Give up on a reply (and say so) after this many seconds, retries included.")
        | bounds(gt=0),
    )
    stream_edit_interval_s: float = field(
        default=1.0,
        metadata=_help("Chat mode: the answer's message is edited with new text at most this often.")
        | bounds(ge=0),
    )
    polling_timeout: int = field(
        default=30, metadata=_help("Long-polling wait of getUpdates, in seconds.") | bounds(ge=1)
    )
    start_attempts: int = field(
        default=10,
        metadata=_help(
            "Start-up calls to Telegram tried (pauses growing from 1 s to 30 s, about 2 minutes in all) "
            "before the bot gives up with an error; once started it polls through network errors."
        )
        | bounds(ge=1),
    )
    webhook_url: str | None = field(
        default=None,
        metadata=_help("Public HTTPS URL Telegram should POST updates to; unset means long polling."),
    )
    webhook_listen: str = field(
        default="0.0.0.0:8080", metadata=_help("host:port the webhook server binds (webhook mode only).")
    )
    webhook_secret: str | None = field(
        default=None,
        metadata=_help("Secret Telegram sends with each webhook call (default: a random one per run)."),
    )
    log_level: LogLevel = field(
        default="info",
        # any case (LOG_LEVEL=INFO): lowered as read, so the choices are checked after, by check_fields
        metadata=_help("Logging level (debug, info, warning, error, critical).", parse=str.lower),
    )

    def __post_init__(self) -> None:
        """Bounds and choices are the fields' metadata and types (`check_fields`); the token, URL
        and listen-address rules parse text, so they stay code."""
        if not self.token:
            raise UserError(f"--token: missing; pass --token or set {TOKEN_ENV}")
        if not _TOKEN_RE.match(self.token):
            raise UserError("--token: not a Telegram bot token (expected '<digits>:<letters>')")
        for name in ("api_url", "telegram_api_server", "webhook_url"):
            value = getattr(self, name)
            if value is not None and urlparse(value).scheme not in ("http", "https"):
                raise UserError(f"--{name}: expected an http(s) URL, got {value!r}")
        if self.api_key == "":
            self.api_key = None
        if self.telegram_api_server == "":
            self.telegram_api_server = None
        self.allowed_users = tuple(int(u) for u in self.allowed_users)
        self.allowed_groups = tuple(int(g) for g in self.allowed_groups)
        self.log_level = typing.cast(LogLevel, self.log_level.lower())  # any case, from Python too
        check_fields(self)
        self._listen()  # rejects a malformed --webhook_listen now, not at start-up

    @property
    def webhook_host(self) -> str:
        return self._listen()[0]

    @property
    def webhook_port(self) -> int:
        return self._listen()[1]

    def _listen(self) -> tuple[str, int]:
        host, sep, port = self.webhook_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UserError(f"--webhook_listen: expected host:port, got {self.webhook_listen!r}")
        return host, int(port)

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON-ready values with secrets masked (it ends up in logs)."""
        values = dataclasses.asdict(self)
        for secret in ("token", "api_key", "webhook_secret"):
            if values[secret]:
                values[secret] = "***"
        values["allowed_users"] = list(values["allowed_users"])
        values["allowed_groups"] = list(values["allowed_groups"])
        return values
