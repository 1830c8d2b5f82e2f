"""`lmfast bot`: run the Telegram bot in front of an `lmfast serve` API.

    export TELEGRAM_BOT_TOKEN=...      # from @BotFather
    lmfast bot --api_url http://127.0.0.1:8000 [--allowed_users 123,456]
    lmfast bot --console               # no Telegram: the same bot, typed in this terminal

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
    parser.add_argument(
        "--console",
        action="store_true",
        help="Try the bot without Telegram: chat with it in this terminal (no token needed). The same "
        "handlers, storage and lmfast API; type text or /commands, [N] presses button N, Ctrl-D or Ctrl-C ends.",
    )
    return parser


def parse_config(argv: list[str], environ: Mapping[str, str] | None = None) -> BotConfig:
    """Flags, then environment variables (an empty one counts as unset), then defaults.

    With `--console` the token is optional (the console's own stands in).

    Raises:
        UserError: a missing token or a bad value (the message names the flag); `FlagError` for
            argparse's own errors (unknown flag, not a number).
        SystemExit: --help.
    """
    environ = {name: value for name, value in (os.environ if environ is None else environ).items() if value}
    if "--console" in argv:  # exact: flags take no abbreviations
        from lmfast.bot.config import TOKEN_ENV
        from lmfast.bot.console import CONSOLE_TOKEN

        environ.setdefault(TOKEN_ENV, CONSOLE_TOKEN)
    config, _ = flags.parse_config(build_parser(), BotConfig, argv, environ=environ)
    return config


def main(argv: list[str] | None = None) -> int:
    """Parse flags and run the bot until interrupted; 2 on bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return flags.run("lmfast bot", lambda: parse_config(argv), lambda config: _run_bot(config, argv))


def _run_bot(config: BotConfig, argv: list[str]) -> int:
    console = "--console" in argv
    # the console is a chat: its log shows warnings unless a --log_level is asked for
    quiet = console and not any(arg.startswith("--log_level") for arg in argv)
    logging.basicConfig(
        level="WARNING" if quiet else config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    import asyncio

    from aiogram.exceptions import TelegramUnauthorizedError

    from lmfast.bot.app import TelegramUnreachable, run

    logging.getLogger(__name__).info("starting with %s", config.to_dict())
    try:
        if console:
            from lmfast.bot.console import run_console

            asyncio.run(run_console(config))
        else:
            asyncio.run(run(config))
    except TelegramUnauthorizedError:
        raise flags.UserError("--token", "rejected by Telegram (revoked or mistyped?)") from None
    except TelegramUnreachable as error:
        server = config.telegram_api_server or "api.telegram.org"
        print(
            f"lmfast bot: error: {server} not reachable: {error}; check the network and --telegram_api_server, "
            "or try the bot offline with lmfast bot --console",
            file=sys.stderr,
        )
        return 1
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C before the handlers, or a second one
        return 130
    return 0
