"""`lmfast bot`: run the Telegram bot in front of an `lmfast serve` API.

    export TELEGRAM_BOT_TOKEN=...      # from @BotFather
    lmfast bot --api_url http://127.0.0.1:8000 [--allowed_users 123,456]

Flags are built from `BotConfig`'s fields by lmfast.flags; a flag wins over its environment
variable (each field's metadata names it).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping

from lmfast import flags
from lmfast.bot.config import BotConfig


def build_parser() -> flags.OneLineParser:
    """One flag per `BotConfig` field (lmfast.flags)."""
    parser = flags.OneLineParser(
        prog="lmfast bot", description="Run the Telegram bot in front of an `lmfast serve` HTTP API."
    )
    flags.add_config_flags(parser, BotConfig)
    return parser


def parse_config(argv: list[str], environ: Mapping[str, str] | None = None) -> BotConfig:
    """Flags, then environment variables (an empty one counts as unset), then defaults.

    Raises:
        ValueError: a missing token or a bad value (the message names the flag); `FlagError` for
            argparse's own errors (unknown flag, not a number).
        SystemExit: --help.
    """
    environ = os.environ if environ is None else environ
    config, _ = flags.parse_config(
        build_parser(), BotConfig, argv, environ={name: value for name, value in environ.items() if value}
    )
    return config


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run the bot until interrupted; 2 on bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        config = parse_config(argv)
    except ValueError as error:
        print(f"lmfast bot: error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return int(exit_.code or 0)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import asyncio

    from aiogram.exceptions import TelegramUnauthorizedError

    from lmfast.bot.app import run
    from lmfast.bot.storage import StorageError

    logging.getLogger(__name__).info("starting with %s", config.to_dict())
    try:
        asyncio.run(run(config))
    except StorageError as error:
        print(f"lmfast bot: error: {error}", file=sys.stderr)
        return 2
    except TelegramUnauthorizedError:
        print("lmfast bot: error: --token: rejected by Telegram (revoked or mistyped?)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0
