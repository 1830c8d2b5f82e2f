"""`lmfast bot`: run the Telegram bot in front of an `lmfast serve` API.

    export TELEGRAM_BOT_TOKEN=...      # from @BotFather
    lmfast bot --api_url http://127.0.0.1:8000 [--allowed_users 123,456]

Flags are built from `BotConfig`'s fields; a flag wins over its environment variable.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from lmfast.bot.config import (
    ALLOWED_USERS_ENV,
    API_KEY_ENV,
    API_URL_ENV,
    TELEGRAM_API_SERVER_ENV,
    TOKEN_ENV,
    BotConfig,
    parse_user_ids,
)

# field -> environment variable used when the flag is absent
ENV_FALLBACKS = {
    "token": TOKEN_ENV,
    "api_url": API_URL_ENV,
    "api_key": API_KEY_ENV,
    "telegram_api_server": TELEGRAM_API_SERVER_ENV,
    "allowed_users": ALLOWED_USERS_ENV,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmfast bot",
        description="Run the Telegram bot in front of an `lmfast serve` HTTP API.",
    )
    for f in dataclasses.fields(BotConfig):
        annotation = str(f.type)
        kind: Any = str
        if annotation.startswith("int"):
            kind = int
        elif annotation.startswith("float"):
            kind = float
        parser.add_argument(
            f"--{f.name}",
            type=kind,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata.get('help', '')}{_shown_env(f.name)} [default: {_shown_default(f)}]",
        )
    return parser


def _shown_env(name: str) -> str:
    return f" [env: {ENV_FALLBACKS[name]}]" if name in ENV_FALLBACKS else ""


def _shown_default(f: dataclasses.Field) -> str:
    if f.name == "token":
        return "none"
    return repr(f.default) if f.default is not dataclasses.MISSING else "none"


def parse_config(argv: list[str], environ: Mapping[str, str] | None = None) -> BotConfig:
    """Flags, then environment variables, then defaults.

    Raises:
        ValueError: a missing token or a bad value (the message names the flag).
        SystemExit: argparse's own errors (unknown flag, not a number) and --help.
    """
    environ = os.environ if environ is None else environ
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    for name, value in args.items():
        if value is None and name in ENV_FALLBACKS:
            value = environ.get(ENV_FALLBACKS[name]) or None
        if value is None:
            continue
        values[name] = parse_user_ids(value) if name == "allowed_users" else value
    return BotConfig(**values)


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run the bot until interrupted; 2 on bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = parse_config(argv)
    except ValueError as error:
        print(f"lmfast bot: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse printed usage or help already
        return int(exit_.code or 0)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import asyncio

    from aiogram.exceptions import TelegramUnauthorizedError

    from lmfast.bot.app import run

    logging.getLogger(__name__).info("starting with %s", config.to_dict())
    try:
        asyncio.run(run(config))
    except TelegramUnauthorizedError:
        print("lmfast bot: error: --token: rejected by Telegram (revoked or mistyped?)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
